"""Means over polygons: the file read onto the grid, a block's sums, the table, and on the default simulated
world the intervals' coverage of the true polygon means over hundreds of random polygons."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin

from mapped import make_once
from socmap import paths
from socmap.config import Params, load_params, replace
from socmap.correlation import ErrorCorrelation, SharedError, YearError, normal_quantile
from socmap.ensemble import Ensemble
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.simulate import pixel_truth, simulate
from socmap.zonal import Polygons, add_sums, polygon_table

ROOT = Path(__file__).resolve().parents[1]
GRID = GridSpec(CRS.from_epsg(25832), from_origin(600_000.0, 5_400_000.0, 1000.0, 1000.0), 10, 8)


def write_polygons(path, shapes, crs: str, names=None):
    """A GeoJSON of `shapes` (in `crs`) with a name each."""
    names = names or [f"P{i}" for i in range(len(shapes))]
    pyogrio.raw.write(path, shapely.to_wkb(shapes), geometry_type="Polygon", crs=crs, driver="GeoJSON",
                      fields=["name"], field_data=[np.array(names, dtype=object)])
    return path


def test_polygons_are_read_onto_the_grid_with_their_attributes(tmp_path):
    to_lonlat = lambda x, y: rasterio.warp.transform("EPSG:25832", "EPSG:4326", [x], [y])  # noqa: E731
    corners = [to_lonlat(600_000.0 + dx, 5_400_000.0 - dy) for dx, dy in
               ((2000, 2000), (6000, 2000), (6000, 5000), (2000, 5000))]
    lonlat = shapely.Polygon([(lon[0], lat[0]) for lon, lat in corners])
    path = write_polygons(tmp_path / "farms.geojson", [lonlat], "EPSG:4326", ["Hof"])
    polygons = Polygons.read(path, GRID)
    assert polygons.attributes.to_dict("records") == [{"polygon": 0, "name": "Hof"}]
    west, south, east, north = polygons.shapes[0].bounds
    assert (west, south, east, north) == pytest.approx((602_000, 5_395_000, 606_000, 5_398_000), abs=0.01)
    with pytest.raises(SocmapError, match=r"map.polygons = '.*missing.gpkg': file not found"):
        Polygons.read(tmp_path / "missing.gpkg", GRID)
    pyogrio.raw.write(tmp_path / "points.geojson", shapely.to_wkb([shapely.Point(11, 48)]), geometry_type="Point",
                      crs="EPSG:4326", driver="GeoJSON", fields=[], field_data=[])
    with pytest.raises(SocmapError, match="holds no polygon"):
        Polygons.read(tmp_path / "points.geojson", GRID)


def test_a_blocks_sums_count_its_mapped_pixels_inside_each_polygon(tmp_path):
    inner = shapely.box(602_000, 5_395_000, 606_000, 5_398_000)  # 4 × 3 pixel centres
    far = shapely.box(700_000, 5_300_000, 701_000, 5_301_000)
    polygons = Polygons.read(write_polygons(tmp_path / "p.geojson", [inner, far], "EPSG:25832"), GRID)
    rows, cols = np.mgrid[0:GRID.height, 0:GRID.width]
    x, y = GRID.centres(0, 0, GRID.height, GRID.width)
    members = np.stack([np.full((8, 10), 10.0), np.full((8, 10), 20.0)])
    members[:, 2, 3] = np.nan  # an unmapped pixel inside
    sigma = np.full((8, 10), 2.0)
    aoa = np.ones((8, 10), dtype=bool)
    aoa[3, 3] = False
    sums = polygons.block_sums(rows, cols, (x, y), (x + 1000.0, y), members, sigma, aoa)
    assert list(sums) == [0]  # the far polygon touches no pixel
    assert sums[0].pixels == 11 and sums[0].inside_aoa == 10
    np.testing.assert_allclose(sums[0].members, [110.0, 220.0])
    sample = np.concatenate(sums[0].sample, axis=1)
    assert sample.shape == (3, 11)  # a small polygon: every pixel sampled
    inside = np.isfinite(members).all(axis=0) & (x > 602_000) & (x < 606_000) & (y > 5_395_000) & (y < 5_398_000)
    np.testing.assert_array_equal(np.sort(sample[0]), np.sort(x[inside] + 1000.0))  # the sample's working x
    totals = {}
    add_sums(totals, {2020: sums})
    add_sums(totals, {2020: polygons.block_sums(rows, cols, (x, y), (x, y), members, sigma, aoa)})
    assert totals[2020][0].pixels == 22 and np.allclose(totals[2020][0].members, [220.0, 440.0])


def test_the_table_holds_each_polygons_mean_and_interval(tmp_path):
    inner = shapely.box(602_000, 5_395_000, 606_000, 5_398_000)
    polygons = Polygons.read(write_polygons(tmp_path / "p.geojson", [inner, inner.buffer(-5000)], "EPSG:25832"), GRID)
    rows, cols = np.mgrid[0:GRID.height, 0:GRID.width]
    x, y = GRID.centres(0, 0, GRID.height, GRID.width)
    members = np.stack([np.full((8, 10), 10.0), np.full((8, 10), 14.0), np.full((8, 10), 12.0)])
    sums = polygons.block_sums(rows, cols, (x, y), (x, y), members, np.full((8, 10), 2.0), None)
    calibration = {"interval": 0.9, "spread_weight": 1.0, "runs": 3}
    whole = ErrorCorrelation(SharedError(1.0, 0.0, 10), YearError(0.0, 1.6, 0.9, 0))
    table = polygon_table(polygons, sums, whole, calibration, (), with_aoa=False)
    first = table.iloc[0]
    assert first["pixels"] == 12 and first["mean"] == pytest.approx(12.0)
    assert first["ensemble_std"] == pytest.approx(2.0)
    # wholly shared errors: the mean's shared sd is the pixels' σ, not σ / √12; the members' part 2² / 3
    assert first["std"] == pytest.approx(math.sqrt(4.0 + 4.0 / 3))
    assert first["upper"] - first["mean"] == pytest.approx(normal_quantile(0.9) * first["std"])
    assert table.iloc[1]["pixels"] == 0 and np.isnan(table.iloc[1]["mean"])  # an empty polygon: no figures
    assert list(table.columns[:2]) == ["polygon", "name"] and "inside_aoa" not in table


def random_boxes(grid: GridSpec, count: int, rng: np.random.Generator) -> list:
    """Rectangles of 1 to 12 km a side at random places on the grid."""
    west, north = grid.transform.c, grid.transform.f
    east, south = west + grid.width * grid.res[0], north - grid.height * grid.res[1]
    boxes = []
    for _ in range(count):
        width, height = rng.uniform(1000.0, 12_000.0, 2)
        x0, y0 = rng.uniform(west, east - width), rng.uniform(south, north - height)
        boxes.append(shapely.box(x0, y0, x0 + width, y0 + height))
    return boxes


@pytest.fixture(scope="module")
def default_world(tmp_path_factory) -> tuple[Path, Params]:
    """The default world and pipeline of params.yaml (simulate → sample → split → train → baselines → evaluate), in a
    folder of its own: the survey density and models the map's intervals are meant for."""
    root = tmp_path_factory.mktemp("default-world")
    params = load_params(ROOT / "params.yaml")
    with contextlib.chdir(root):
        simulate(params.simulate.world(paths.DEFAULT_WORLD), f"data/{paths.DEFAULT_WORLD}")
        for stage in ("sample", "split", "train", "baselines", "evaluate"):
            importlib.import_module(f"socmap.{stage}").main(params)
    return root, params


