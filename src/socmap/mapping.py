"""Map stage: SOC maps of the region as Cloud-Optimized GeoTIFFs, streamed block by block.

The region's window on the reference grid is cut into blocks of `map.block_size`
pixels. Each block is read with a halo of `window_size // 2` pixels for every
band and every year that a map needs, filled by `socmap.patches.fill_missing`
(the function the sample stage fills its patches with, so that a map pixel and
the patch of a survey row at that pixel are the same numbers), and every pixel's
patch is cut from it in memory and run through the ensemble in batches. Memory
is bounded by the block, not by the region: a block's results go straight to a
tiled GeoTIFF on disk, which is copied into a COG (with overviews) at the end.
Under `accelerate launch` the blocks are dealt out by rank and the main process
gathers and writes them.

Per map year, `data/maps/soc_{year}.tif` holds four float32 bands: the ensemble
mean, the ensemble standard deviation (between the run checkpoints), and the
lower and upper bounds of the calibrated prediction interval
(`socmap.intervals.prediction_interval`). With two or more years,
`soc_change_{first}_{last}.tif` holds the mean over the ensemble of each
member's change (last minus first) and its standard deviation.

With the kriging fields of the evaluate stage (`evaluate.kriging` on), each member's
prediction is regression-kriged from its run's training residuals before the
ensemble figures are taken, exactly as the evaluate stage scores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil
import torch
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

import socmap
from socmap.config import Params, params_to_dict
from socmap.errors import SocmapError
from socmap.grid import NODATA, GridSpec
from socmap.intervals import prediction_interval
from socmap.io import atomic_path
from socmap.kriging import FIELDS, ResidualField, load_fields
from socmap.patches import fill_missing, window_counts
from socmap.predict import load_ensemble
from socmap.rasters import RasterCatalog
from socmap.region import Region

log = logging.getLogger(__name__)

UNIT = "g/kg"
COG_BLOCK = 256  # pixels per side of a COG tile (and of the overviews' smallest level)
GDAL_CACHE_MB = 64  # GDAL's block cache is a share of RAM by default; a fixed cap keeps memory flat
# The params that decide a map's values (with the checkpoints and the calibration). map.block_size,
# batch_size, num_processes and launch_args only decide how fast: the same map comes out.
VALUE_PARAMS = ("data.rasters", "data.bands", "data.static_bands", "data.first_year", "data.last_year",
                "data.region", "sample.window_size", "sample.time_before", "sample.fill",
                "sample.min_valid_fraction", "map.years")


@dataclass(frozen=True)
class Window:
    """A pixel window of the reference grid."""

    row_off: int
    col_off: int
    height: int
    width: int


# ------------------------------------------------------------------------------------------ geometry


def region_window(grid: GridSpec, region: Region) -> Window:
    """The smallest window of `grid` that holds the region's outline, clipped to the grid."""
    outline = region.outline(grid.crs)
    xs = np.concatenate([np.asarray(x, dtype=float) for x, _ in outline])
    ys = np.concatenate([np.asarray(y, dtype=float) for _, y in outline])
    rows, cols = grid.index(np.array([xs.min(), xs.max()]), np.array([ys.max(), ys.min()]))
    row0, row1 = max(int(rows.min()), 0), min(int(rows.max()) + 1, grid.height)
    col0, col1 = max(int(cols.min()), 0), min(int(cols.max()) + 1, grid.width)
    if row0 >= row1 or col0 >= col1:
        raise SocmapError("data.region lies outside the reference raster grid: nothing to map; "
                          "choose a bbox or boundary that overlaps data.rasters")
    return Window(row0, col0, row1 - row0, col1 - col0)


def split_blocks(window: Window, block_size: int) -> list[Window]:
    """Blocks of at most `block_size`² pixels covering `window`, row by row."""
    return [Window(window.row_off + r, window.col_off + c,
                   min(block_size, window.height - r), min(block_size, window.width - c))
            for r in range(0, window.height, block_size) for c in range(0, window.width, block_size)]


