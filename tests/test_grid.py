"""The raster grid: points to pixels, windows, pixel centres and the report's plain values."""

from __future__ import annotations

import json

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from socmap.grid import GridSpec

# 1 km pixels, upper-left corner at (600 000 E, 5 400 000 N), 16 columns × 12 rows
GRID = GridSpec(CRS.from_epsg(25832), Affine(1000.0, 0.0, 600_000.0, 0.0, -1000.0, 5_400_000.0), 16, 12)


def test_points_fall_in_the_pixel_whose_upper_left_corner_they_reach():
    x = np.array([600_000.0, 600_999.9, 601_000.0, 615_999.0, 599_999.0, 616_000.0, np.nan, np.inf])
    y = np.array([5_400_000.0, 5_399_000.1, 5_389_000.0, 5_388_001.0, 5_399_000.0, 5_399_000.0, 0.0, 0.0])
    row, col = GRID.index(x, y)
    assert row[:6].tolist() == [0, 0, 11, 11, 1, 1] and col[:6].tolist() == [0, 0, 1, 15, -1, 16]
    assert row.dtype == col.dtype == np.int64
    assert GRID.contains_index(row, col).tolist() == [True, True, True, True, False, False, False, False]
    assert GRID.contains_index(np.array([12, -1]), np.array([0, 0])).tolist() == [False, False]


def test_a_window_s_transform_and_centres():
    assert GRID.window_transform(3, 5) == Affine(1000.0, 0.0, 605_000.0, 0.0, -1000.0, 5_397_000.0)
    x, y = GRID.centres(3, 5, 2, 3)
    assert x.tolist() == [[605_500.0, 606_500.0, 607_500.0]] * 2
    assert y.tolist() == [[5_396_500.0] * 3, [5_395_500.0] * 3]
    row, col = GRID.index(x, y)  # each centre lies in its own pixel
    assert row.tolist() == [[3, 3, 3], [4, 4, 4]] and col.tolist() == [[5, 6, 7]] * 2


def test_the_grid_as_plain_json_values():
    assert GRID.res == (1000.0, 1000.0)
    assert json.loads(json.dumps(GRID.to_dict())) == {
        "crs": "EPSG:25832", "transform": [1000.0, 0.0, 600_000.0, 0.0, -1000.0, 5_400_000.0],
        "res": [1000.0, 1000.0], "shape": [12, 16]}
