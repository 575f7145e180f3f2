"""The simulated landscape: the world's grids, block means, terrain position, slope and northness, the
regional field."""

from __future__ import annotations

import numpy as np

from socmap.config import Params, replace
from socmap.landscape import block_mean, make_grids, regional_field, terrain


def test_the_grids_nest_and_cover_the_bbox_in_whole_pixels():
    cfg = replace(Params(), **{"simulate.bbox": [11.3, 48.2, 11.64, 48.43]}).simulate
    coarse, fine = make_grids(cfg)
    assert coarse.res == (1000.0, 1000.0) and fine.res == (500.0, 500.0)
    assert (fine.width, fine.height) == (2 * coarse.width, 2 * coarse.height)
    assert coarse.transform.c % 1000.0 == 0 and coarse.transform.f % 1000.0 == 0
    assert coarse.transform == fine.transform * fine.transform.scale(2) and coarse.crs.to_epsg() == 25832


def test_block_mean_averages_each_block():
    fine = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(block_mean(fine, 2), [[2.5, 4.5], [10.5, 12.5]])


def test_terrain_of_a_ramp_and_a_peak():
    rows = np.arange(9.0)[:, None] * np.ones((1, 9))
    tpi, slope, northness = terrain(100.0 * rows, res=100.0, context_px=3)  # rises 1 m per m to the south
    np.testing.assert_allclose(slope, 45.0)
    np.testing.assert_allclose(northness, 1.0)
    np.testing.assert_allclose(tpi[1:-1], 0.0, atol=1e-9)  # a plane sits at its neighbours' mean
    peak = np.zeros((7, 7))
    peak[3, 3] = 90.0
    tpi, _, _ = terrain(peak, res=100.0, context_px=3)
    assert tpi[3, 3] == 80.0 and tpi[3, 4] == -10.0  # 90 − 90/9, and 0 − 90/9


def test_regional_field_is_smooth_over_about_100_km():
    cfg = Params().simulate
    grid = make_grids(cfg)[0]  # Bavaria, 1 km pixels
    field = regional_field(cfg, grid)
    assert 0.7 < field.std() < 1.3 and abs(field.mean()) < 0.5
    lag = lambda km: np.corrcoef(field[:, :-km].ravel(), field[:, km:].ravel())[0, 1]  # noqa: E731
    assert lag(10) > 0.9 and lag(100) < 0.5
