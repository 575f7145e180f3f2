"""Patches around survey rows: every pixel where it belongs, early years repeating the first, the fill values."""

from __future__ import annotations

import numpy as np
import pytest

from coded import H, NODATA_PIXEL, W, YEARS, code, coded_params, expected_patch
from socmap.patches import (box_mean, channel_names, extract_patches, fill_missing, fill_values, gather, is_static,
                            window_years)
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


def test_a_box_mean_is_the_window_mean_and_the_same_bits_over_any_extent():
    rng = np.random.default_rng(0)
    values = rng.normal(300.0, 80.0, (2, 30, 40)).astype(np.float32)
    means = box_mean(values, 7)
    assert means.shape == (2, 24, 34) and means.dtype == np.float32
    assert means[1, 5, 9] == pytest.approx(values[1, 5:12, 9:16].astype(np.float64).mean(), rel=1e-6)
    np.testing.assert_array_equal(box_mean(values[:, 10:25, 3:30], 7), means[:, 10:19, 3:24])  # bit for bit


def test_context_means_follow_the_bands_as_channels(coded):
    catalog = RasterCatalog.open(coded_params(coded).data)
    at = (np.array([6, 0]), np.array([8, 3]), np.array([2014, 2013]))
    plain, invalid = extract_patches(catalog, *at, 3, 2)
    patches, with_context = extract_patches(catalog, *at, 3, 2, context=5)
    assert channel_names(["A", "S", "B"], 5) == ["A", "S", "B", "A~5", "S~5", "B~5"]
    assert patches.shape == (2, 6, 3, 3, 2)
    np.testing.assert_array_equal(patches[:, :3], plain)  # the bands as they were
    np.testing.assert_array_equal(with_context, invalid)  # filled pixels counted for the bands alone
    a = code(2014, *np.mgrid[0:H, 0:W]).astype(np.float64)  # band A in 2014: no nodata pixel that year
    assert patches[0, 3, 1, 1, -1] == pytest.approx(a[4:9, 6:11].mean(), rel=1e-6)  # the 5 × 5 mean at (6, 8)
    fill = fill_values(catalog, "mean")["A"]
    edge = np.full((5, 5), fill)  # the window's corner pixel (-1, 2): context rows -3..1, columns 0..4
    edge[3:] = code(2013, *np.mgrid[0:2, 0:5])  # beyond the grid: the fill value, as the band's own pixels
    assert patches[1, 3, 0, 0, -1] == pytest.approx(edge.mean(), rel=1e-6)
    assert is_static("S~5", ["S"]) and not is_static("A~5", ["S"])


@pytest.mark.parametrize("window, rows", [(3, 40), (9, 400)])  # few small windows; many large ones
def test_both_ways_of_gathering_cut_each_rows_window_of_its_years(window, rows):
    """Small windows index one [H, W, year] view; large ones copy each survey year's years contiguously first."""
    rng = np.random.default_rng(3)
    steps, radius = 3, window // 2
    padded = rng.normal(size=(6, 12 + 2 * radius, 10 + 2 * radius)).astype(np.float32)
    r, c, layer = rng.integers(0, 12, rows), rng.integers(0, 10, rows), rng.integers(0, 6, rows)
    out = np.empty((rows, window, window, steps), dtype=np.float32)
    gather(padded, r, c, layer, window, steps, out)
    for i in range(rows):
        years = np.maximum(np.arange(layer[i] - steps + 1, layer[i] + 1), 0)  # early years repeat the first
        expected = padded[years, r[i]:r[i] + window, c[i]:c[i] + window]  # [T, w, w]
        np.testing.assert_array_equal(out[i], np.moveaxis(expected, 0, -1))
