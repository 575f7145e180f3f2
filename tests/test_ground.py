"""The working CRS: the grid's when it is projected in metres, else a transverse Mercator of the region whose
distances are never longer than on the ground, and over Bavaria at most 0.042 % shorter."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod, Transformer

from socmap.config import BAVARIA_BBOX
from socmap.ground import describe, is_metric, local_projection, scale_range, to_working, working_crs
from socmap.region import LONLAT, Region

BAVARIA = Region(LONLAT, bbox=BAVARIA_BBOX)


def pairs_in(bbox, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`n` pairs of points inside `bbox`, 100 m to 60 km apart (the split's and the variogram's distances),
    and their geodesic distance in metres."""
    west, south, east, north = bbox
    rng, geod = np.random.default_rng(seed), Geod(ellps="WGS84")
    lon, lat = rng.uniform(west, east, 4 * n), rng.uniform(south, north, 4 * n)
    distance = rng.uniform(100.0, 60_000.0, 4 * n)
    lon2, lat2, _ = geod.fwd(lon, lat, rng.uniform(0.0, 360.0, 4 * n), distance)
    inside = (lon2 > west) & (lon2 < east) & (lat2 > south) & (lat2 < north)
    return lon[inside][:n], lat[inside][:n], lon2[inside][:n], lat2[inside][:n], distance[inside][:n]


def test_over_bavaria_the_local_projection_shortens_distances_by_at_most_0_042_percent():
    crs = working_crs("EPSG:4326", BAVARIA)
    assert crs.name == "socmap local transverse Mercator (lon_0 11.405, lat_0 48.915, k_0 0.999583081)"
    low, high = scale_range(crs, BAVARIA)
    assert high <= 1.0 and low == pytest.approx(0.999583, abs=1e-6)
    lon, lat, lon2, lat2, metres = pairs_in(BAVARIA_BBOX, 5000)
    to_map = Transformer.from_crs(LONLAT, crs, always_xy=True)
    (x, y), (x2, y2) = to_map.transform(lon, lat), to_map.transform(lon2, lat2)
    ratio = np.hypot(x2 - x, y2 - y) / metres
    assert ratio.max() <= 1.0 and ratio.min() >= 0.99958  # never longer: the split's threshold holds on the ground
    # the UTM zone of the simulated world is off both ways, three times as much
    (u, v), (u2, v2) = (Transformer.from_crs(LONLAT, "EPSG:25832", always_xy=True).transform(a, b)
                        for a, b in ((lon, lat), (lon2, lat2)))
    utm = np.hypot(u2 - u, v2 - v) / metres
    assert utm.min() < 0.9997 and utm.max() > 1.001


def test_a_projected_grid_in_metres_is_its_own_working_crs():
    assert working_crs("EPSG:25832", BAVARIA) == CRS.from_epsg(25832)
    assert working_crs("EPSG:3035", BAVARIA) == CRS.from_epsg(3035)
    assert is_metric("EPSG:3035") and not is_metric("EPSG:4326") and not is_metric("EPSG:2263")  # US feet
    assert working_crs("EPSG:2263", BAVARIA).name.startswith("socmap local transverse Mercator")
    entry = describe("EPSG:25832", BAVARIA, "EPSG:25832")
    assert entry == {"crs": "EPSG:25832", "name": "ETRS89 / UTM zone 32N", "from": "the grid's CRS",
                     "scale": pytest.approx([0.9996, 1.0012473], abs=2e-7)}


def test_the_local_projection_is_described_so_that_it_can_be_rebuilt():
    crs = working_crs("EPSG:4326", BAVARIA)
    entry = describe(crs, BAVARIA, "EPSG:4326")
    assert entry["from"] == "a transverse Mercator centred on data.region (a lon/lat grid)"
    assert CRS.from_user_input(entry["crs"]) == crs and entry["scale"] == [0.9995831, 1.0]


def test_the_same_crs_moves_nothing_and_another_moves_points_there():
    x, y = np.array([600_000.0, 610_000.0]), np.array([5_400_000.0, 5_390_000.0])
    same = to_working(x, y, "EPSG:25832", CRS.from_epsg(25832))
    assert same[0] is x and same[1] is y
    crs = working_crs("EPSG:4326", BAVARIA)
    lon, lat = Transformer.from_crs("EPSG:25832", LONLAT, always_xy=True).transform(x, y)
    moved = to_working(np.asarray(lon), np.asarray(lat), "EPSG:4326", crs)
    expected = Transformer.from_crs(LONLAT, crs, always_xy=True).transform(lon, lat)
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    assert np.hypot(*np.diff(moved, axis=1)) == pytest.approx(np.hypot(*np.diff([x, y], axis=1)), rel=2e-4)


def test_a_boundary_region_is_centred_on_its_polygons():
    to_utm = Transformer.from_crs(LONLAT, "EPSG:25832", always_xy=True)
    corners = np.array([to_utm.transform(lon, lat) for lon, lat in ((10.0, 48.0), (12.0, 48.0), (12.0, 49.5),
                                                                    (10.0, 49.5))])
    region = Region(CRS.from_epsg(25832), polygon=shapely.Polygon(corners))
    west, south, east, north = region.lonlat_bounds()  # straight edges in UTM bulge a little in lon/lat
    assert west <= 10.0 and south <= 48.0 and east >= 12.0 and north >= 49.5
    assert (west, south, east, north) == pytest.approx((10.0, 48.0, 12.0, 49.5), abs=0.1)
    assert "lon_0 11" in working_crs("EPSG:4326", region).name


def test_a_region_too_wide_for_one_projection_is_warned_about(caplog):
    europe = Region(LONLAT, bbox=(-10.0, 35.0, 30.0, 70.0))
    with caplog.at_level(logging.WARNING, logger="socmap.ground"):
        crs = working_crs("EPSG:4326", europe)
    assert "distances in the working CRS" in caplog.text and "% short" in caplog.text
    low, high = scale_range(crs, europe)
    assert high <= 1.0 and low < 0.995
    assert local_projection(BAVARIA_BBOX, CRS.from_epsg(4326)) == working_crs("EPSG:4326", BAVARIA)


def test_the_map_kriges_lon_lat_pixels_where_the_sample_table_puts_their_rows(knob_world, tmp_path):
    """On a lon/lat grid the map moves its pixel centres into the sample stage's working CRS: a row and the
    centre of its pixel lie less than half a pixel's diagonal apart there."""
    import pandas as pd

    from conftest import tiny_params
    from socmap.blocks import MapPlan
    from socmap.rasters import RasterCatalog
    from socmap.sample import sample

    params = tiny_params(knob_world(crs="EPSG:4326"))
    report = sample(params.data, params.sample, tmp_path)
    rows = pd.read_parquet(tmp_path / "samples.parquet")
    catalog, region = RasterCatalog.open(params.data), Region.from_config(params.data.region)
    plan = MapPlan.build(params, catalog, region)
    assert plan.working_crs == CRS.from_user_input(report["working_crs"]["crs"])
    grid = catalog.grid
    x, y = to_working(*grid.centres(0, 0, grid.height, grid.width), grid.crs, plan.working_crs)
    row, col = grid.index(rows["lon"].to_numpy(), rows["lat"].to_numpy())
    apart = np.hypot(x[row, col] - rows["x"], y[row, col] - rows["y"])
    half_diagonal = 0.5 * np.hypot(1000.0, 1000.0 * np.cos(np.radians(48.43)))
    assert 0 < apart.max() < half_diagonal and apart.mean() > 100  # centres, not the rows themselves
