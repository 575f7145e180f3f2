"""The simulated Bavaria writes what the contract says: grids, bands, years, quirks, truth."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import rowcol

from socmap.config import Params, replace
from socmap.simulate import NODATA, YEARLY_BANDS, simulate

from conftest import TINY_WORLD, tiny_params

YEARS = range(2012, 2021)


def test_yearly_rasters_share_one_grid_and_skip_the_latency_year(tiny_world):
    rasters = tiny_world / "rasters"
    grids = set()
    for band in YEARLY_BANDS:
        years = sorted(int(p.stem) for p in (rasters / band).glob("*.tif"))
        expected = list(YEARS)[:-1] if band == "SoilEvaporation" else list(YEARS)
        assert years == expected, band
        for year in years:
            with rasterio.open(rasters / band / f"{year}.tif") as src:
                assert src.crs.to_epsg() == 25832
                assert src.dtypes == ("float32",) and src.nodata == NODATA and src.count == 1
                assert src.profile["tiled"] and src.compression is not None
                grids.add((src.transform, src.shape))
    assert len(grids) == 1


def test_elevation_is_static_and_finer(tiny_world):
    with rasterio.open(tiny_world / "rasters" / "LAI" / "2015.tif") as yearly, \
            rasterio.open(tiny_world / "rasters" / "Elevation" / "static.tif") as static:
        assert static.res == (500.0, 500.0) and yearly.res == (1000.0, 1000.0)
        assert static.bounds == yearly.bounds
        assert static.units == ("m",)
        elevation = static.read(1)
    assert 100 <= elevation.min() and elevation.max() < 3500
    assert not (elevation == NODATA).any()


@pytest.mark.parametrize("band, low, high", [
    ("LAI", 0.1, 8.0), ("LST", -10.0, 30.0), ("MODIS_NPP", 50.0, 1500.0),
    ("SoilEvaporation", 5.0, 400.0), ("TotalEvapotranspiration", 200.0, 1200.0),
])
def test_yearly_values_are_plausible_with_scattered_nodata(tiny_world, band, low, high):
    nodata = 0
    for year in list(YEARS)[:-1]:
        with rasterio.open(tiny_world / "rasters" / band / f"{year}.tif") as src:
            values = src.read(1, masked=True)
        nodata += int(values.mask.sum())
        assert low <= values.min() and values.max() <= high, (band, year)
    assert 0 < nodata < 0.05 * values.size * (len(YEARS) - 1)


def test_survey_table_has_the_original_columns_revisits_and_dirty_rows(tiny_world):
    points = pd.read_csv(tiny_world / "points.csv")
    assert list(points.columns) == ["POINTID", "GPS_LONG", "GPS_LAT", "year", "OC", "survey_date"]
    assert points["year"].between(2012, 2020).all()
    assert (pd.to_datetime(points["survey_date"]).dt.year == points["year"]).all()
    west, south, east, north = TINY_WORLD["simulate.bbox"]
    outside = ~(points["GPS_LONG"].between(west, east) & points["GPS_LAT"].between(south, north))
    dirty = pd.read_parquet(tiny_world / "truth.parquet")["dirty"]
    n = 7  # of each kind: round(370 rows × dirty_share 0.08 / 4), then 7 duplicates appended
    assert len(points) == 377 and dirty.value_counts().to_dict() == {
        "": 377 - 4 * n, "missing_target": n, "above_max_target": n, "outside_region": n, "duplicate": n}
    np.testing.assert_array_equal(points["OC"].isna(), dirty == "missing_target")
    np.testing.assert_array_equal(points["OC"] > 150, dirty == "above_max_target")
    np.testing.assert_array_equal(outside, dirty == "outside_region")
    np.testing.assert_array_equal(points.duplicated(), dirty == "duplicate")
    lucas = points[points["POINTID"].str.startswith("L")]
    assert lucas.groupby("POINTID")["year"].nunique().max() >= 2  # one id, several surveys
    state = points[points["POINTID"].str.startswith("S")]
    assert state.groupby(["GPS_LONG", "GPS_LAT"])["POINTID"].nunique().max() >= 2  # one place, new ids


def test_truth_and_oracle(tiny_world):
    points = pd.read_csv(tiny_world / "points.csv")
    truth = pd.read_parquet(tiny_world / "truth.parquet")
    assert list(truth["row_id"]) == list(range(len(points)))
    assert (truth["POINTID"] == points["POINTID"]).all()
    assert set(truth["dirty"]) == {"", "missing_target", "above_max_target", "outside_region", "duplicate"}
    oracle = json.loads((tiny_world / "oracle.json").read_text())
    assert 0.3 < oracle["r2_covariates"] < oracle["r2_full"] < 1.0
    clean = truth["dirty"] == ""
    ratio = points.loc[clean, "OC"] / truth.loc[clean, "truth"]
    assert 0.9 < np.median(ratio) < 1.1  # the observation is the truth plus mean-free noise


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    params = tiny_params(tmp_path)
    simulate(params.simulate, tmp_path / "a")
    simulate(params.simulate, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 * 9 - 1 + 1 + 3
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert mismatch == [] and errors == []
    simulate(replace(params, **{"simulate.seed": 1}).simulate, tmp_path / "c")
    assert not filecmp.cmp(tmp_path / "a" / "points.csv", tmp_path / "c" / "points.csv", shallow=False)


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    world = tmp_path_factory.mktemp("default") / "synthetic"
    oracle = simulate(Params().simulate, world)
    return world, oracle


def test_default_world_is_bavaria_with_a_right_skewed_target(default_world):
    world, oracle = default_world
    with rasterio.open(world / "rasters" / "Elevation" / "static.tif") as src:
        elevation = src.read(1)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(
            *src.xy([0, src.height - 1], [src.width // 2] * 2))
    assert 8.9 < lon[0] < 14 and 50.4 < lat[0] < 50.8 and 47.0 < lat[1] < 47.4
    south, north = elevation[-elevation.shape[0] // 20:], elevation[elevation.shape[0] // 3:]
    assert np.percentile(south, 99) > 2000  # the Alps
    assert np.percentile(north, 5) < 400  # the lowlands
    p = oracle["oc_percentiles"]
    assert 7 < p["p5"] < 12 and 15 < p["p50"] < 25 and p["p95"] > 45  # LUCAS 2018 Bavaria: 9.7 / 21 / 63
    assert oracle["share_above_100"] > 0.003
    assert 0.6 < oracle["r2_covariates"] < oracle["r2_full"] < 0.95


def test_context_and_history_matter_beyond_the_survey_year_pixel(default_world):
    """A linear model on the survey-year pixel explains less than one that also sees the
    neighbourhood and the years before: the CNN and the LSTM each have something to find."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import cross_val_score

    world, _ = default_world
    points = pd.read_csv(world / "points.csv")
    truth = pd.read_parquet(world / "truth.parquet")
    keep = (truth["dirty"] == "") & (points["year"] >= 2011)
    points, target = points[keep], np.log(truth.loc[keep, "truth_covariates"].to_numpy())
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    x, y = to_utm.transform(points["GPS_LONG"].to_numpy(), points["GPS_LAT"].to_numpy())
    stacks = {}
    for band in YEARLY_BANDS:
        with rasterio.open(world / "rasters" / band / "2015.tif") as src:
            row, col = rowcol(src.transform, x, y)
        stacks[band] = np.stack([rasterio.open(world / "rasters" / band / f"{yr}.tif").read(1)
                                 for yr in range(2007, 2023)])
    row, col, t = np.asarray(row), np.asarray(col), points["year"].to_numpy() - 2007
    t = np.minimum(t, 15)
    pixel = np.column_stack([stacks[b][t, row, col] for b in YEARLY_BANDS])
    history = np.column_stack([stacks["MODIS_NPP"][t - k, row, col] for k in range(1, 5)])
    with rasterio.open(world / "rasters" / "Elevation" / "static.tif") as src:
        elev = src.read(1)
        erow, ecol = rowcol(src.transform, x, y)
    erow, ecol = np.asarray(erow), np.asarray(ecol)
    window = np.stack([elev[np.clip(erow + dr, 0, elev.shape[0] - 1), np.clip(ecol + dc, 0, elev.shape[1] - 1)]
                       for dr in range(-5, 6, 2) for dc in range(-5, 6, 2)], axis=1)
    pixel = np.column_stack([pixel, elev[erow, ecol]])
    valid = (np.column_stack([pixel, history]) != NODATA).all(axis=1)
    score = lambda features: cross_val_score(LinearRegression(), features[valid], target[valid], cv=5).mean()  # noqa: E731
    base = score(pixel)
    assert base < 0.9
    assert score(np.column_stack([pixel, history])) > base + 0.02
    assert score(np.column_stack([pixel, window.mean(axis=1) - elev[erow, ecol]])) > base + 0.02
