"""The map, block by block: the plan of a map run, each block read with its halo, filled, cut into
patches and predicted.

The region's window on the reference grid is cut into blocks of `map.block_size` pixels. Each block
is read with a halo of `window_size // 2` pixels for every band and every year that a map needs,
filled by `socmap.patches.fill_missing` (the function the sample stage fills its patches with, so
that a map pixel and the patch of a survey row at that pixel are the same numbers), and every
pixel's patch is cut from it in memory and run through the ensemble in batches. Memory is bounded by
the block, not by the region. Under `torch.distributed` the blocks are dealt out by rank and the
main process gathers them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pyproj import CRS
from tqdm import tqdm

from socmap.config import Params
from socmap.ensemble import Ensemble
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.ground import to_working, working_crs
from socmap.launch import distributed
from socmap.patches import box_mean, fill_missing, fill_values, window_counts
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.zonal import SUMS, Polygons

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A pixel window of the reference grid."""

    row_off: int
    col_off: int
    height: int
    width: int


@dataclass(frozen=True)
class MapPlan:
    """What every block of a map run needs, decided once: the years and their time steps, the window
    and its blocks, the fill values, the thresholds and the CRS that kriging measures in."""

    years: tuple[int, ...]  # the map years, chronological
    needed: tuple[int, ...]  # every year any map needs, chronological
    year_steps: dict[int, slice]  # map year -> its time steps among `needed`
    window_size: int
    context: int  # sample.context: pixels per side of the context means, 0 for none
    window: Window  # the region's window on the grid
    blocks: tuple[Window, ...]
    fill_values: tuple[float, ...]  # per band of data.bands, as the sample stage fills its patches
    min_valid_fraction: float
    block_size: int  # pixels per side of a block, at most
    batch_size: int  # pixels per prediction batch
    working_crs: CRS  # the CRS of the kriging fields' positions, as the sample stage's x, y
    polygons: Polygons | None = None  # map.polygons on the grid: their means are summed up block by block

    @classmethod
    def build(cls, params: Params, catalog: RasterCatalog, region: Region) -> "MapPlan":
        """The plan of `params.map` over `region` on the catalog's grid."""
        years = sorted(params.map.years)
        needed, year_steps = plan_years(years, params.sample.time_before)
        window = region_window(catalog.grid, region)
        fills = fill_values(catalog, params.sample.fill)
        polygons = None if params.map.polygons is None else Polygons.read(params.map.polygons, catalog.grid)
        return cls(tuple(years), tuple(needed), year_steps, params.sample.window_size, params.sample.context, window,
                   tuple(split_blocks(window, params.map.block_size)), tuple(fills[b] for b in params.data.bands),
                   params.sample.min_valid_fraction, params.map.block_size, params.map.batch_size,
                   working_crs(catalog.grid.crs, region), polygons)

    @property
    def halo(self) -> int:
        """Pixels read around a block: the window's, and the context means' beyond it."""
        return self.window_size // 2 + self.context // 2

    @property
    def change(self) -> tuple[int, int] | None:
        """(first, last) map year of the change map, None for a single year."""
        return (self.years[0], self.years[-1]) if len(self.years) >= 2 else None


def plan_years(years: Sequence[int], time_before: int) -> tuple[list[int], dict[int, slice]]:
    """Every year any map needs, chronological, and each map year's time steps among them."""
    needed = sorted({y for year in years for y in range(year - time_before + 1, year + 1)})
    return needed, {year: slice(needed.index(year - time_before + 1), needed.index(year) + 1)
                    for year in years}


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


def read_halo(catalog: RasterCatalog, years: Sequence[int], block: Window, halo: int) -> np.ndarray:
    """float32 [C, h + 2·halo, w + 2·halo, T] of a block and its halo, NaN beyond the grid."""
    return catalog.read_stack(years, block.row_off - halo, block.col_off - halo,
                              block.height + 2 * halo, block.width + 2 * halo)


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


def predict_block(stack: np.ndarray, valid: np.ndarray, inside: np.ndarray, ensemble: Ensemble,
                  plan: MapPlan) -> dict[int, np.ndarray]:
    """Every member's prediction for every pixel of one block and map year.

    Args:
        stack: filled [C, h + ws - 1, w + ws - 1, T_all], every year any map needs (the bands, then
            their context means).
        valid: bool [bands, h + ws - 1, w + ws - 1, T_all], False where a band was filled.
        inside: bool [h, w], pixels inside the region.

    Returns:
        map year -> float32 [M, h, w], NaN where a pixel is outside the region or its window has less
        than `plan.min_valid_fraction` valid values.
    """
    window_size = plan.window_size
    out = {}
    for year, steps in plan.year_steps.items():
        year_stack = stack[..., steps]
        # valid values per pixel summed over bands and years, then over each pixel's window
        count = window_counts(valid[..., steps].sum(axis=(0, 3))[None], window_size)[0]  # [h, w]
        fraction = count / (valid.shape[0] * window_size**2 * year_stack.shape[-1])
        predicted = np.full((len(ensemble), *inside.shape), np.nan, dtype=np.float32)
        pixels = np.flatnonzero(inside & (fraction >= plan.min_valid_fraction))
        for start in range(0, len(pixels), plan.batch_size):
            rows, cols = np.divmod(pixels[start:start + plan.batch_size], inside.shape[1])
            predicted[:, rows, cols] = ensemble.predict(block_patches(year_stack, rows, cols, window_size))
        out[year] = predicted
    return out


