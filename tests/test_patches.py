"""Patches around survey rows: every pixel where it belongs, early years repeating the first, the fill values."""

from __future__ import annotations

import numpy as np
import pytest

from coded import H, NODATA_PIXEL, W, YEARS, code, coded_params, expected_patch
from socmap.patches import extract_patches, fill_missing, fill_values, window_years
from socmap.rasters import RasterCatalog

@pytest.mark.parametrize("row, col", [(5, 7), (4, 4), (0, 8), (H - 1, 3), (0, 0), (H - 1, W - 1), (2, W - 1)])
def test_patches_hold_their_own_pixels(coded, row, col):
    catalog = RasterCatalog.open(coded_params(coded).data)
    assert window_years(np.array([2013, 2012]), 3, 2010).tolist() == [[2011, 2012, 2013], [2010, 2011, 2012]]
    at = (np.array([row, row]), np.array([col, col]), np.array([2013, 2012]))
    patches, invalid = extract_patches(catalog, *at, 5, 3, fill=None)
    assert patches.shape == (2, 3, 5, 5, 3) and patches.dtype == np.float32
    np.testing.assert_array_equal(patches[0], expected_patch(row, col, 2013))  # chronological
    np.testing.assert_array_equal(patches[1], expected_patch(row, col, 2012))
    np.testing.assert_array_equal(invalid, np.isnan(patches).sum(axis=(2, 3)))
    filled, invalid_filled = extract_patches(catalog, *at, 5, 3)
    fill = fill_values(catalog, "mean")
    np.testing.assert_array_equal(filled, fill_missing(patches, [fill[b] for b in ("A", "S", "B")])[0])
    np.testing.assert_array_equal(invalid_filled, invalid)


def test_early_years_repeat_the_first_year(coded):
    catalog = RasterCatalog.open(coded_params(coded).data)
    patch = extract_patches(catalog, np.array([5]), np.array([5]), np.array([2011]), 3, 4, fill=None)[0][0]
    np.testing.assert_array_equal(patch, catalog.read_stack([2010, 2010, 2010, 2011], 4, 4, 3, 3))
    assert patch[0, 1, 1].tolist() == [code(2010, 5, 5)] * 3 + [code(2011, 5, 5)]


def test_fill_values_and_fill_missing(coded):
    catalog = RasterCatalog.open(coded_params(coded).data)
    rows, cols = np.mgrid[0:H, 0:W]
    a = np.concatenate([code(y, rows, cols).ravel() for y in YEARS]).astype(float)
    a = np.delete(a, (NODATA_PIXEL[1] - 2010) * H * W + NODATA_PIXEL[2] * W + NODATA_PIXEL[3])
    fill = fill_values(catalog, "mean")
    assert fill["A"] == pytest.approx(a.mean()) and fill["S"] == pytest.approx((rows * 100.0 + cols + 0.25).mean())
    stack = catalog.read_stack([2011], 2, 3, 3, 3)
    filled, valid = fill_missing(stack, [fill[b] for b in ("A", "S", "B")])
    assert not valid[0, 1, 1, 0] and valid.sum() == stack.size - 1
    assert filled[0, 1, 1, 0] == np.float32(fill["A"]) and filled[0, 0, 0, 0] == code(2011, 2, 3)
    assert np.isnan(stack[0, 1, 1, 0])  # not in place unless asked