def block_patches(stack: np.ndarray, rows: np.ndarray, cols: np.ndarray, window_size: int) -> np.ndarray:
    """The patches centred on pixels (rows, cols) of a block read with a halo.

    Args:
        stack: [C, h + ws - 1, w + ws - 1, T], the block with its halo.
        rows, cols: pixel positions in the block without its halo.

    Returns:
        float32 [B, C, ws, ws, T], as the sample stage cuts them.
    """
    views = sliding_window_view(stack, (window_size, window_size), axis=(1, 2))  # [C, h, w, T, ws, ws]
    patches = views[:, rows, cols]  # [C, B, T, ws, ws], the only copy
    return patches.transpose(1, 0, 3, 4, 2)  # [B, C, ws, ws, T]


# ---------------------------------------------------------------------------------------- prediction


def ensemble_predict(ensemble: Sequence, patches: np.ndarray) -> np.ndarray:
    """Each member's prediction (g/kg) for a batch of raw patches: [B, C, ws, ws, T] -> float32 [M, B]."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(ensemble[0].device)  # moved once for all members
    with torch.inference_mode():
        return np.stack([member.predict_tensor(x).float().cpu().numpy() for member in ensemble])


def predict_block(stack: np.ndarray, valid: np.ndarray, inside: np.ndarray, ensemble: Sequence,
                  year_steps: dict[int, slice], min_valid_fraction: float,
                  batch_size: int) -> dict[int, np.ndarray]:
    """Every member's prediction for every pixel of one block and map year.

    Args:
        stack: filled [C, h + ws - 1, w + ws - 1, T_all], every year any map needs.
        valid: bool, same shape, False where `stack` was filled.
        inside: bool [h, w], pixels inside the region.
        year_steps: map year -> its time steps in `stack`.

    Returns:
        map year -> float32 [M, h, w], NaN where a pixel is outside the region or its window has less
        than `min_valid_fraction` valid values.
    """
    window_size = stack.shape[1] - inside.shape[0] + 1
    out = {}
    for year, steps in year_steps.items():
        year_stack = stack[..., steps]
        # valid values per pixel summed over bands and years, then over each pixel's window
        count = window_counts(valid[..., steps].sum(axis=(0, 3))[None], window_size)[0]  # [h, w]
        fraction = count / (stack.shape[0] * window_size**2 * year_stack.shape[-1])
        predicted = np.full((len(ensemble), *inside.shape), np.nan, dtype=np.float32)
        pixels = np.flatnonzero(inside & (fraction >= min_valid_fraction))
        for start in range(0, len(pixels), batch_size):
            rows, cols = np.divmod(pixels[start:start + batch_size], inside.shape[1])
            predicted[:, rows, cols] = ensemble_predict(ensemble, block_patches(year_stack, rows, cols,
                                                                                window_size))
        out[year] = predicted
    return out


def krige_members(members: dict[int, np.ndarray], fields: Sequence[ResidualField], x: np.ndarray,
                  y: np.ndarray) -> np.ndarray | None:
    """Apply each member's kriged residual to its predictions [M, h, w] of every year, in place.

    The residual field does not change with the year: it is kriged once per block, at the pixels
    (centres `x`, `y`, each [h, w]) that any year predicts. Returns the members' mean relative kriging
    variance [h, w] (for the intervals), None without fields.
    """
    if not fields:
        return None
    predicted_any = np.logical_or.reduce([np.isfinite(p).all(axis=0) for p in members.values()])
    xy = np.stack([x[predicted_any], y[predicted_any]], axis=1)
    variance = np.ones(x.shape)
    variance[predicted_any] = 0.0
    for member, field in enumerate(fields):
        kriged, member_variance = field.krige(xy)
        variance[predicted_any] += member_variance / len(fields)
        for predicted in members.values():
            predicted[member, predicted_any] = field.correct(predicted[member, predicted_any], kriged,
                                                             member_variance)
    return variance


def ensemble_stats(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 1, as the interval calibration uses; NaN for a single member)
    over the ensemble axis (0), in float64."""
    members = members.astype(np.float64)
    std = members.std(axis=0, ddof=1) if len(members) > 1 else np.full(members.shape[1:], np.nan)
    return members.mean(axis=0), std


