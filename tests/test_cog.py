"""The maps as Cloud-Optimized GeoTIFFs: valid COGs on the reference grid, band descriptions and units, identity
tags; the folder written whole."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from mapped import YEARS, read
from socmap.blocks import Window
from socmap.cog import band_descriptions, write_maps
from socmap.grid import GridSpec
from socmap.rasters import RasterCatalog
from socmap.region import Region

def test_maps_are_valid_cogs_on_the_reference_grid_with_bands_units_and_identity(mapped):
    root, params = mapped
    catalog = RasterCatalog.open(params.data)
    names = [f"soc_{year}" for year in YEARS] + ["soc_change_2018_2020"]
    assert sorted(p.name for p in (root / "data/maps").iterdir()) == sorted(f"{n}.tif" for n in names)
    models = sorted((root / "models").glob("run_*.pt"))
    digest = hashlib.sha256("".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in models).encode())
    for name in names:
        path = root / "data/maps" / f"{name}.tif"
        valid, errors, warnings = cog_validate(path, quiet=True)
        assert valid and not errors and not warnings, (name, errors, warnings)
        values, meta = read(path)
        profile = meta["profile"]
        assert profile["crs"] == catalog.grid.crs and profile["crs"].to_epsg() == 25832
        assert profile["transform"] == catalog.grid.transform  # the tiny region covers the whole grid
        assert (profile["width"], profile["height"]) == (catalog.grid.width, catalog.grid.height)
        assert profile["dtype"] == "float32" and profile["nodata"] == -9999.0
        assert profile["tiled"] and profile["compress"] == "deflate"
        # the SOC bands in g/kg; the DI, the AOA and whether a change is detectable have no unit
        assert meta["units"] == ("g/kg",) * 4 + (None,) * (len(values) - 4)
        assert meta["tags"]["SOCMAP_MODELS_SHA256"] == digest.hexdigest()
        assert meta["tags"]["SOCMAP_MODELS"].startswith("run_0.pt:")
        assert json.loads(meta["tags"]["SOCMAP_PARAMS"])["map.years"] == YEARS
        assert json.loads(meta["tags"]["SOCMAP_PARAMS"])["data.rasters"]["dir"] == params.data.rasters.dir
        assert len(meta["tags"]["SOCMAP_PARAMS_SHA256"]) == 64
        inside = Region.from_config(params.data.region).mask(catalog.grid, 0, 0, catalog.grid.height,
                                                             catalog.grid.width)
        assert 0.7 < inside.mean() < 1.0  # the region's edge crosses the grid
        mapped = values != -9999.0
        assert not (mapped & ~inside).any(), name
        # every pixel inside is mapped, except a few whose window reaches off the grid (too little valid data)
        halo = params.sample.window_size // 2
        core = (slice(None), slice(halo, -halo), slice(halo, -halo))
        np.testing.assert_array_equal(mapped[core], np.broadcast_to(inside, mapped.shape)[core], err_msg=name)
    _, meta = read(root / "data/maps/soc_2020.tif")
    assert meta["descriptions"] == ("SOC mean", "SOC ensemble std", "SOC 90% interval lower",
                                    "SOC 90% interval upper", "dissimilarity index (DI)",
                                    "area of applicability (1 inside, 0 outside)")
    _, meta = read(root / "data/maps/soc_change_2018_2020.tif")
    assert meta["descriptions"] == ("SOC change 2018-2020 mean", "SOC change 2018-2020 ensemble std",
                                    "SOC change 2018-2020 90% interval lower",
                                    "SOC change 2018-2020 90% interval upper",
                                    "change 2018-2020 detectable at 90% (1: the interval excludes 0)",
                                    "dissimilarity index (DI), the larger of 2018 and 2020",
                                    "area of applicability (1 inside, 0 outside) in both years")


def test_band_descriptions_name_the_interval_and_the_change():
    descriptions = band_descriptions([2018, 2023], 0.8)
    assert descriptions == {"soc_2018": ["SOC mean", "SOC ensemble std", "SOC 80% interval lower",
                                         "SOC 80% interval upper"],
                            "soc_2023": ["SOC mean", "SOC ensemble std", "SOC 80% interval lower",
                                         "SOC 80% interval upper"],
                            "soc_change_2018_2023": ["SOC change 2018-2023 mean", "SOC change 2018-2023 ensemble std"]}
    trusted = band_descriptions([2018, 2023], 0.8, applicability=True, change_interval=True)
    assert trusted["soc_2023"][4:] == ["dissimilarity index (DI)", "area of applicability (1 inside, 0 outside)"]
    assert len(trusted["soc_change_2018_2023"]) == 7


def test_an_interrupted_write_leaves_the_last_complete_maps_and_no_scratch(tmp_path):
    grid = GridSpec(CRS.from_epsg(25832), from_origin(600_000.0, 5_400_000.0, 1000.0, 1000.0), 20, 20)
    window, names = Window(0, 0, 20, 20), {"soc_2020": ["SOC mean"]}

    def blocks(fail: bool):
        yield Window(0, 0, 10, 20), {"soc_2020": np.ones((1, 10, 20), dtype=np.float32)}
        if fail:
            raise KeyboardInterrupt
        yield Window(10, 0, 10, 20), {"soc_2020": np.full((1, 10, 20), 2.0, dtype=np.float32)}

    (path,) = write_maps(blocks(False), grid, window, tmp_path / "maps", names, {})
    with pytest.raises(KeyboardInterrupt):
        write_maps(blocks(True), grid, window, tmp_path / "maps", names, {})
    assert os.listdir(tmp_path) == ["maps"] and os.listdir(tmp_path / "maps") == ["soc_2020.tif"]
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1)[10:], 2.0)