def test_polygon_intervals_cover_the_true_polygon_means_at_the_nominal_rate(default_world, tmp_path):
    """900 random rectangles of 1 to 12 km on the default world: the 90 % intervals of their mean SOC cover
    the mean of the noise-free truth over their mapped pixels at 0.90 ± 0.05 (0.909 over 865 on the
    development machine); intervals of independent pixel errors would cover far less."""
    root, params = default_world
    year = params.map.years[-1]
    grid, truth = pixel_truth(params.simulate, year)
    path = write_polygons(tmp_path / "random.geojson", random_boxes(grid, 900, np.random.default_rng(0)),
                          grid.crs.to_string())
    with contextlib.chdir(root):
        ensemble = Ensemble.load(device="cpu")  # the pipeline's paths, under root
        made = make_once(replace(params, **{"map.polygons": str(path), "map.years": [year]}), ensemble,
                         tmp_path / "maps")
    table = made.polygons[year]
    with rasterio.open(made.maps[0]) as src:
        mapped_pixels = src.read(1) != src.nodata
        assert src.transform == grid.transform and mapped_pixels.shape == truth.shape
    x, y = grid.centres(0, 0, grid.height, grid.width)
    table["truth"] = [truth[mapped_pixels & shapely.intersects_xy(shape, x, y)].mean() if n else np.nan
                      for shape, n in zip(made.zones.shapes, table["pixels"])]
    scored = table[table["pixels"] > 0]
    assert len(scored) >= 800 and scored["pixels"].max() > 100
    covered = scored["truth"].between(scored["lower"], scored["upper"])
    assert abs(covered.mean() - 0.9) <= 0.05, covered.mean()
    # the mean of independent pixel errors, shrinking like 1/√n, would miss far more often
    naive = normal_quantile(0.9) * np.sqrt(scored["pixel_std"] ** 2 / scored["pixels"]
                                           + scored["ensemble_std"] ** 2 / params.train.num_runs)
    assert ((scored["truth"] - scored["mean"]).abs() <= naive).mean() < 0.8


