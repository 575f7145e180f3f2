"""The map block by block: the plan, blocks that cover the window once, patches cut from a block that equal the
sample stage's, the validity threshold, memory that does not grow with the region."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from conftest import tiny_params
from mapped import MAP, map_once
from socmap import blocks
from socmap.ensemble import Ensemble
from socmap.patches import fill_missing, fill_values
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.simulate import simulate

def test_block_reads_give_the_sample_patches_bit_for_bit(mapped):
    root, params = mapped
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


def test_windows_with_too_little_valid_data_are_nodata(ensemble, calibration):
    stack = np.ones((6, 12, 12, 3), dtype=np.float32)
    valid = np.ones_like(stack, dtype=bool)
    valid[:, :7, :7, :] = False  # the pixels whose 5×5 window reaches into the corner lose validity
    inside = np.ones((8, 8), dtype=bool)
    inside[7, 7] = False
    plan = blocks.MapPlan(years=(2020,), needed=(2018, 2019, 2020), year_steps={2020: slice(0, 3)}, window_size=5,
                          window=blocks.Window(0, 0, 8, 8), blocks=(), fill_values=(1.0,) * 6, min_valid_fraction=0.5,
                          block_size=8, batch_size=7, working_crs="EPSG:25832", context=0)
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


def test_block_reads_with_context_give_the_sample_patches_bit_for_bit(tiny_world, tmp_path):
    from socmap.sample import sample

    params = tiny_params(tiny_world, **{**MAP, "sample.context": 7})
    sample(params.data, params.sample, tmp_path)
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    patches = np.load(tmp_path / "patches.npy", mmap_mode="r")
    assert patches.shape[1] == 12  # six bands and their context means
    catalog = RasterCatalog.open(params.data)
    plan = blocks.MapPlan.build(params, catalog, Region.from_config(params.data.region))
    assert plan.halo == 2 + 3
    rows = np.flatnonzero(samples["year"].to_numpy() == 2020)
    row, col = catalog.grid.index(samples["x"].to_numpy()[rows], samples["y"].to_numpy()[rows])
    for block in plan.blocks:
        here = (row >= block.row_off) & (row < block.row_off + block.height) \
            & (col >= block.col_off) & (col < block.col_off + block.width)
        filled, valid = fill_missing(blocks.read_halo(catalog, [2018, 2019, 2020], block, plan.halo),
                                     plan.fill_values)
        stack, valid = blocks.with_context(filled, valid, plan)
        assert stack.shape[0] == 12 and valid.shape[0] == 6
        cut = blocks.block_patches(stack, row[here] - block.row_off, col[here] - block.col_off, 5)
        np.testing.assert_array_equal(cut, patches[rows[here]])
