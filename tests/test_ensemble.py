"""The ensemble that maps: each member kriged from its run's field as evaluate does, the mean, spread and
calibrated interval of a pixel, the change between two years."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mapped import YEARS, map_once, read
from socmap.errors import SocmapError
from socmap.intervals import prediction_interval
from socmap.rasters import RasterCatalog
from socmap.region import Region

def test_a_map_pixel_equals_the_kriged_ensemble_on_the_sample_patch_of_a_row_there(mapped, ensemble, calibration,
                                                                                  fields):
    root, params = mapped
    assert len(fields) == len(ensemble) and fields[0].space == "log"  # the default: evaluate.kriging = log
    samples = pd.read_parquet(root / "data/processed/samples.parquet")
    patches = np.load(root / "data/processed/patches.npy", mmap_mode="r")
    grid = RasterCatalog.open(params.data).grid
    checked = 0
    for year in YEARS:
        rows = np.flatnonzero(samples["year"].to_numpy() == year)
        members = np.stack([m.predict(patches[rows]) for m in ensemble])  # [M, n]
        values, _ = read(root / f"data/maps/soc_{year}.tif")
        row, col = grid.index(samples["x"].to_numpy()[rows], samples["y"].to_numpy()[rows])
        pixel = values[:, row, col]  # [4, n]
        mapped = pixel[0] != -9999.0
        # a row inside the region whose pixel centre is not (at the region's edge) is not mapped
        centre_x, centre_y = grid.centres(0, 0, grid.height, grid.width)
        centre_inside = Region.from_config(params.data.region).contains(centre_x[row, col], centre_y[row, col],
                                                                        grid.crs)
        np.testing.assert_array_equal(mapped, centre_inside)
        assert mapped.mean() > 0.8
        members, pixel, rows = members[:, mapped], pixel[:, mapped], rows[mapped]
        # each member kriged from its run's training residuals at the pixel centre, as evaluate does
        centres = np.stack([centre_x[row, col][mapped], centre_y[row, col][mapped]], axis=1)
        unkriged = members
        members = np.stack([f.correct(m, *f.krige(centres)) for f, m in zip(fields, members)])
        assert np.abs(members / unkriged - 1).max() > 0.01  # kriging moved the pixels
        kappa = np.mean([f.krige(centres)[1] for f in fields], axis=0)
        # the same patches (see below) in other batches: equal up to the model's float32 rounding
        np.testing.assert_allclose(pixel[0], members.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(pixel[1], members.std(axis=0, ddof=1), rtol=1e-5, atol=1e-5)
        lower, upper = prediction_interval(members.mean(axis=0), members.std(axis=0, ddof=1), calibration,
                                           kappa=kappa)
        np.testing.assert_allclose(pixel[2], lower, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(pixel[3], upper, rtol=1e-5, atol=1e-4)
        checked += len(rows)
    assert checked >= 40


def test_intervals_bracket_the_mean_and_change_is_the_difference_of_means(mapped):
    root, _ = mapped
    first, _ = read(root / "data/maps/soc_2018.tif")
    last, _ = read(root / "data/maps/soc_2020.tif")
    change, _ = read(root / "data/maps/soc_change_2018_2020.tif")
    mapped = last[0] != -9999.0
    assert (last[2][mapped] >= 0).all()
    assert (last[2][mapped] <= last[0][mapped]).all() and (last[0][mapped] <= last[3][mapped]).all()
    both = mapped & (first[0] != -9999.0)
    assert ((change[0] != -9999.0) == both).all()
    np.testing.assert_allclose(change[0][both], (last[0] - first[0])[both], atol=1e-4)
    assert (change[1][both] >= 0).all() and change[1][both].max() > 0


def test_kriging_fields_must_match_the_checkpoints(mapped, ensemble, calibration, fields, tmp_path):
    _, params = mapped
    with pytest.raises(SocmapError, match=r"kriging.npz: kriging fields of 1 run\(s\) for 2 checkpoints in models/; "
                                          r"rerun `socmap evaluate`"):
        map_once(params, ensemble, calibration, tmp_path, fields=fields[:1])
