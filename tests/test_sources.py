"""Raster sources on the coded world: a file a year with bands as named layers, static bands in one file,
tiles read as one mosaic; each layout reads the values of the single-band files bit for bit, and each way
a band can be missing is a missing band-year or an error naming the pattern."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from coded import CRS, TRANSFORM, H, W, YEARS, coded_params
from socmap.errors import SocmapError
from socmap.rasters import RasterCatalog

MULTIBAND = {"data.rasters.yearly": "{year}.tif"}
TILED = {"data.rasters.yearly": "{band}/{year}-*.tif", "data.rasters.static": "{band}/static-*.tif"}


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def write_layers(path: Path, layers: list[tuple[str, np.ndarray]], transform=TRANSFORM, crs=CRS) -> None:
    """A float32 GeoTIFF of one layer per (description, values), nodata -9999."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = layers[0][1].shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=len(layers), dtype="float32",
                       crs=crs, transform=transform, nodata=-9999.0) as dst:
        for index, (name, values) in enumerate(layers, start=1):
            dst.write(values.astype(np.float32), index)
            dst.set_band_description(index, name)


def write_tiles(source: Path, folder: Path, stem: str, split=(5, 9)) -> list[Path]:
    """`source` cut into 2 × 2 tiles named as Earth Engine names them, `stem-{row:010d}-{col:010d}.tif`."""
    with rasterio.open(source) as src:
        values, transform = src.read(), src.transform
        names = src.descriptions
    tiles = []
    for r0, r1 in ((0, split[0]), (split[0], values.shape[1])):
        for c0, c1 in ((0, split[1]), (split[1], values.shape[2])):
            tiles.append(folder / f"{stem}-{r0:010d}-{c0:010d}.tif")
            write_layers(tiles[-1], [(name or "", layer[r0:r1, c0:c1]) for name, layer in zip(names, values)],
                         transform=transform @ rasterio.Affine.translation(c0, r0))
    return tiles


@pytest.fixture
def multiband(coded, tmp_path) -> Path:
    """The coded world as one file a year, layers B then A (not in data.bands order), and S alone."""
    root = tmp_path / "multiband"
    for year in YEARS:
        write_layers(root / f"{year}.tif", [("B", read(coded / "B" / f"{year}.tif")),
                                            ("A", read(coded / "A" / f"{year}.tif"))])
    shutil.copytree(coded / "S", root / "S")
    return root


def test_one_file_a_year_reads_each_band_from_the_layer_its_description_names(coded, multiband):
    single = RasterCatalog.open(coded_params(coded).data)
    catalog = RasterCatalog.open(coded_params(multiband, **MULTIBAND).data)
    assert (catalog.files[("A", 2012)].layer, catalog.files[("B", 2012)].layer) == (2, 1)
    assert catalog.files[("A", 2012)].source == catalog.files[("B", 2012)].source == str(multiband / "2012.tif")
    assert not catalog.warped and not catalog.missing
    np.testing.assert_array_equal(catalog.read_stack(YEARS, -2, -1, H + 4, W + 3),
                                  single.read_stack(YEARS, -2, -1, H + 4, W + 3))
    assert [catalog.fill_value(b) for b in ("A", "S", "B")] == [single.fill_value(b) for b in ("A", "S", "B")]


def test_a_layer_missing_in_one_year_is_a_missing_band_year(coded, multiband):
    write_layers(multiband / "2013.tif", [("A", read(coded / "A" / "2013.tif"))])
    catalog = RasterCatalog.open(coded_params(multiband, **MULTIBAND).data)
    assert catalog.missing == {"B": {2013: 2012}}
    assert catalog.describe()["missing_band_years"] == {"B": {"2013": 2012}}
    np.testing.assert_array_equal(catalog.read_stack([2013], 0, 0, H, W)[2, ..., 0], read(coded / "B" / "2012.tif"))


def test_a_band_no_layer_describes_is_an_error_listing_the_descriptions(coded, multiband):
    for year in YEARS:
        write_layers(multiband / f"{year}.tif", [("A", read(coded / "A" / f"{year}.tif")),
                                                 ("b", read(coded / "B" / f"{year}.tif"))])
    with pytest.raises(SocmapError, match=r"^band B: no layer described 'B' in the 5 file\(s\) of data\.rasters\."
                                          r"yearly = '\{year\}\.tif' \(2010\.\.2014\); descriptions present: A, b$"):
        RasterCatalog.open(coded_params(multiband, **MULTIBAND).data)


def test_two_layers_named_alike_are_an_error(coded, multiband):
    a = read(coded / "A" / "2012.tif")
    write_layers(multiband / "2012.tif", [("A", a), ("B", -a), ("A", a)])
    with pytest.raises(SocmapError, match=r"2012\.tif \(band A year 2012\): layers 1 and 3 are both described 'A'"):
        RasterCatalog.open(coded_params(multiband, **MULTIBAND).data)


