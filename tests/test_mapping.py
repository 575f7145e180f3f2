"""Map stage: COGs that GDAL and rio-cogeo accept, pixels that equal the sample patches' predictions,
nodata where it belongs, memory that does not grow with the region, and the pieces it is made of."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from socmap import blocks, mapping
from socmap.config import replace
from socmap.ensemble import Ensemble
from socmap.errors import SocmapError
from socmap.io import read_json
from socmap.intervals import prediction_interval
from socmap.kriging import load_fields
from socmap.patches import fill_missing, fill_values
from socmap.predict import load_ensemble
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.simulate import simulate

from conftest import tiny_params

YEARS = [2018, 2020]
MAP = {"train.epochs": 1, "train.hidden_size": 16, "map.years": YEARS, "map.block_size": 16,
       "split.test_block_km": 5.0}


@pytest.fixture(scope="module")
def project(tiny_world, tmp_path_factory) -> tuple[Path, object]:
    """A project directory after sample → split → train (1 epoch) → evaluate → map on the tiny world."""
    root = tmp_path_factory.mktemp("map-project")
    params = tiny_params(tiny_world, **MAP)
    with contextlib.chdir(root):
        for stage in ("sample", "split", "train", "evaluate", "mapping"):
            importlib.import_module(f"socmap.{stage}").main(params)
    return root, params


@pytest.fixture(scope="module")
def ensemble(project):
    return load_ensemble(project[0] / "models")


@pytest.fixture(scope="module")
def calibration(project) -> dict:
    return read_json(project[0] / "data/evaluate/calibration.json", "evaluate")


@pytest.fixture(scope="module")
def fields(project) -> list:
    return load_fields(project[0] / "data/evaluate/kriging.npz")


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"profile": src.profile, "descriptions": src.descriptions, "units": src.units,
                            "tags": src.tags(), "overviews": src.overviews(1)}


# ---------------------------------------------------------------------------------------- the stage


def test_maps_are_valid_cogs_on_the_reference_grid_with_bands_units_and_identity(project):
    root, params = project
    catalog = RasterCatalog.open(params.data)
    names = [f"soc_{year}" for year in YEARS] + ["soc_change_2018_2020"]
    assert sorted(p.name for p in (root / "data/maps").iterdir()) == sorted(f"{n}.tif" for n in names)
    models = sorted((root / "models").glob("run_*.pt"))
    digest = hashlib.sha256("".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in models).encode())
    for name in names:
        path = root / "data/maps" / f"{name}.tif"
        valid, errors, warnings = cog_validate(path, quiet=True)
        assert valid and not errors and not warnings, (name, errors, warnings)
        values, meta = read(path)
        profile = meta["profile"]
        assert profile["crs"] == catalog.grid.crs and profile["crs"].to_epsg() == 25832
        assert profile["transform"] == catalog.grid.transform  # the tiny region covers the whole grid
        assert (profile["width"], profile["height"]) == (catalog.grid.width, catalog.grid.height)
        assert profile["dtype"] == "float32" and profile["nodata"] == -9999.0
        assert profile["tiled"] and profile["compress"] == "deflate"
        assert meta["units"] == ("g/kg",) * len(values)
        assert meta["tags"]["SOCMAP_MODELS_SHA256"] == digest.hexdigest()
        assert meta["tags"]["SOCMAP_MODELS"].startswith("run_0.pt:")
        assert json.loads(meta["tags"]["SOCMAP_PARAMS"])["map.years"] == YEARS
        assert json.loads(meta["tags"]["SOCMAP_PARAMS"])["data.rasters"]["dir"] == params.data.rasters.dir
        assert len(meta["tags"]["SOCMAP_PARAMS_SHA256"]) == 64
        inside = Region.from_config(params.data.region).mask(catalog.grid, 0, 0, catalog.grid.height,
                                                             catalog.grid.width)
        assert 0.7 < inside.mean() < 1.0  # the region's edge crosses the grid
        mapped = values != -9999.0
        assert not (mapped & ~inside).any(), name
        # every pixel inside is mapped, except a few whose window reaches off the grid (too little valid data)
        halo = params.sample.window_size // 2
        core = (slice(None), slice(halo, -halo), slice(halo, -halo))
        np.testing.assert_array_equal(mapped[core], np.broadcast_to(inside, mapped.shape)[core], err_msg=name)
    _, meta = read(root / "data/maps/soc_2020.tif")
    assert meta["descriptions"] == ("SOC mean", "SOC ensemble std", "SOC 90% interval lower",
                                    "SOC 90% interval upper")
    _, meta = read(root / "data/maps/soc_change_2018_2020.tif")
    assert meta["descriptions"] == ("SOC change 2018-2020 mean", "SOC change 2018-2020 ensemble std")


def test_a_map_pixel_equals_the_kriged_ensemble_on_the_sample_patch_of_a_row_there(project, ensemble, calibration,
                                                                                  fields):
    root, params = project
    assert len(fields) == len(ensemble) and fields[0].space == "log"  # the default: evaluate.kriging = log
    samples = pd.read_parquet(root / "data/processed/samples.parquet")
    patches = np.load(root / "data/processed/patches.npy", mmap_mode="r")
    grid = RasterCatalog.open(params.data).grid
    checked = 0
    for year in YEARS:
        rows = np.flatnonzero(samples["year"].to_numpy() == year)
        members = np.stack([m.predict(patches[rows]) for m in ensemble])  # [M, n]
        values, _ = read(root / f"data/maps/soc_{year}.tif")
        row, col = grid.index(samples["x"].to_numpy()[rows], samples["y"].to_numpy()[rows])
        pixel = values[:, row, col]  # [4, n]
        mapped = pixel[0] != -9999.0
        # a row inside the region whose pixel centre is not (at the region's edge) is not mapped
        centre_x, centre_y = grid.centres(0, 0, grid.height, grid.width)
        centre_inside = Region.from_config(params.data.region).contains(centre_x[row, col], centre_y[row, col],
                                                                        grid.crs)
        np.testing.assert_array_equal(mapped, centre_inside)
        assert mapped.mean() > 0.8
        members, pixel, rows = members[:, mapped], pixel[:, mapped], rows[mapped]
        # each member kriged from its run's training residuals at the pixel centre, as evaluate does
        centres = np.stack([centre_x[row, col][mapped], centre_y[row, col][mapped]], axis=1)
        unkriged = members
        members = np.stack([f.correct(m, *f.krige(centres)) for f, m in zip(fields, members)])
        assert np.abs(members / unkriged - 1).max() > 0.01  # kriging moved the pixels
        kappa = np.mean([f.krige(centres)[1] for f in fields], axis=0)
        # the same patches (see below) in other batches: equal up to the model's float32 rounding
        np.testing.assert_allclose(pixel[0], members.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(pixel[1], members.std(axis=0, ddof=1), rtol=1e-5, atol=1e-5)
        lower, upper = prediction_interval(members.mean(axis=0), members.std(axis=0, ddof=1), calibration,
                                           kappa=kappa)
        np.testing.assert_allclose(pixel[2], lower, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(pixel[3], upper, rtol=1e-5, atol=1e-4)
        checked += len(rows)
    assert checked >= 40


def test_block_reads_give_the_sample_patches_bit_for_bit(project):
    root, params = project
    samples = pd.read_parquet(root / "data/processed/samples.parquet")
    patches = np.load(root / "data/processed/patches.npy", mmap_mode="r")
    catalog = RasterCatalog.open(params.data)
    fill = list(fill_values(catalog, "mean").values())
    rows = np.flatnonzero(samples["year"].to_numpy() == 2020)
    row, col = catalog.grid.index(samples["x"].to_numpy()[rows], samples["y"].to_numpy()[rows])
    for block in blocks.split_blocks(blocks.Window(0, 0, catalog.grid.height, catalog.grid.width), 16):
        here = (row >= block.row_off) & (row < block.row_off + block.height) \
            & (col >= block.col_off) & (col < block.col_off + block.width)
        filled, _ = fill_missing(blocks.read_halo(catalog, [2018, 2019, 2020], block, 2), fill)
        cut = blocks.block_patches(filled, row[here] - block.row_off, col[here] - block.col_off, 5)
        np.testing.assert_array_equal(cut, patches[rows[here]])


def test_intervals_bracket_the_mean_and_change_is_the_difference_of_means(project):
    root, _ = project
    first, _ = read(root / "data/maps/soc_2018.tif")
    last, _ = read(root / "data/maps/soc_2020.tif")
    change, _ = read(root / "data/maps/soc_change_2018_2020.tif")
    mapped = last[0] != -9999.0
    assert (last[2][mapped] >= 0).all()
    assert (last[2][mapped] <= last[0][mapped]).all() and (last[0][mapped] <= last[3][mapped]).all()
    both = mapped & (first[0] != -9999.0)
    assert ((change[0] != -9999.0) == both).all()
    np.testing.assert_allclose(change[0][both], (last[0] - first[0])[both], atol=1e-4)
    assert (change[1][both] >= 0).all() and change[1][both].max() > 0


def test_previews_show_each_map(project):
    root, _ = project
    import matplotlib
    import matplotlib.image

    for name, left in (("soc_2018", "viridis"), ("soc_2020", "viridis"), ("soc_change_2018_2020", "RdBu")):
        image = matplotlib.image.imread(root / "plots/map" / f"{name}.png")[..., :3]
        height, width, _ = image.shape
        assert width > 1.8 * height > 500  # two panels side by side
        for cmap, columns in ((left, slice(width // 20, width * 7 // 20)),
                              ("magma", slice(width * 11 // 20, width * 17 // 20))):  # value, then std
            crop = image[height // 4:height * 3 // 4:4, columns][:, ::4].reshape(-1, 3)  # within the panel's map
            lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
            assert (np.abs(crop[:, None] - lut).max(axis=-1).min(axis=-1) < 1.5 / 255).all(), (name, cmap)
            assert len(np.unique(crop, axis=0)) > 50, (name, cmap)  # the map's values, not one colour


# ---------------------------------------------------------------------------------- streaming


def map_once(params, ensemble, calibration: dict, out_dir: Path, catalog: RasterCatalog | None = None,
             fields=()) -> list[Path]:
    """The maps of `params` (the stage's work without its fixed paths)."""
    catalog = catalog or RasterCatalog.open(params.data)
    region = Region.from_config(params.data.region)
    return mapping.make_maps(catalog, region, Ensemble(ensemble, calibration, fields), params, out_dir,
                             {"SOCMAP_TEST": "1"})


def test_nodata_outside_the_region_and_block_size_does_not_change_the_map(project, ensemble, calibration, fields,
                                                                           tmp_path):
    root, params = project
    west, south, east, north = params.data.region.bbox
    small = replace(params, **{"data.region.bbox": [west, south, (west + east) / 2, north], "map.years": [2020]})
    (small_path,) = map_once(small, ensemble, calibration, tmp_path / "small", fields=fields)
    (whole_path,) = map_once(replace(params, **{"map.years": [2020], "map.block_size": 64}), ensemble,
                             calibration, tmp_path / "whole", fields=fields)
    whole, _ = read(whole_path)
    # blocks of 16 vs 64: other batches, so equal up to the model's float32 rounding
    np.testing.assert_allclose(whole, read(root / "data/maps/soc_2020.tif")[0], rtol=1e-5, atol=1e-5)
    values, meta = read(small_path)
    grid = RasterCatalog.open(params.data).grid
    assert meta["profile"]["width"] < grid.width and meta["profile"]["height"] == grid.height
    col_off = round((meta["profile"]["transform"].c - grid.transform.c) / grid.transform.a)
    inside = Region.from_config(small.data.region).mask(grid, 0, col_off, values.shape[1], values.shape[2])
    assert (values[:, ~inside] == -9999.0).all()
    np.testing.assert_allclose(values[:, inside], whole[:, :, col_off:col_off + values.shape[2]][:, inside],
                               rtol=1e-5, atol=1e-5)


def test_windows_with_too_little_valid_data_are_nodata(ensemble, calibration):
    stack = np.ones((6, 12, 12, 3), dtype=np.float32)
    valid = np.ones_like(stack, dtype=bool)
    valid[:, :7, :7, :] = False  # the pixels whose 5×5 window reaches into the corner lose validity
    inside = np.ones((8, 8), dtype=bool)
    inside[7, 7] = False
    plan = blocks.MapPlan(years=(2020,), needed=(2018, 2019, 2020), year_steps={2020: slice(0, 3)}, window_size=5,
                          window=blocks.Window(0, 0, 8, 8), blocks=(), fill_values=(1.0,) * 6, min_valid_fraction=0.5,
                          block_size=8, batch_size=7)
    out = blocks.predict_block(stack, valid, inside, Ensemble(ensemble, calibration), plan)[2020]
    fraction = np.array([[1 - max(0, min(r + 5, 7) - r) * max(0, min(c + 5, 7) - c) / 25 for c in range(8)]
                         for r in range(8)])
    expected = (fraction >= 0.5) & inside
    assert out.shape == (len(ensemble), 8, 8)
    assert (np.isfinite(out).all(axis=0) == expected).all()
    assert np.isnan(out[:, ~expected]).all()


@pytest.fixture(scope="module")
def wide_world(tmp_path_factory) -> Path:
    """A world of 80 × 60 km at 1 km with the tiny world's years, for memory against region size."""
    world = tmp_path_factory.mktemp("wide") / "synthetic"
    params = tiny_params(world, **{"simulate.bbox": [11.0, 48.2, 12.08, 48.75], "simulate.sites": 50})
    simulate(params.simulate, world)
    return world


def test_kriging_fields_must_match_the_checkpoints(project, ensemble, calibration, fields, tmp_path):
    _, params = project
    with pytest.raises(SocmapError, match=r"kriging.npz: kriging fields of 1 run\(s\) for 2 checkpoints in models/; "
                                          r"rerun `socmap evaluate`"):
        map_once(params, ensemble, calibration, tmp_path, fields=fields[:1])


def test_peak_memory_does_not_grow_with_the_region(wide_world, ensemble, calibration, fields, tmp_path):
    peaks = {}
    for name, east in (("region", 11.54), ("doubled", 12.08)):
        params = tiny_params(wide_world, **{**MAP, "map.years": [2020], "map.block_size": 32,
                                            "data.region.bbox": [11.0, 48.2, east, 48.75]})
        catalog = RasterCatalog.open(params.data)
        fill_values(catalog, "mean")  # whole-grid statistics, the same for any region
        tracemalloc.start()
        (path,) = map_once(params, ensemble, calibration, tmp_path / name, catalog, fields)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    with rasterio.open(path) as src:
        patch_bytes = src.width * src.height * 6 * 5 * 5 * 3 * 4  # every pixel's patch of the doubled region
    assert peaks["doubled"] < 1.1 * peaks["region"], peaks
    assert peaks["doubled"] < patch_bytes / 2, (peaks, patch_bytes)


@pytest.mark.slow
def test_two_processes_under_accelerate_write_the_same_maps(project, tmp_path):
    root, params = project
    shutil.copytree(root / "models", tmp_path / "models")
    shutil.copytree(root / "data/evaluate", tmp_path / "data/evaluate")
    with contextlib.chdir(tmp_path):
        mapping.main(replace(params, **{"map.num_processes": 2}))
    for name in ("soc_2018", "soc_2020", "soc_change_2018_2020"):
        ours, meta = read(tmp_path / "data/maps" / f"{name}.tif")
        np.testing.assert_array_equal(ours, read(root / "data/maps" / f"{name}.tif")[0])
        assert cog_validate(tmp_path / "data/maps" / f"{name}.tif", quiet=True)[0]
        assert meta["tags"] == read(root / "data/maps" / f"{name}.tif")[1]["tags"]  # the same identity
    assert (tmp_path / "plots/map/soc_2020.png").is_file()


# ------------------------------------------------------------------------------------- the pieces


def test_block_patches_are_the_windows_around_each_pixel():
    rng = np.random.default_rng(0)
    stack = rng.random((3, 14, 11, 4), dtype=np.float32)  # a 10 × 7 block with a halo of 2
    rows, cols = rng.integers(0, 10, 30), rng.integers(0, 7, 30)
    patches = blocks.block_patches(stack, rows, cols, 5)
    assert patches.shape == (30, 3, 5, 5, 4)
    for i, (r, c) in enumerate(zip(rows, cols)):
        np.testing.assert_array_equal(patches[i], stack[:, r:r + 5, c:c + 5, :])


def test_blocks_cover_the_window_once():
    window = blocks.Window(3, 5, 37, 20)
    covered = np.zeros((50, 30), dtype=int)
    for b in blocks.split_blocks(window, 16):
        assert b.height <= 16 and b.width <= 16
        covered[b.row_off:b.row_off + b.height, b.col_off:b.col_off + b.width] += 1
    assert covered[3:40, 5:25].min() == 1 and covered.sum() == 37 * 20


def test_years_share_one_read():
    needed, steps = blocks.plan_years([2018, 2020], 3)
    assert needed == [2016, 2017, 2018, 2019, 2020]
    assert steps == {2018: slice(0, 3), 2020: slice(2, 5)}


# ------------------------------------------------------------------------------------------- errors


def test_user_errors_name_the_file_or_key(project, ensemble, calibration, tmp_path):
    root, params = project
    with pytest.raises(SocmapError, match="calibration.json: not found; run `socmap evaluate` first"):
        Ensemble.load(calibration=tmp_path / "calibration.json", models=root / "models")
    with pytest.raises(SocmapError, match="sample.window_size = 5, .* params.yaml has .* 7"):
        Ensemble(ensemble, calibration).check(params.data.bands, 7, params.sample.time_before)
    outside = replace(params, **{"data.region.bbox": [8.0, 47.0, 8.5, 47.5]})
    with pytest.raises(SocmapError, match="data.region lies outside the reference raster grid"):
        map_once(outside, ensemble, calibration, tmp_path / "outside")