def dissimilarity_block(stack: np.ndarray, predicted: dict[int, np.ndarray], ensemble: Ensemble,
                        plan: MapPlan) -> dict[int, np.ndarray]:
    """Each map year's dissimilarity index [h, w] of the pixels predicted, from the patches they were
    predicted from (`stack` as in `predict_block`); NaN elsewhere."""
    out = {}
    for year, steps in plan.year_steps.items():
        members = predicted[year]
        dissimilarity = np.full(members.shape[1:], np.nan)
        pixels = np.flatnonzero(np.isfinite(members).all(axis=0))
        for start in range(0, len(pixels), plan.batch_size):
            rows, cols = np.divmod(pixels[start:start + plan.batch_size], members.shape[2])
            dissimilarity[rows, cols] = ensemble.dissimilarity(block_patches(stack[..., steps], rows, cols,
                                                                             plan.window_size))
        out[year] = dissimilarity
    return out


def polygon_block_sums(plan: MapPlan, block: Window, ensemble: Ensemble, predicted: dict[int, np.ndarray],
                       places: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                       kriging_variance: np.ndarray | None,
                       dissimilarity: dict[int, np.ndarray] | None) -> dict:
    """Map year -> polygon -> the sums of one block's pixels (`Polygons.block_sums`); `places`: the pixel
    centres in the grid's CRS and in the working CRS."""
    rows, cols = np.mgrid[block.row_off:block.row_off + block.height, block.col_off:block.col_off + block.width]
    out = {}
    for year, members in predicted.items():
        inside_aoa = None if dissimilarity is None else dissimilarity[year] <= ensemble.applicability.threshold
        sigma = ensemble.shared_scale(members.mean(axis=0), kriging_variance)
        out[year] = plan.polygons.block_sums(rows, cols, *places, members, sigma, inside_aoa)
    return out


def map_block(catalog: RasterCatalog, region: Region, ensemble: Ensemble, plan: MapPlan,
              block: Window) -> dict[str, np.ndarray]:
    """One block's output bands: read with its halo, fill, predict, krige, summarise; with polygons their
    sums too (under `socmap.zonal.SUMS`)."""
    filled, valid = fill_missing(read_halo(catalog, plan.needed, block, plan.halo), plan.fill_values, inplace=True)
    filled, valid = with_context(filled, valid, plan)
    inside = region.mask(catalog.grid, block.row_off, block.col_off, block.height, block.width)
    predicted = predict_block(filled, valid, inside, ensemble, plan)
    dissimilarity = None if ensemble.applicability is None else dissimilarity_block(filled, predicted, ensemble, plan)
    centres = catalog.grid.centres(block.row_off, block.col_off, block.height, block.width)
    x, y = to_working(*centres, catalog.grid.crs, plan.working_crs)
    kriging_variance = ensemble.krige(predicted, x, y)
    out = ensemble.bands(predicted, plan.change, kriging_variance, dissimilarity)
    if plan.polygons is not None:
        out[SUMS] = polygon_block_sums(plan, block, ensemble, predicted, (centres, (x, y)),
                                      kriging_variance, dissimilarity)
    return out


def with_context(filled: np.ndarray, valid: np.ndarray, plan: MapPlan) -> tuple[np.ndarray, np.ndarray]:
    """A block read with the plan's halo, cut to the window's halo, with each band's context mean (as the
    sample stage computes it, `socmap.patches.box_mean`) as one more channel each."""
    if not plan.context:
        return filled, valid
    cut = plan.context // 2
    means = [np.moveaxis(box_mean(np.moveaxis(band, -1, 0), plan.context), 0, -1) for band in filled]
    inner = filled[:, cut:-cut, cut:-cut]
    return np.concatenate([inner, np.stack(means)]), valid[:, cut:-cut, cut:-cut]


def map_blocks(catalog: RasterCatalog, region: Region, ensemble: Ensemble,
               plan: MapPlan) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
    """Stream the map: yield (block, output name -> float32 [bands, h, w]) for every block.

    Under `torch.distributed` each process computes the blocks of its rank and the blocks come out
    on rank 0 only, a round of one block per process at a time.
    """
    blocks = plan.blocks
    rank, world, gather = distributed()
    rounds = math.ceil(len(blocks) / world)
    log.info("map %s: %d blocks of up to %d² pixels, %d on each of %d process(es)",
             ", ".join(map(str, plan.years)), len(blocks), plan.block_size, rounds, world)
    bar = tqdm(total=len(blocks), desc="map blocks", unit="block", disable=None if rank == 0 else True)
    for round_ in range(rounds):
        index = round_ * world + rank
        mine = blocks[index] if index < len(blocks) else None
        for item in gather(None if mine is None else (mine, map_block(catalog, region, ensemble, plan, mine))) or []:
            if item is not None:
                bar.update()
                yield item
        item = None  # the last block's bands go before the next block is read: memory stays one block's
    bar.close()
