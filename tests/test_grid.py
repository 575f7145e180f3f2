"""The raster grid: pixel of a point, pixel centres, window transforms, the report form."""

from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin

from socmap.grid import GridSpec

GRID = GridSpec(CRS.from_epsg(25832), from_origin(600_000.0, 5_400_000.0, 500.0, 250.0), width=4, height=3)


def test_index_floors_to_the_pixel_holding_the_point_and_sends_non_finite_points_off_the_grid():
    x = np.array([600_000.0, 600_499.9, 600_500.0, 601_999.0, 599_999.0, np.nan, np.inf])
    y = np.array([5_400_000.0, 5_399_750.1, 5_399_749.9, 5_399_250.1, 5_400_000.0, 5_400_000.0, 5_400_000.0])
    row, col = GRID.index(x, y)
    assert row[:5].tolist() == [0, 0, 1, 2, 0] and col[:5].tolist() == [0, 0, 1, 3, -1]
    assert GRID.contains_index(row, col).tolist() == [True, True, True, True, False, False, False]


def test_centres_and_window_transform_agree():
    x, y = GRID.centres(1, 2, height=2, width=2)
    np.testing.assert_array_equal(x, [[601_250.0, 601_750.0], [601_250.0, 601_750.0]])
    np.testing.assert_array_equal(y, [[5_399_625.0, 5_399_625.0], [5_399_375.0, 5_399_375.0]])
    transform = GRID.window_transform(1, 2)
    assert (transform.c, transform.f) == (601_000.0, 5_399_750.0)
    assert GRID.res == (500.0, 250.0)


def test_the_report_form_is_plain_json_values():
    assert GRID.to_dict() == {"crs": "EPSG:25832", "transform": [500.0, 0.0, 600_000.0, 0.0, -250.0, 5_400_000.0],
                              "res": [500.0, 250.0], "shape": [3, 4]}