def block_bands(members: dict[int, np.ndarray], calibration: dict, change: tuple[int, int] | None,
                kriging_variance: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The output bands of one block: output name -> float32 [bands, h, w], NODATA where unpredicted.

    `kriging_variance` [h, w]: the members' mean relative kriging variance (None: no kriging).
    """
    out = {}
    for year, predicted in members.items():
        bands = np.full((4, *predicted.shape[1:]), NODATA, dtype=np.float32)
        ok = np.isfinite(predicted).all(axis=0)
        if ok.any():
            mean, std = ensemble_stats(predicted[:, ok])
            kappa = None if kriging_variance is None else kriging_variance[ok]
            lower, upper = prediction_interval(mean, std, calibration, kappa=kappa)
            bands[:, ok] = np.stack([mean, std, lower, upper])
            bands[~np.isfinite(bands)] = NODATA  # the std of a single member
        out[f"soc_{year}"] = bands
    if change is not None:
        first, last = change
        difference = members[last] - members[first]
        bands = np.full((2, *difference.shape[1:]), NODATA, dtype=np.float32)
        ok = np.isfinite(difference).all(axis=0)
        if ok.any():
            bands[:, ok] = np.stack(ensemble_stats(difference[:, ok]))
            bands[~np.isfinite(bands)] = NODATA
        out[f"soc_change_{first}_{last}"] = bands
    return out


# ----------------------------------------------------------------------------------------- the run


def plan_years(years: Sequence[int], time_before: int) -> tuple[list[int], dict[int, slice]]:
    """Every year any map needs, chronological, and each map year's time steps among them."""
    needed = sorted({y for year in years for y in range(year - time_before + 1, year + 1)})
    return needed, {year: slice(needed.index(year - time_before + 1), needed.index(year) + 1)
                    for year in years}


def band_descriptions(years: Sequence[int], interval: float) -> dict[str, list[str]]:
    """Output name -> the description of each of its bands."""
    nominal = f"{interval:.0%}"
    out = {f"soc_{year}": ["SOC mean", "SOC ensemble std", f"SOC {nominal} interval lower",
                           f"SOC {nominal} interval upper"] for year in years}
    if len(years) >= 2:
        out[f"soc_change_{years[0]}_{years[-1]}"] = [f"SOC change {years[0]}-{years[-1]} mean",
                                                      f"SOC change {years[0]}-{years[-1]} ensemble std"]
    return out


def read_halo(catalog: RasterCatalog, years: Sequence[int], block: Window, halo: int) -> np.ndarray:
    """float32 [C, h + 2·halo, w + 2·halo, T] of a block and its halo, NaN beyond the grid."""
    return catalog.read_stack(years, block.row_off - halo, block.col_off - halo,
                              block.height + 2 * halo, block.width + 2 * halo)


def distributed() -> tuple[int, int, Callable[[object], list | None]]:
    """This process's rank, the number of processes, and a function gathering one object per process
    onto rank 0 (None on the other ranks)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1, lambda obj: [obj]
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def gather(obj: object) -> list | None:
        received = [None] * world if rank == 0 else None
        torch.distributed.gather_object(obj, received, dst=0)
        return received

    return rank, world, gather


def map_blocks(catalog: RasterCatalog, fill_values: Sequence[float], region: Region, ensemble: Sequence,
               calibration: dict, years: Sequence[int], time_before: int, window_size: int,
               min_valid_fraction: float, block_size: int, batch_size: int,
               fields: Sequence[ResidualField] = ()) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
    """Stream the map: yield (block, output name -> float32 [bands, h, w]) for every block.

    `fill_values` are those of the sample stage, per band in data.bands order; `fields` the kriging
    field of each member (none: no kriging).

    Under `torch.distributed` each process computes the blocks of its rank and the blocks come out
    on rank 0 only, a round of one block per process at a time.
    """
    needed, year_steps = plan_years(years, time_before)
    change = (years[0], years[-1]) if len(years) >= 2 else None
    halo = window_size // 2
    blocks = split_blocks(region_window(catalog.grid, region), block_size)
    rank, world, gather = distributed()
    rounds = math.ceil(len(blocks) / world)
    log.info("map %s: %d blocks of up to %d² pixels, %d on each of %d process(es)", ", ".join(map(str, years)),
             len(blocks), block_size, rounds, world)
    bar = tqdm(total=len(blocks), desc="map blocks", unit="block", disable=None if rank == 0 else True)
    for round_ in range(rounds):
        index = round_ * world + rank
        mine = blocks[index] if index < len(blocks) else None
        for item in gather(None if mine is None else (mine, map_block(
                catalog, mine, fill_values, region, ensemble, calibration, needed, year_steps, change, halo,
                min_valid_fraction, batch_size, fields))) or []:
            if item is not None:
                bar.update()
                yield item
        item = None  # the last block's bands go before the next block is read: memory stays one block's
    bar.close()


def map_block(catalog: RasterCatalog, block: Window, fill_values: Sequence[float], region: Region,
              ensemble: Sequence, calibration: dict, needed: list[int], year_steps: dict[int, slice],
              change: tuple[int, int] | None, halo: int, min_valid_fraction: float,
              batch_size: int, fields: Sequence[ResidualField] = ()) -> dict[str, np.ndarray]:
    """One block's output bands: read with its halo, fill, predict, krige, summarise."""
    filled, valid = fill_missing(read_halo(catalog, needed, block, halo), fill_values, inplace=True)
    inside = region.mask(catalog.grid, block.row_off, block.col_off, block.height, block.width)
    members = predict_block(filled, valid, inside, ensemble, year_steps, min_valid_fraction, batch_size)
    x, y = catalog.grid.centres(block.row_off, block.col_off, block.height, block.width)
    kriging_variance = krige_members(members, fields, x, y)
    return block_bands(members, calibration, change, kriging_variance)


# ------------------------------------------------------------------------------------------- writing


def write_maps(results: Iterator[tuple[Window, dict[str, np.ndarray]]], grid: GridSpec, window: Window,
               out_dir: str | Path, descriptions: dict[str, list[str]], tags: dict[str, str]) -> list[Path]:
    """Write streamed blocks into one COG per output name; return the paths.

    Blocks go to an uncompressed tiled GeoTIFF on disk as they come; once all are in, GDAL's COG
    driver copies it into the compressed, tiled COG with overviews.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=window.width, height=window.height, dtype="float32",
                   crs=grid.crs, transform=grid.window_transform(window.row_off, window.col_off),
                   nodata=NODATA, tiled=True, blockxsize=COG_BLOCK, blockysize=COG_BLOCK, BIGTIFF="IF_SAFER")
    paths = []
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), \
            tempfile.TemporaryDirectory(prefix=".map-blocks.", dir=out_dir) as scratch:
        with contextlib.ExitStack() as stack:
            datasets = {name: stack.enter_context(rasterio.open(Path(scratch) / f"{name}.tif", "w",
                                                                count=len(names), **profile))
                        for name, names in descriptions.items()}
            for block, outputs in results:
                where = rasterio.windows.Window(block.col_off - window.col_off, block.row_off - window.row_off,
                                                block.width, block.height)
                for name, values in outputs.items():
                    datasets[name].write(values, window=where)
                del outputs, values  # not held while the next block is computed
            for name, dataset in datasets.items():
                for band, description in enumerate(descriptions[name], start=1):
                    dataset.set_band_description(band, description)
                    dataset.set_band_unit(band, UNIT)
                dataset.update_tags(**tags, SOCMAP_OUTPUT=name)
        for name in descriptions:
            path = out_dir / f"{name}.tif"
            with atomic_path(path) as tmp:
                # AVERAGE overviews skip nodata; the std overviews are averages too (fine for a quick look)
                rasterio.shutil.copy(Path(scratch) / f"{name}.tif", tmp, driver="COG", COMPRESS="DEFLATE",
                                     PREDICTOR="YES", BLOCKSIZE=COG_BLOCK, OVERVIEW_RESAMPLING="AVERAGE",
                                     BIGTIFF="IF_SAFER")
            paths.append(path)
    return paths


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identity_tags(model_paths: Sequence[str | Path], params: Params, calibration: dict,
                  kriging_path: str | Path | None = None) -> dict[str, str]:
    """GeoTIFF tags that tell which checkpoints, params (those in VALUE_PARAMS), calibration and kriging
    fields made a map."""
    models = {Path(p).name: file_sha256(p) for p in model_paths}
    combined = hashlib.sha256("".join(models.values()).encode()).hexdigest()
    raw = params_to_dict(params)
    values = {}
    for key in VALUE_PARAMS:
        node = raw
        for part in key.split("."):
            node = node[part]
        values[key] = node
    text = json.dumps(values, sort_keys=True)
    return {
        "SOCMAP_VERSION": socmap.__version__,
        "SOCMAP_MODELS": ",".join(f"{name}:{digest[:12]}" for name, digest in models.items()),
        "SOCMAP_MODELS_SHA256": combined,
        "SOCMAP_PARAMS": text,
        "SOCMAP_PARAMS_SHA256": hashlib.sha256(text.encode()).hexdigest(),
        "SOCMAP_CALIBRATION": json.dumps(calibration, sort_keys=True),
        **({"SOCMAP_KRIGING_SHA256": file_sha256(kriging_path)} if kriging_path else {}),
    }


# ------------------------------------------------------------------------------------------ previews


def preview(path: str | Path, png: str | Path, outline: list, title: str, max_pixels: int = 900) -> None:
    """A PNG of a map's first two bands side by side (value and uncertainty), with colour bars in g/kg
    and the region outline; read at most `max_pixels` per side (the COG's overviews serve it)."""
    import matplotlib.pyplot as plt

    from socmap.plots import save_figure  # sets the Agg backend; matplotlib only when previews are drawn

    with rasterio.open(path) as src:
        step = max(1, math.ceil(max(src.width, src.height) / max_pixels))
        shape = (2, math.ceil(src.height / step), math.ceil(src.width / step))
        values = src.read([1, 2], out_shape=shape, masked=True)
        names = src.descriptions[:2]
        left, bottom, right, top = src.bounds
    change = "change" in (names[0] or "")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), constrained_layout=True)
    for i, ax in enumerate(axes):
        data = values[i]
        finite = data.compressed()
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        if change and i == 0:
            high = max(abs(low), abs(high), 1e-6)
            low, cmap = -high, "RdBu"
        else:
            cmap = "viridis" if i == 0 else "magma"
        image = ax.imshow(data, cmap=cmap, vmin=low, vmax=high, extent=(left, right, bottom, top),
                          interpolation="nearest")
        for xs, ys in outline:
            ax.plot(xs, ys, color="k", linewidth=0.8)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_aspect("equal")
        ax.set_title(names[i])
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.85, label=f"{names[i]} ({UNIT})")
    fig.suptitle(title)
    save_figure(fig, png)