def test_the_stage_writes_each_districts_mean_a_choropleth_and_the_map_metrics(mapped):
    root, params = mapped
    for year in (2018, 2020):
        table = pd.read_csv(root / paths.POLYGON_MEANS / f"soc_{year}.csv")
        assert list(table.columns) == ["polygon", "district", "pixels", "mean", "ensemble_std", "std", "lower",
                                       "upper", "pixel_std", "inside_aoa"]
        assert table["district"].tolist() == ["D001"]  # the tiny world is one district
        with rasterio.open(root / f"data/maps/soc_{year}.tif") as src:
            values = src.read(1, masked=True)
        assert table["pixels"].iloc[0] == values.count()
        assert table["mean"].iloc[0] == pytest.approx(float(values.mean()), rel=1e-5)
        assert table["lower"].iloc[0] < table["mean"].iloc[0] < table["upper"].iloc[0]
        assert (root / paths.MAP_PLOTS / f"polygons_{year}.png").stat().st_size > 10_000
    metrics = json.loads((root / paths.MAP_METRICS).read_text())
    assert set(metrics) == {"aoa_threshold", "aoa_inside", "maps", "polygons"}
    threshold = json.loads((root / "metrics/evaluate/metrics.json").read_text())["aoa_threshold"]
    assert metrics["aoa_threshold"] == threshold and metrics["polygons"]["count"] == 1
    with rasterio.open(root / "data/maps/soc_2020.tif") as src:
        aoa = src.read(6, masked=True)
    assert metrics["maps"]["soc_2020"]["aoa_inside"] == pytest.approx(float((aoa == 1).sum() / aoa.count()))
    assert 0 <= metrics["maps"]["soc_change_2018_2020"]["detectable"] <= 1


def test_a_map_without_kriging_of_a_single_member_still_has_its_trust_bands_and_polygon_intervals(mapped, ensemble,
                                                                                                    calibration,
                                                                                                    fields, tmp_path):
    root, params = mapped
    from socmap.applicability import Applicability
    from socmap.io import read_json

    applicability = Applicability.load(root / paths.APPLICABILITY)
    stored = ErrorCorrelation.from_dict(read_json(root / paths.ERROR_CORRELATION, "evaluate"))
    variograms = tuple((f.variogram.nugget, f.variogram.sill, f.variogram.range_km) for f in fields)
    unkriged = ErrorCorrelation(SharedError(stored.places.floor, stored.places.bias, stored.places.rows, variograms),
                                stored.years)
    made = make_once(replace(params, **{"map.years": [2020]}),
                     Ensemble(ensemble[:1], {**calibration, "runs": 1}, (), applicability, unkriged), tmp_path)
    with rasterio.open(made.maps[0]) as src:
        values = src.read(masked=True)
        assert src.count == 6
    assert values[1].mask.all()  # one member: no spread
    assert (values[4].compressed() >= 0).all() and set(np.unique(values[5].compressed())) <= {0.0, 1.0}
    table = made.polygons[2020]
    assert table["pixels"].iloc[0] == values[0].count() and table["ensemble_std"].iloc[0] == 0.0
    # the residuals' correlation, not independent pixels: far wider than σ / √n
    assert table["std"].iloc[0] > 3 * table["pixel_std"].iloc[0] / np.sqrt(table["pixels"].iloc[0])
