"""The raster catalog on tiny GeoTIFFs whose values encode their place: reads, warps, shifts, missing years,
broken files; the region on its pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from coded import CRS, TRANSFORM, H, W, YEARS, code, coded_params, write
from socmap.config import RegionConfig
from socmap.errors import SocmapError
from socmap.patches import extract_patches
from socmap.rasters import RasterCatalog
from socmap.region import Region


def test_read_stack_is_boundless_and_matches_extraction(coded):
    catalog = RasterCatalog.open(coded_params(coded).data)
    stack = catalog.read_stack([2012, 2014], -2, -3, 6, 8)  # [C, h, w, T], reaching off the grid
    assert stack.shape == (3, 6, 8, 2)
    assert np.isnan(stack[:, :2]).all() and np.isnan(stack[:, :, :3]).all()
    assert stack[0, 2, 3, 0] == code(2012, 0, 0) and stack[0, 5, 7, 1] == code(2014, 3, 4)
    assert (stack[1, 2:, 3:, 0] == stack[1, 2:, 3:, 1]).all()  # static repeated over T
    patch = extract_patches(catalog, np.array([6]), np.array([9]), np.array([2014]), 7, 3, fill=None)[0][0]
    np.testing.assert_array_equal(patch, catalog.read_stack([2012, 2013, 2014], 3, 6, 7, 7))


@pytest.mark.parametrize("how", ["nearest", "mean"])
def test_missing_band_year_is_filled_as_stated(coded, how):
    (coded / "B" / "2012.tif").unlink()
    (coded / "B" / "2014.tif").unlink()
    catalog = RasterCatalog.open(coded_params(coded, **{"data.rasters.missing_years": how}).data)
    stack = catalog.read_stack([2012, 2014], 0, 0, H, W)[2]
    rows, cols = np.mgrid[0:H, 0:W]
    if how == "nearest":  # 2011 and 2013 are equally near 2012: the earlier wins
        assert catalog.describe()["missing_band_years"] == {"B": {"2012": 2011, "2014": 2013}}
        np.testing.assert_array_equal(stack[..., 0], -code(2011, rows, cols))
        np.testing.assert_array_equal(stack[..., 1], -code(2013, rows, cols))
    else:
        mean = -np.mean([code(y, rows, cols) for y in (2010, 2011, 2013)], axis=0)
        np.testing.assert_allclose(stack[..., 0], mean, rtol=1e-6)
        np.testing.assert_allclose(stack[..., 1], mean, rtol=1e-6)


def test_raster_in_another_crs_gives_the_values_of_a_direct_warp(coded):
    """B exported by Google Earth Engine style: EPSG:4326, finer pixels, larger extent."""
    src_transform = from_origin(10.30, 48.78, 0.004, 0.003)
    lon_cols, lat_rows = np.meshgrid(np.arange(80), np.arange(70))
    smooth = (np.sin(lon_cols / 9.0) * 50 + lat_rows * 3.0).astype(np.float32)
    for year in YEARS:
        write(coded / "B" / f"{year}.tif", smooth + year, transform=src_transform, crs="EPSG:4326")
    catalog = RasterCatalog.open(coded_params(coded).data)
    assert {(w["band"], w["year"]) for w in catalog.warped} == {("B", y) for y in YEARS}
    assert catalog.warped[0]["differs_in"][0] == "crs" and catalog.warped[0]["resampling"] == "bilinear"
    direct = np.full((H, W), np.nan, dtype=np.float32)
    reproject(smooth + 2013, direct, src_transform=src_transform, src_crs="EPSG:4326", src_nodata=-9999.0,
              dst_transform=TRANSFORM, dst_crs=CRS, dst_nodata=np.nan, resampling=Resampling.bilinear)
    assert np.isfinite(direct).mean() > 0.5  # the test grid overlaps the export
    # GDAL stretches the bilinear kernel by the scale of the chunk it warps (here about 1/3), so two warps
    # of other chunks differ in the fourth digit; the warped view warps fixed blocks of the whole grid
    whole = catalog.read_stack([2013], 0, 0, H, W)[2, ..., 0]
    np.testing.assert_allclose(whole, direct, rtol=2e-4, equal_nan=True)
    patches, _ = extract_patches(catalog, np.array([6]), np.array([8]), np.array([2013]), 5, 1, fill=None)
    np.testing.assert_array_equal(patches[0, 2, ..., 0], whole[4:9, 6:11])
    # any window holds the same warped values on the grid (NaN beyond it) as the whole grid
    edge = catalog.read_stack([2013], -3, W - 6, 9, 9)[2, ..., 0]
    assert np.isnan(edge[:3]).all() and np.isnan(edge[:, 6:]).all()
    np.testing.assert_array_equal(edge[3:, :6], whole[:6, W - 6:])
    np.testing.assert_array_equal(catalog.read_stack([2013], 5, 3, 4, 7)[2, ..., 0], whole[5:9, 3:10])


def test_raster_on_the_grid_with_another_extent_is_read_shifted(coded):
    rows, cols = np.mgrid[0:H, 0:W]
    small = from_origin(600_000.0 + 2000, 5_400_000.0 - 3000, 1000.0, 1000.0)  # starts at row 3, col 2
    write(coded / "S" / "static.tif", (rows * 100.0 + cols + 0.25)[3:10, 2:12], transform=small)
    catalog = RasterCatalog.open(coded_params(coded).data)
    assert not catalog.warped and catalog.shifted[0]["offset"] == [-3, -2]
    s = catalog.read_stack([2012], 0, 0, H, W)[1, ..., 0]
    assert np.isnan(s[:3]).all() and np.isnan(s[10:]).all() and np.isnan(s[:, 12:]).all()
    np.testing.assert_array_equal(s[3:10, 2:12], (rows * 100.0 + cols + 0.25)[3:10, 2:12])


def test_reference_band_can_be_named(coded):
    rows, cols = np.mgrid[0:2 * H, 0:2 * W]
    write(coded / "S" / "static.tif", rows * 1.0, transform=from_origin(600_000.0, 5_400_000.0, 500.0, 500.0))
    catalog = RasterCatalog.open(coded_params(coded, **{"data.rasters.reference": "S"}).data)
    assert catalog.grid.res == (500.0, 500.0) and (catalog.grid.height, catalog.grid.width) == (2 * H, 2 * W)
    assert {w["band"] for w in catalog.warped} == {"A", "B"}
    assert json.dumps(catalog.describe())  # plain JSON for report.json


def test_corrupt_geotiff_is_an_error_naming_the_file(coded):
    bad = coded / "A" / "2012.tif"
    bad.write_bytes(b"II*\x00 this is not a GeoTIFF" * 10)
    with pytest.raises(SocmapError, match=r"A/2012\.tif.*band A year 2012.*not a readable raster"):
        RasterCatalog.open(coded_params(coded).data)


@pytest.mark.parametrize("damage", ["corrupt", "cut short"])
@pytest.mark.parametrize("band, year, res", [("A", 2012, 1000.0),  # on the grid: a window read
                                             ("B", 2013, 500.0)])  # finer: warped onto the grid
def test_a_raster_whose_tiles_fail_mid_read_is_an_error_naming_file_band_and_year(coded, damage, band, year, res):
    path = coded / band / f"{year}.tif"
    height, width = int(H * 1000 / res), int(W * 1000 / res)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32", crs=CRS,
                       transform=from_origin(600_000.0, 5_400_000.0, res, res), nodata=-9999.0, tiled=True,
                       blockxsize=16, blockysize=16, compress="deflate") as dst:
        dst.write(np.random.default_rng(0).normal(size=(height, width)).astype(np.float32), 1)
    with rasterio.open(path) as src:  # damage the last tile: the header before it stays whole
        last = f"{-(-width // 16) - 1}_{-(-height // 16) - 1}"
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{last}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{last}", "TIFF", bidx=1))
    assert offset + size == path.stat().st_size
    with open(path, "r+b") as f:
        if damage == "corrupt":
            f.seek(offset + 2)
            f.write(b"\xff" * 64)  # inside the deflate stream
        else:
            f.truncate(offset + size // 2)  # a copy that stopped half-way
    catalog = RasterCatalog.open(coded_params(coded).data)  # the header opens
    assert [w["band"] for w in catalog.warped] == ([] if band == "A" else ["B"])
    reason = "ZIPDecode:Decoding error" if damage == "corrupt" else "TIFFFillTile:Read error"
    with pytest.raises(SocmapError, match=rf"band {band} year {year} \(.*{band}/{year}\.tif\): cannot read the file "
                                          rf"\({reason} .*\); a corrupt or cut-short copy\? Replace it"):
        catalog.read_stack([year], 0, 0, H, W)
    with pytest.raises(SocmapError, match=rf"band {band} year {year} \("):
        catalog.fill_value(band)
    stack = catalog.read_stack([2011], 0, 0, H, W)  # the other files read as before
    assert stack[0, 5, 7, 0] == code(2011, 5, 7) and stack[2, 5, 7, 0] == -code(2011, 5, 7)


def test_missing_static_band_is_an_error(coded):
    (coded / "S" / "static.tif").unlink()
    with pytest.raises(SocmapError, match=r"static band S: file .*S/static\.tif not found"):
        RasterCatalog.open(coded_params(coded).data)


def test_band_missing_in_every_year_is_an_error(coded):
    for year in YEARS:
        (coded / "B" / f"{year}.tif").unlink()
    with pytest.raises(SocmapError, match=r"band B: no file for any year 2010\.\.2014"):
        RasterCatalog.open(coded_params(coded).data)


def test_raster_without_crs_is_an_error(coded):
    write(coded / "A" / "2013.tif", np.zeros((H, W)), crs=None)
    with pytest.raises(SocmapError, match=r"A/2013\.tif .*no CRS"):
        RasterCatalog.open(coded_params(coded).data)


def test_catalog_survives_pickling(coded):
    import pickle

    catalog = RasterCatalog.open(coded_params(coded).data)
    clone = pickle.loads(pickle.dumps(catalog))  # what a worker process receives
    np.testing.assert_array_equal(clone.read_stack([2014], 0, 0, H, W), catalog.read_stack([2014], 0, 0, H, W))


def test_region_bbox_and_boundary_agree_on_points_and_pixels(coded, tmp_path):
    catalog = RasterCatalog.open(coded_params(coded).data)
    grid = catalog.grid
    x, y = grid.centres(0, 0, H, W)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    bbox = [float(np.median(lon)), float(lat.min()) - 1, 20.0, float(np.median(lat))]
    box = Region.from_config(coded_params(coded, **{"data.region.bbox": bbox}).data.region)
    mask = box.mask(grid, 0, 0, H, W)
    np.testing.assert_array_equal(mask, box.contains_lonlat(lon, lat))
    assert 0.1 < mask.mean() < 0.5
    # the same box as a polygon file in the grid's CRS: pixel centres west of x0 and south of y0
    x0, y0 = x[0, 7] + 1.0, y[5, 0] + 1.0
    polygon = {"type": "FeatureCollection",
               "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::25832"}},
               "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
                   [[0, 0], [x0, 0], [x0, y0], [0, y0], [0, 0]]]}}]}
    path = tmp_path / "boundary.geojson"
    path.write_text(json.dumps(polygon))
    region = Region.from_config(RegionConfig(boundary=str(path)))
    expected = (x < x0) & (y < y0)
    np.testing.assert_array_equal(region.mask(grid, 0, 0, H, W), expected)
    np.testing.assert_array_equal(region.contains_lonlat(lon, lat), expected)
    rings = region.outline(CRS)
    assert len(rings) == 1 and np.allclose(rings[0][0].max(), x0)
    with pytest.raises(SocmapError, match="boundary.*file not found"):
        Region.from_config(RegionConfig(boundary=str(tmp_path / "nope.shp")))


def test_grid_index_puts_points_in_their_pixels(coded):
    grid = RasterCatalog.open(coded_params(coded).data).grid
    row, col = grid.index(np.array([600_000.5, 600_999.9, 601_000.0, 599_999.0, np.nan]),
                          np.array([5_399_999.5, 5_398_000.1, 5_389_000.0, 5_399_000.0, 0.0]))
    assert row[:3].tolist() == [0, 1, 11] and col[:3].tolist() == [0, 0, 1]
    assert grid.contains_index(row, col).tolist() == [True, True, True, False, False]


def test_a_working_grid_on_the_pixels_of_the_reference_is_read_through_shifted_windows(coded):
    extent = [602_000.0, 5_391_000.0, 610_000.0, 5_398_000.0]  # rows 2..8, columns 2..9 of the coded grid
    catalog = RasterCatalog.open(coded_params(coded, **{"data.grid.extent": extent}).data)
    assert catalog.grid.bounds == tuple(extent) and (catalog.grid.height, catalog.grid.width) == (7, 8)
    assert not catalog.warped and {s["offset"][0] for s in catalog.shifted} == {2}
    whole = RasterCatalog.open(coded_params(coded).data).read_stack(YEARS, 0, 0, H, W)
    np.testing.assert_array_equal(catalog.read_stack(YEARS, 0, 0, 7, 8), whole[:, 2:9, 2:10])


def test_a_working_grid_in_another_crs_warps_every_raster_onto_it(coded):
    params = coded_params(coded, **{"data.grid.crs": "EPSG:3035", "data.grid.resolution": 500.0,
                                    "data.rasters.resampling": "nearest"})
    catalog = RasterCatalog.open(params.data)
    grid = catalog.grid
    assert grid.crs == rasterio.crs.CRS.from_epsg(3035) and grid.res == (500.0, 500.0)
    assert grid.transform.c % 500 == 0 and grid.transform.f % 500 == 0  # on whole pixels, as gdalwarp -tap
    assert len(catalog.warped) == len(catalog.files) and catalog.warped[0]["differs_in"][0] == "crs"
    direct = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
    with rasterio.open(coded / "A" / "2013.tif") as src:
        reproject(src.read(1), direct, src_transform=src.transform, src_crs=src.crs, src_nodata=-9999.0,
                  dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.nearest)
    assert 0.5 < np.isfinite(direct).mean() < 1  # the coded grid, turned and cut into 500 m pixels
    np.testing.assert_array_equal(catalog.read_stack([2013], 0, 0, grid.height, grid.width)[0, ..., 0], direct)


def test_a_working_grid_in_another_crs_needs_its_pixel_size(coded):
    with pytest.raises(SocmapError, match=r"^data.grid.crs = EPSG:3035: another CRS than the reference band A's "
                                          r"\(EPSG:25832\); set data.grid.resolution, the pixel size in units of "
                                          r"EPSG:3035 \(the reference's pixels are about 10\d\d there\)$"):
        RasterCatalog.open(coded_params(coded, **{"data.grid.crs": "EPSG:3035"}).data)


def test_a_working_grid_that_repeats_the_reference_is_the_reference_and_a_coarser_one_keeps_its_corner(coded):
    reference = RasterCatalog.open(coded_params(coded).data).grid
    same = RasterCatalog.open(coded_params(coded, **{"data.grid.crs": CRS, "data.grid.resolution": 1000.0}).data)
    assert same.grid == reference and not same.warped
    coarse = RasterCatalog.open(coded_params(coded, **{"data.grid.resolution": 3000.0}).data).grid
    assert coarse.bounds[0] == reference.bounds[0] and coarse.bounds[3] == reference.bounds[3]
    assert (coarse.height, coarse.width) == (4, 6)  # 12 × 16 km covered by whole 3 km pixels