# --------------------------------------------------------------------------------------------- stage


def make_maps(catalog: RasterCatalog, region: Region, ensemble: Sequence, calibration: dict, params: Params,
              out_dir: str | Path, tags: dict[str, str], fields: Sequence[ResidualField] = ()) -> list[Path]:
    """Map every year of `params.map.years` (and their change) into COGs under `out_dir`, each member
    kriged with its field in `fields` (none: no kriging).

    Returns the paths written (on rank 0; no files and an empty list on the other ranks).
    """
    check_ensemble(ensemble, params)
    if fields and len(fields) != len(ensemble):
        raise SocmapError(f"{FIELDS}: kriging fields of {len(fields)} run(s) for {len(ensemble)} checkpoints in "
                          f"models/; rerun `socmap evaluate`")
    cfg, years = params.map, sorted(params.map.years)
    fill_values = [catalog.fill_values[band] if params.sample.fill == "mean" else 0.0
                   for band in params.data.bands]  # as the sample stage fills its patches
    results = map_blocks(catalog, fill_values, region, ensemble, calibration, years,
                         params.sample.time_before, params.sample.window_size,
                         params.sample.min_valid_fraction, cfg.block_size, cfg.batch_size, fields)
    if distributed()[0] != 0:
        for _ in results:  # the other ranks only compute; rank 0 gathers and writes
            pass
        return []
    descriptions = band_descriptions(years, float(calibration["interval"]))
    window = region_window(catalog.grid, region)
    return write_maps(results, catalog.grid, window, out_dir, descriptions, tags)


