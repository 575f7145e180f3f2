"""The study region: a lon/lat box or a boundary file in its own CRS, the same answer in every CRS."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin

from socmap.config import RegionConfig
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.region import Region

UTM = "EPSG:25832"
GRID = GridSpec(CRS.from_string(UTM), from_origin(600_000.0, 5_400_000.0, 1000.0, 1000.0), 10, 8)
TO_LONLAT = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def inside_boundary() -> np.ndarray:
    """bool [8, 10]: the GRID pixels whose centres lie inside `boundary_file`'s polygons."""
    expected = np.zeros((GRID.height, GRID.width), dtype=bool)
    expected[1:7, 2:8] = True  # centres 602 500..607 500 E, 5 398 500..5 393 500 N
    expected[3:5, 4:6] = False  # the hole
    expected[7, 0] = True  # the small square
    return expected


@pytest.fixture
def boundary_file(tmp_path):
    """A GeoPackage in UTM 32N: a 6 km square with a 2 km hole, and a 1 km square apart."""
    holed = shapely.Polygon([(602_000, 5_393_000), (608_000, 5_393_000), (608_000, 5_399_000),
                             (602_000, 5_399_000)],
                            holes=[[(604_000, 5_395_000), (606_000, 5_395_000), (606_000, 5_397_000),
                                    (604_000, 5_397_000)]])
    small = shapely.box(600_000, 5_392_000, 601_000, 5_393_000)
    path = tmp_path / "boundary.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb([holed, small]), [np.array(["main", "islet"])], fields=["name"],
                      geometry_type="Polygon", crs=UTM, driver="GPKG")
    return path


def test_a_bbox_holds_its_edges_and_nothing_beyond():
    region = Region.from_config(RegionConfig(bbox=(11.0, 48.0, 12.0, 49.0)))
    lon = np.array([11.5, 11.0, 12.0, 10.99, 11.5, np.nan])
    lat = np.array([48.5, 48.0, 49.0, 48.5, 49.01, 48.5])
    assert region.contains_lonlat(lon, lat).tolist() == [True, True, True, False, False, False]
    x, y = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform([11.5, 12.1], [48.5, 48.5])
    assert region.contains(x, y, UTM).tolist() == [True, False]


def test_a_boundary_file_holds_the_pixel_centres_of_its_polygons_in_any_crs(boundary_file):
    region = Region.from_config(RegionConfig(boundary=str(boundary_file)))
    assert region.crs.to_epsg() == 25832 and region.bbox is None
    x, y = GRID.centres(0, 0, GRID.height, GRID.width)
    np.testing.assert_array_equal(region.contains(x, y, UTM), inside_boundary())
    lon, lat = TO_LONLAT.transform(x, y)
    np.testing.assert_array_equal(region.contains_lonlat(lon, lat), inside_boundary())
    # an edge counts as inside, the hole does not
    assert region.contains([602_000.0, 605_000.0], [5_396_000.0, 5_396_000.0], UTM).tolist() == [True, False]


def test_a_mask_of_a_grid_window_is_the_window_of_the_whole_mask(boundary_file):
    region = Region.from_file(boundary_file)
    np.testing.assert_array_equal(region.mask(GRID, 0, 0, GRID.height, GRID.width), inside_boundary())
    window = region.mask(GRID, 2, 3, 4, 5)
    assert window.shape == (4, 5)
    np.testing.assert_array_equal(window, inside_boundary()[2:6, 3:8])
    assert window.sum() == 16  # 20 pixels, 4 of them in the hole


def test_the_outline_has_every_ring_densified_onto_the_real_edges(boundary_file):
    region = Region.from_file(boundary_file)
    rings = region.outline("EPSG:4326")
    assert len(rings) == 3  # the square's exterior, its hole, the small square
    step = (24_000 + 8_000 + 4_000) / 4000  # the total edge length over 4000, in metres
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    bounds = []
    for lon, lat in rings:
        x, y = to_utm.transform(lon, lat)
        west, south, east, north = np.round([x.min(), y.min(), x.max(), y.max()], 3)
        bounds.append((west, south, east, north))
        assert len(x) == 4 * int(np.ceil((east - west) / step)) + 1  # each side of the square cut into ≤ step
        assert np.hypot(np.diff(x), np.diff(y)).max() <= step + 1e-6
        on_edge = np.minimum(np.minimum(np.abs(x - west), np.abs(x - east)),
                             np.minimum(np.abs(y - south), np.abs(y - north)))
        assert on_edge.max() < 1e-4  # the densified points lie on the UTM edges, which bend in lon/lat
    assert sorted(bounds) == [(600_000, 5_392_000, 601_000, 5_393_000), (602_000, 5_393_000, 608_000, 5_399_000),
                              (604_000, 5_395_000, 606_000, 5_397_000)]


def test_a_bbox_outline_bends_in_another_crs():
    region = Region.from_config(RegionConfig(bbox=(11.0, 48.0, 12.0, 49.0)))
    (x, y), = region.outline(UTM)
    assert len(x) == 4001
    lon, lat = TO_LONLAT.transform(x, y)
    on_edge = np.minimum(np.minimum(np.abs(lon - 11.0), np.abs(lon - 12.0)),
                         np.minimum(np.abs(lat - 48.0), np.abs(lat - 49.0)))
    assert on_edge.max() < 1e-9
    north = np.isclose(lat, 49.0)
    x, y = x[north], y[north]
    ends = np.argmin(x), np.argmax(x)
    chord = y[ends[0]] + (y[ends[1]] - y[ends[0]]) * (x - x[ends[0]]) / (x[ends[1]] - x[ends[0]])
    # a parallel is an arc around the pole in UTM: 1° of it bulges about 120 m south of its chord
    assert north.sum() == 1001 and (y - chord).max() == pytest.approx(0.0, abs=1e-6)
    assert (y - chord).min() == pytest.approx(-120.6, abs=0.5)


def test_a_file_without_polygons_is_an_error_naming_it(tmp_path):
    path = tmp_path / "sites.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(shapely.points([[602_000.0, 5_393_000.0]])), [np.array([1])],
                      fields=["id"], geometry_type="Point", crs=UTM, driver="GPKG")
    with pytest.raises(SocmapError, match=r"data.region.boundary = '.*sites\.gpkg': holds no polygon \(found Point\)"):
        Region.from_file(path)


def test_a_file_without_crs_is_an_error_naming_it(tmp_path):
    path = tmp_path / "boundary.shp"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        pyogrio.raw.write(path, shapely.to_wkb([shapely.box(0, 0, 1, 1)]), [np.array([1])], fields=["id"],
                          geometry_type="Polygon", driver="ESRI Shapefile")
    assert not path.with_suffix(".prj").exists()
    with pytest.raises(SocmapError, match=r"data.region.boundary = '.*boundary\.shp': the file has no CRS"):
        Region.from_config(RegionConfig(boundary=str(path)))


def test_an_unreadable_or_missing_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "boundary.gpkg"
    path.write_text("not a GeoPackage")
    with pytest.raises(SocmapError, match=r"data.region.boundary = '.*boundary\.gpkg': not a readable vector file"):
        Region.from_file(path)
    with pytest.raises(SocmapError, match=r"data.region.boundary = '.*nope\.shp': file not found"):
        Region.from_file(tmp_path / "nope.shp")
