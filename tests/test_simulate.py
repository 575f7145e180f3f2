"""The simulated Bavaria writes what the contract says: grids, bands, years, quirks, truth; and each
knob of the family of worlds changes what it says and nothing else."""

from __future__ import annotations

import filecmp
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.transform import rowcol

from socmap.config import Params, load_params, replace
from socmap.grid import NODATA
from socmap.landscape import PARENT_OFFSET, YEARLY_BANDS, block_mean, make_grids, regional_field, terrain
from socmap.simulate import history_weights, npp_history, pixel_truth, simulate

from conftest import ROOT, TINY_WORLD, tiny_params

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


def test_the_truth_over_pixels_is_the_truth_at_the_survey_rows(tiny_world):
    params = tiny_params(tiny_world)
    truth = pd.read_parquet(tiny_world / "truth.parquet")
    points = pd.read_csv(tiny_world / "points.csv")
    kept = (truth["dirty"] == "") & (truth["year"] == 2018)
    grid, values = pixel_truth(params.simulate, 2018)
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(points["GPS_LONG"], points["GPS_LAT"])
    row, col = grid.index(np.asarray(x), np.asarray(y))
    assert kept.sum() > 20
    np.testing.assert_allclose(values[row[kept], col[kept]], truth.loc[kept, "truth"], rtol=1e-9)


def test_districts_tile_the_bbox_in_about_equal_cells():
    import shapely
    from socmap.landscape import districts

    cfg = replace(load_params(ROOT / "params.yaml"), **{"simulate.bbox": [10.0, 48.0, 12.0, 49.0]}).simulate
    grid, _ = make_grids(cfg)
    cells = districts(cfg, grid)
    box = shapely.box(*cfg.bbox)
    union = shapely.union_all(cells)
    assert len(cells) == round(148.0 * 111.0 / 750.0)  # 2° × 1° at 48.5° N: 148 × 111 km, 750 km² each
    assert union.symmetric_difference(box).area < 1e-6 * box.area  # they cover the bbox,
    assert sum(cell.area for cell in cells) == pytest.approx(box.area, rel=1e-6)  # without overlapping
    areas = np.array([cell.area for cell in cells])
    assert areas.max() < 4 * areas.min()
    assert districts(cfg, grid) == cells  # the same draws every time


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    params = tiny_params(tmp_path)
    simulate(params.simulate, tmp_path / "a")
    simulate(params.simulate, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 * 9 - 1 + 1 + 4  # yearly rasters less the latency band's last year, Elevation, tables
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert mismatch == [] and errors == []
    simulate(replace(params, **{"simulate.seed": 1}).simulate, tmp_path / "c")
    assert not filecmp.cmp(tmp_path / "a" / "points.csv", tmp_path / "c" / "points.csv", shallow=False)


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The world `socmap simulate` writes with the repository's params.yaml (without the pictures)."""
    world = tmp_path_factory.mktemp("default") / "synthetic"
    oracle = simulate(load_params(ROOT / "params.yaml").simulate.world("synthetic"), world)
    return world, oracle


def test_default_world_is_the_pinned_bytes(default_world):
    """Every file of the default world has the sha256 it had before the family knobs existed
    (tests/default_world.sha256, written by that code with this environment's GDAL and pyarrow); the
    districts, written since, from a random stream of their own, the sha256 they had when they came."""
    world, _ = default_world
    pinned = dict(line.split("  ")[::-1] for line in (ROOT / "tests/default_world.sha256").read_text().splitlines())
    written = {p.relative_to(world).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in world.rglob("*") if p.is_file()}
    assert sorted(written) == sorted(pinned)
    assert [name for name in sorted(pinned) if written[name] != pinned[name]] == []


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


# ------------------------------------------------------------------------ the family of worlds


def clean_rows(world: Path) -> pd.DataFrame:
    """The clean rows of a world's survey table with their truth, and the row and column of the
    yearly EPSG:25832 grid of the tiny world that holds each."""
    points, truth = pd.read_csv(world / "points.csv"), pd.read_parquet(world / "truth.parquet")
    rows = points.join(truth[["truth", "cover"]])[truth["dirty"] == ""]
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True).transform(rows["GPS_LONG"], rows["GPS_LAT"])
    grid = make_grids(tiny_params(world).simulate)[0]
    row, col = grid.index(x, y)
    return rows.assign(row=row, col=col, t=rows["year"] - YEARS[0])