def check_ensemble(ensemble: Sequence, params: Params) -> None:
    """The checkpoints must have been trained on the bands, window and years that params.yaml names."""
    for member in ensemble:
        expected = (list(params.data.bands), params.sample.window_size, params.sample.time_before)
        found = (list(member.bands), member.window_size, member.time_before)
        if found != expected:
            raise SocmapError(f"{member.source}: trained on bands {found[0]}, sample.window_size = {found[1]}, "
                              f"sample.time_before = {found[2]}, but params.yaml has {expected[0]}, "
                              f"{expected[1]}, {expected[2]}; rerun `socmap sample`, `split` and `train`")


def read_calibration(path: str | Path) -> dict:
    """The interval calibration the evaluate stage wrote."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SocmapError(f"{path}: interval calibration not found; run `socmap evaluate` first") from None
    except json.JSONDecodeError as exc:
        raise SocmapError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rerun `socmap evaluate`") from None


def main(params: Params) -> None:
    """`socmap map`: models/ + rasters -> data/maps/*.tif, previews in plots/map/."""
    from accelerate import PartialState

    from socmap.launch import relaunch

    cfg = params.map
    if relaunch("map", cfg.num_processes, cfg.launch_args, params):
        return
    state = PartialState()  # forms the process group when launched; a no-op in a single process
    ensemble = load_ensemble("models", device=state.device)
    calibration = read_calibration("data/evaluate/calibration.json")
    fields = load_fields(FIELDS)
    catalog = RasterCatalog.open(params.data)
    region = Region.from_config(params.data.region)
    model_paths = [member.source for member in ensemble]
    tags = identity_tags(model_paths, params, calibration, FIELDS)
    paths = make_maps(catalog, region, ensemble, calibration, params, "data/maps", tags, fields)
    if not state.is_main_process:
        return
    outline = region.outline(catalog.grid.crs)
    time_before = params.sample.time_before
    for path in paths:
        name = path.stem
        if name.startswith("soc_change_"):
            first, last = name.split("_")[2:]
            title = f"SOC change {first} to {last}, topsoil 0-20 cm ({len(ensemble)}-model ensemble)"
        else:
            year = int(name.split("_")[1])
            title = (f"SOC {year}, topsoil 0-20 cm (window {year - time_before + 1}-{year}, "
                     f"{len(ensemble)}-model ensemble)")
        preview(path, Path("plots/map") / f"{name}.png", outline, title)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