def test_static_bands_share_one_file_by_description(coded, tmp_path):
    shutil.copytree(coded, tmp_path / "world")
    s = read(coded / "S" / "static.tif")
    write_layers(tmp_path / "world" / "static.tif", [("T", 2 * s), ("S", s)])
    params = coded_params(tmp_path / "world", **{"data.bands": ["A", "S", "T", "B"], "data.static_bands": ["S", "T"],
                                                  "data.rasters.static": "static.tif"})
    stack = RasterCatalog.open(params.data).read_stack([2012, 2014], 0, 0, H, W)
    np.testing.assert_array_equal(stack[1, ..., 1], s)
    np.testing.assert_array_equal(stack[2, ..., 0], 2 * s)
    wrong = coded_params(tmp_path / "world", **{"data.bands": ["A", "S", "U", "B"], "data.static_bands": ["S", "U"],
                                                 "data.rasters.static": "static.tif"})
    with pytest.raises(SocmapError, match=r"^static band U: no layer of .*world/static\.tif is described 'U' "
                                          r"\(data\.rasters\.static = 'static\.tif'\); descriptions present: T, S$"):
        RasterCatalog.open(wrong.data)


@pytest.fixture
def tiled(coded, tmp_path) -> Path:
    """Every file of the coded world as 2 × 2 Earth Engine-named tiles."""
    root = tmp_path / "tiled"
    for path in sorted(coded.rglob("*.tif")):
        write_tiles(path, root / path.parent.name, path.stem)
    return root


def test_tiles_are_read_as_one_mosaic_with_the_values_of_the_whole_file(coded, tiled):
    single = RasterCatalog.open(coded_params(coded).data)
    catalog = RasterCatalog.open(coded_params(tiled, **TILED).data)
    lai = catalog.files[("A", 2012)]
    assert lai.path == f"{tiled / 'A' / '2012-*.tif'} (4 tiles)" and lai.source.startswith("<VRTDataset")
    assert not catalog.warped and lai.grid == single.files[("A", 2012)].grid and lai.offset == (0, 0)
    np.testing.assert_array_equal(catalog.read_stack(YEARS, -2, -1, H + 4, W + 3),
                                  single.read_stack(YEARS, -2, -1, H + 4, W + 3))
    np.testing.assert_array_equal(catalog.read_stack([2011], 3, 7, 4, 4), single.read_stack([2011], 3, 7, 4, 4))


def test_tiled_multiband_exports_keep_their_layer_descriptions(coded, multiband, tmp_path):
    root = tmp_path / "tiled_multiband"
    for year in YEARS:
        write_tiles(multiband / f"{year}.tif", root, str(year))
    shutil.copytree(coded / "S", root / "S")
    catalog = RasterCatalog.open(coded_params(root, **{"data.rasters.yearly": "{year}-*.tif"}).data)
    lai = catalog.files[("A", 2013)]
    assert (lai.layer, lai.path) == (2, f"{root / '2013-*.tif'} (4 tiles)")
    np.testing.assert_array_equal(catalog.read_stack(YEARS, 0, 0, H, W),
                                  RasterCatalog.open(coded_params(coded).data).read_stack(YEARS, 0, 0, H, W))


@pytest.mark.parametrize("change, differs", [
    ({"transform": from_origin(600_000.0 + 9 * 1000 + 500, 5_400_000.0, 1000.0, 1000.0)}, "pixel alignment"),
    ({"transform": from_origin(600_000.0 + 9 * 1000, 5_400_000.0, 500.0, 500.0)}, "pixel size"),
    ({"crs": "EPSG:25833"}, "CRS"),
])
def test_a_tile_off_the_mosaic_grid_is_an_error_naming_it(coded, tiled, change, differs):
    tile = tiled / "A" / "2012-0000000000-0000000009.tif"
    values = read(tile)
    write_layers(tile, [("", values)], **{"transform": from_origin(600_000.0 + 9 * 1000, 5_400_000.0, 1000.0, 1000.0),
                                          **change})
    with pytest.raises(SocmapError, match=rf"A/2012-0000000000-0000000009\.tif \(tile of .*A/2012-\*\.tif\): its "
                                          rf"{differs} differs from .*A/2012-0000000000-0000000000\.tif's"):
        RasterCatalog.open(coded_params(tiled, **TILED).data)


def test_a_pattern_matching_nothing_is_an_error_naming_it(coded, tiled):
    for path in (tiled / "A").glob("*.tif"):
        path.unlink()
    with pytest.raises(SocmapError, match=r"^band A: no file for any year 2010\.\.2014 \(looked for .*A/2010-\*\.tif "
                                          r"and the like; data\.rasters\.yearly = '\{band\}/\{year\}-\*\.tif'\)$"):
        RasterCatalog.open(coded_params(tiled, **TILED).data)
    with pytest.raises(SocmapError, match=r"^static band S: no file matches .*S/static-\*\.tif \(data\.rasters\."
                                          r"static = '\{band\}/static-\*\.tif'\)$"):
        RasterCatalog.open(coded_params(coded, **{"data.rasters.static": "{band}/static-*.tif"}).data)


def test_a_band_year_without_tiles_is_a_missing_band_year(coded, tiled):
    for path in (tiled / "B").glob("2014-*.tif"):
        path.unlink()
    catalog = RasterCatalog.open(coded_params(tiled, **TILED).data)
    assert catalog.missing == {"B": {2014: 2013}}