def log_ratio(world: Path, base: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The clean rows of `base` and log(truth in `world` / truth in `base`) at each: what the knob
    that tells the worlds apart adds to log SOC, all else (the same draws) equal."""
    rows, other = clean_rows(base), clean_rows(world)
    assert (rows["POINTID"] == other["POINTID"]).all()
    return rows, np.log(other["truth"].to_numpy() / rows["truth"].to_numpy())


def read(world: Path, name: str) -> np.ndarray:
    with rasterio.open(world / "rasters" / name) as src:
        return src.read(1)


def fit(target: np.ndarray, *features: np.ndarray) -> tuple[float, np.ndarray]:
    """R² and coefficients (intercept first) of a least-squares fit."""
    design = np.column_stack([np.ones_like(target), *features])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return 1 - np.var(target - design @ coef) / np.var(target), coef


def test_context_km_is_the_tpi_scale_in_odd_pixels(tiny_world, knob_world):
    scale = lambda km, res: replace(Params(), **{"simulate.context_km": km, "simulate.resolution_m": res,  # noqa: E731
                                                 "simulate.static_resolution_m": res / 2}).simulate.context_px
    # the nearest odd number of pixels, ties upwards: the default world keeps its 5 px
    assert [scale(km, 1000) for km in (5, 9, 7.5, 8, 3.9, 2)] == [5, 9, 7, 9, 3, 3]
    assert scale(5, 500) == 11
    rows, ratio = log_ratio(knob_world(context_km=15), tiny_world)
    elev = block_mean(read(tiny_world, "Elevation/static.tif").astype(float), 2)
    tpi = {px: terrain(elev, 1000.0, px)[0][rows["row"], rows["col"]] for px in (5, 9, 15)}
    r2, coef = fit(ratio, tpi[5], tpi[15])
    assert r2 > 0.98 and coef[1] > 0 > coef[2]  # the 5 km term is gone, a 15 km one (negative, as b_tpi) came
    assert fit(ratio, tpi[5], tpi[9])[0] < r2 - 0.1


def test_recent_history_weights_recent_years_more(tiny_world, knob_world):
    recent = replace(Params(), **{"simulate.history_years": 3, "simulate.history_weighting": "recent"}).simulate
    assert np.allclose(history_weights(recent), [4 / 7, 2 / 7, 1 / 7])
    assert np.allclose(history_weights(Params().simulate), [0.2] * 5)
    rows, ratio = log_ratio(knob_world(history_years=3, history_weighting="recent"), tiny_world)
    full = (rows["t"] >= 4).to_numpy()
    npp = np.stack([read(tiny_world, f"MODIS_NPP/{year}.tif") for year in YEARS])
    past = np.stack([npp[rows["t"][full] - k, rows["row"][full], rows["col"][full]] for k in range(5)])
    valid = (past != NODATA).all(axis=0)
    r2, coef = fit(ratio[full][valid], *past[:, valid])
    assert r2 > 0.98
    survey_year, one_before, two_before, three_before, four_before = coef[1:]
    assert survey_year > one_before > two_before and survey_year > 0 > max(three_before, four_before)


@pytest.mark.parametrize("weighting", ["uniform", "recent"])
def test_history_is_standardised_against_the_same_windows_of_every_pixel(weighting):
    """Taken at every pixel and year with a full window, the history term is exactly the reference it
    is standardised against: mean 0, sd 1."""
    cfg = replace(Params(), **{"simulate.history_years": 4, "simulate.history_weighting": weighting}).simulate
    npp = np.random.default_rng(0).normal(600.0, 100.0, (9, 3, 4)).cumsum(axis=0)  # a trend: order matters
    t, row, col = (a.ravel() for a in np.meshgrid(np.arange(3, 9), np.arange(3), np.arange(4), indexing="ij"))
    z = npp_history(npp, t, row, col, cfg)
    assert abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0)


def test_aspect_effect_puts_more_carbon_on_north_facing_slopes(tiny_world, knob_world):
    rows, ratio = log_ratio(knob_world(aspect_effect=0.2), tiny_world)
    elev = block_mean(read(tiny_world, "Elevation/static.tif").astype(float), 2)
    row, col = rows["row"].to_numpy(), rows["col"].to_numpy()
    inner = (row > 0) & (row < elev.shape[0] - 1) & (col > 0) & (col < elev.shape[1] - 1)
    row, col, ratio = row[inner], col[inner], ratio[inner]
    rises_to_south = elev[row + 1, col] - elev[row - 1, col]  # rows run north to south
    rises_to_east = elev[row, col + 1] - elev[row, col - 1]
    northness = rises_to_south / np.hypot(rises_to_south, rises_to_east)  # 1: the slope faces north
    assert np.corrcoef(ratio, northness)[0, 1] > 0.98
    assert ratio[northness > 0.5].mean() - ratio[northness < -0.5].mean() > 0.3  # about 0.2 × 2 sd


def test_interaction_turns_the_evapotranspiration_effect_by_cover(tiny_world, knob_world):
    rows, ratio = log_ratio(knob_world(interaction=0.25), tiny_world)
    et = np.stack([read(tiny_world, f"TotalEvapotranspiration/{year}.tif") for year in YEARS])
    here = et[rows["t"], rows["row"], rows["col"]]
    valid = here != NODATA
    corr = {cover: np.corrcoef(ratio[valid & (rows["cover"] == cover)], here[valid & (rows["cover"] == cover)])[0, 1]
            for cover in ("cropland", "forest")}
    assert corr["cropland"] > 0.98 and corr["forest"] < -0.98


def test_nonstationary_scales_the_history_slope_by_the_regional_field(tmp_path):
    """On a 200 km strip: the change is the history term times f(x), not one slope everywhere."""
    strip = {"simulate.bbox": [10.0, 48.20, 12.8, 48.33], "simulate.sites": 300}
    worlds = {}
    for name, knobs in (("base", {}), ("nonstationary", {"simulate.nonstationary": 0.6})):
        worlds[name] = tmp_path / name
        simulate(tiny_params(worlds[name], **strip, **knobs).simulate, worlds[name])
    cfg = tiny_params(tmp_path, **strip).simulate
    points, base, other = (pd.read_csv(worlds["base"] / "points.csv"), pd.read_parquet(worlds["base"] / "truth.parquet"),
                           pd.read_parquet(worlds["nonstationary"] / "truth.parquet"))
    keep = ((base["dirty"] == "") & (points["year"] >= YEARS[0] + 4)).to_numpy()
    ratio = np.log(other["truth"] / base["truth"]).to_numpy()[keep]
    grid = make_grids(cfg)[0]
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True).transform(
        points["GPS_LONG"][keep], points["GPS_LAT"][keep])
    row, col = grid.index(x, y)
    t = points["year"].to_numpy()[keep] - YEARS[0]
    npp = np.stack([read(worlds["base"], f"MODIS_NPP/{year}.tif") for year in YEARS])
    past = np.stack([npp[t - k, row, col] for k in range(5)])
    valid = (past != NODATA).all(axis=0)
    history, f = past.mean(axis=0)[valid], regional_field(cfg, grid)[row, col][valid]
    assert f.max() - f.min() > 1.0  # the strip spans highs and lows of the field
    assert fit(ratio[valid], f * history, f)[0] > 0.98
    assert fit(ratio[valid], history)[0] < 0.8


def test_latent_classes_offset_soc_and_show_only_in_two_bands(tiny_world, knob_world):
    world = knob_world(latent_classes=4)
    rows, ratio = log_ratio(world, tiny_world)
    offsets = np.unique(np.round(ratio, 9))
    assert 2 <= len(offsets) <= 4
    assert np.isin(np.round(offsets, 9), np.round(PARENT_OFFSET * np.linspace(-1, 1, 4), 9)).all()
    for year in YEARS[:-1]:
        for band in ("LST", "MODIS_NPP", "TotalEvapotranspiration"):
            assert filecmp.cmp(world / "rasters" / band / f"{year}.tif", tiny_world / "rasters" / band / f"{year}.tif",
                               shallow=False)
    shift = (read(world, "SoilEvaporation/2015.tif") - read(tiny_world, "SoilEvaporation/2015.tif"))[
        rows["row"], rows["col"]]
    valid = read(tiny_world, "SoilEvaporation/2015.tif")[rows["row"], rows["col"]] != NODATA
    signature = {offset: np.unique(np.round(shift[valid & (np.round(ratio, 9) == offset)], 2)) for offset in offsets}
    assert all(len(values) == 1 for values in signature.values())  # each class: one shift of the band
    assert len({values[0] for values in signature.values()}) == len(offsets)  # and a shift of its own


def test_lonlat_world_is_warped_onto_degrees_with_the_same_survey(tiny_world, knob_world):
    world = knob_world(crs="EPSG:4326")
    for name in ("points.csv", "truth.parquet", "oracle.json"):
        assert filecmp.cmp(world / name, tiny_world / name, shallow=False), name
    for path in (world / "rasters").rglob("*.tif"):
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 4326, path
            west, south, east, north = TINY_WORLD["simulate.bbox"]
            assert src.bounds.left <= west and src.bounds.right >= east and src.bounds.bottom <= south
            assert src.bounds.top >= north
    rows = clean_rows(tiny_world)
    lonlat = list(zip(rows["GPS_LONG"], rows["GPS_LAT"]))
    for name, res in (("Elevation/static.tif", 500.0), ("LST/2015.tif", 1000.0)):
        with rasterio.open(world / "rasters" / name) as warped, rasterio.open(tiny_world / "rasters" / name) as built:
            assert warped.res[0] == pytest.approx(res / 111319.49079327357)
            on_degrees = np.array([v[0] for v in warped.sample(lonlat)])
            on_metres, (row, col) = built.read(1), rowcol(built.transform, *Transformer.from_crs(
                "EPSG:4326", built.crs, always_xy=True).transform(rows["GPS_LONG"], rows["GPS_LAT"]))
        row, col = np.asarray(row), np.asarray(col)
        around = np.stack([on_metres[np.clip(row + dr, 0, on_metres.shape[0] - 1),
                                     np.clip(col + dc, 0, on_metres.shape[1] - 1)]
                           for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
        # nearest neighbour: each point reads the pixel it lies in, or one beside it
        assert (around == on_degrees).any(axis=0).all(), name
        assert (on_degrees == on_metres[row, col]).mean() > 0.35, name


def test_projected_crs_world_is_built_in_it(knob_world):
    world = knob_world(crs="EPSG:3035")
    rows = pd.read_csv(world / "points.csv")[pd.read_parquet(world / "truth.parquet")["dirty"] == ""]
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True).transform(rows["GPS_LONG"], rows["GPS_LAT"])
    for name in ("LAI/2015.tif", "Elevation/static.tif"):
        with rasterio.open(world / "rasters" / name) as src:
            assert src.crs.to_epsg() == 3035 and src.res[0] in (500.0, 1000.0)
            assert ((x > src.bounds.left) & (x < src.bounds.right) & (y > src.bounds.bottom) & (y < src.bounds.top)).all()


def test_multiband_layout_holds_each_year_in_one_file_of_named_layers(tiny_world, knob_world):
    world = knob_world(layout="multiband")
    files = sorted(p.relative_to(world / "rasters").as_posix() for p in (world / "rasters").rglob("*.tif"))
    assert files == sorted(["Elevation/static.tif"] + [f"{year}.tif" for year in YEARS])
    assert filecmp.cmp(world / "rasters/Elevation/static.tif", tiny_world / "rasters/Elevation/static.tif", shallow=False)
    for year in YEARS:
        with rasterio.open(world / "rasters" / f"{year}.tif") as src:
            expected = [b for b in YEARLY_BANDS if not (b == "SoilEvaporation" and year == YEARS[-1])]
            assert list(src.descriptions) == expected and src.nodata == NODATA
            for index, band in enumerate(expected, start=1):
                assert np.array_equal(src.read(index), read(tiny_world, f"{band}/{year}.tif")), (year, band)


def test_tiled_layout_mosaics_back_to_the_single_band_files(tiny_world, knob_world):
    world = knob_world(layout="tiled")
    singles = sorted(p.relative_to(tiny_world / "rasters") for p in (tiny_world / "rasters").rglob("*.tif"))
    tiles = sorted(p.relative_to(world / "rasters") for p in (world / "rasters").rglob("*.tif"))
    assert len(tiles) == 4 * len(singles)
    for single in singles:
        with rasterio.open(tiny_world / "rasters" / single) as src:
            whole, transform = src.read(1), src.transform
        mosaic = np.full_like(whole, np.nan)
        parts = sorted((world / "rasters" / single.parent).glob(f"{single.stem}-*.tif"))
        assert len(parts) == 4
        for part in parts:
            row, col = map(int, re.fullmatch(rf"{single.stem}-(\d{{10}})-(\d{{10}})", part.stem).groups())
            with rasterio.open(part) as src:
                assert src.transform == transform @ Affine.translation(col, row)
                mosaic[row:row + src.height, col:col + src.width] = src.read(1)
        assert np.array_equal(mosaic, whole), single
