"""The map stage: previews, nodata outside the region, the same map whatever the block size or the number of
processes, errors that name the file or key."""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest
from rio_cogeo.cogeo import cog_validate

from mapped import map_once, read
from socmap import mapping
from socmap.config import replace
from socmap.ensemble import Ensemble
from socmap.errors import SocmapError
from socmap.rasters import RasterCatalog
from socmap.region import Region


# ---------------------------------------------------------------------------------------- the stage


# ---------------------------------------------------------------------------------- streaming


def test_nodata_outside_the_region_and_block_size_does_not_change_the_map(mapped, ensemble, calibration, fields,
                                                                           tmp_path):
    root, params = mapped
    west, south, east, north = params.data.region.bbox
    small = replace(params, **{"data.region.bbox": [west, south, (west + east) / 2, north], "map.years": [2020]})
    (small_path,) = map_once(small, ensemble, calibration, tmp_path / "small", fields=fields)
    (whole_path,) = map_once(replace(params, **{"map.years": [2020], "map.block_size": 64}), ensemble,
                             calibration, tmp_path / "whole", fields=fields)
    whole, _ = read(whole_path)
    # blocks of 16 vs 64: other batches, so equal up to the model's float32 rounding
    # (an ensemble without the DI's reference maps the first four bands of the stage's)
    np.testing.assert_allclose(whole, read(root / "data/maps/soc_2020.tif")[0][:4], rtol=1e-5, atol=1e-5)
    values, meta = read(small_path)
    grid = RasterCatalog.open(params.data).grid
    assert meta["profile"]["width"] < grid.width and meta["profile"]["height"] == grid.height
    col_off = round((meta["profile"]["transform"].c - grid.transform.c) / grid.transform.a)
    inside = Region.from_config(small.data.region).mask(grid, 0, col_off, values.shape[1], values.shape[2])
    assert (values[:, ~inside] == -9999.0).all()
    np.testing.assert_allclose(values[:, inside], whole[:, :, col_off:col_off + values.shape[2]][:, inside],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_under_accelerate_write_the_same_maps(mapped, tmp_path):
    root, params = mapped
    shutil.copytree(root / "models", tmp_path / "models")
    shutil.copytree(root / "data/evaluate", tmp_path / "data/evaluate")
    with contextlib.chdir(tmp_path):
        mapping.main(replace(params, **{"map.num_processes": 2}))
    for name in ("soc_2018", "soc_2020", "soc_change_2018_2020"):
        ours, meta = read(tmp_path / "data/maps" / f"{name}.tif")
        np.testing.assert_array_equal(ours, read(root / "data/maps" / f"{name}.tif")[0])
        assert cog_validate(tmp_path / "data/maps" / f"{name}.tif", quiet=True)[0]
        assert meta["tags"] == read(root / "data/maps" / f"{name}.tif")[1]["tags"]  # the same identity
    assert (tmp_path / "plots/map/soc_2020.png").is_file()


# ------------------------------------------------------------------------------------------- errors


def test_user_errors_name_the_file_or_key(mapped, ensemble, calibration, tmp_path):
    root, params = mapped
    with pytest.raises(SocmapError, match="calibration.json: not found; run `socmap evaluate` first"):
        Ensemble.load(calibration=tmp_path / "calibration.json", models=root / "models")
    with pytest.raises(SocmapError, match="sample.window_size = 5, .* params.yaml has .* 7"):
        Ensemble(ensemble, calibration).check(params.data.bands, 7, params.sample.time_before)
    outside = replace(params, **{"data.region.bbox": [8.0, 47.0, 8.5, 47.5]})
    with pytest.raises(SocmapError, match="data.region lies outside the reference raster grid"):
        map_once(outside, ensemble, calibration, tmp_path / "outside")
