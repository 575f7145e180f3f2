"""The dissimilarity index and the area of applicability: DI 0 on training rows and growing away from them,
the threshold by hand, the bands' importance, the error profiles, and on the map: DI 0 at a training row's
pixel, a block of pixels with covariates outside training masked out of the AOA."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio

from mapped import read
from socmap import paths
from socmap.applicability import (Applicability, band_importance, error_profile, feature_bands, history_features,
                                  mean_distance, training_distance, whisker)
from socmap.config import replace
from socmap.correlation import ErrorCorrelation
from socmap.errors import SocmapError
from socmap.io import read_json
from socmap.rasters import RasterCatalog

from mapped import map_once


def toy_patches(values: np.ndarray, bands: int = 2, window: int = 3, steps: int = 2) -> np.ndarray:
    """Patches [N, bands, window, window, steps] with every value of row i equal to values[i] (band b: b·values)."""
    values = np.asarray(values, dtype=np.float32)
    return (values[:, None, None, None, None] * (1 + np.arange(bands))[None, :, None, None, None]
            * np.ones((1, 1, window, window, steps), dtype=np.float32))


def test_feature_bands_name_the_band_of_every_history_feature():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(4, 3, 3, 3, 4)).astype(np.float32)
    static = np.array([True, False, False])
    band = feature_bands(static, 4)
    assert band.shape == (history_features(patches, static).shape[1],)
    for changed in range(3):
        moved = patches.copy()
        moved[:, changed] += rng.normal(size=moved[:, changed].shape).astype(np.float32)
        differs = (history_features(moved, static) != history_features(patches, static)).any(axis=0)
        assert np.array_equal(differs, band == changed), changed


def test_dissimilarity_is_zero_on_a_training_row_and_grows_away_from_it():
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 10, 60)
    patches = toy_patches(values) + rng.normal(0, 0.3, (60, 2, 3, 3, 2)).astype(np.float32)
    roles = np.where(np.arange(60) < 45, "train", "val")[None]
    applicability, _ = Applicability.fit(history_features(patches, np.zeros(2, bool)), roles, np.array([1.0, 3.0]),
                                         np.zeros(2, bool), 2)
    assert np.allclose(applicability.dissimilarity(patches[:45]), 0.0, atol=1e-9)
    direction = rng.normal(size=patches[0].shape).astype(np.float32)
    di = applicability.dissimilarity(np.stack([patches[3] + step * direction for step in np.linspace(0, 30, 7)]))
    assert di[0] == pytest.approx(0.0, abs=1e-9) and (np.diff(di) > 0).all()


def test_the_threshold_is_the_upper_whisker_of_the_cross_validated_dissimilarity_by_hand():
    # one static band, a 1×1 window, one year: the features are (v, v, 0), so distances are |v_i − v_j| up to a
    # common factor, which the DI divides out
    train, val = np.arange(5.0), np.array([4.5, 5.0, 5.5, 6.0, 20.0])
    patches = toy_patches(np.concatenate([train, val]), bands=1, window=1, steps=1)
    roles = np.array([["train"] * 5 + ["val"] * 5])
    applicability, cv_di = Applicability.fit(history_features(patches, np.ones(1, bool)), roles, np.ones(1),
                                             np.ones(1, bool), 1)
    # the mean |i − j| over the 10 pairs of 0..4 is 20 / 10 = 2; each validation row's DI is its distance to 4 over 2
    np.testing.assert_allclose(cv_di, [0.25, 0.5, 0.75, 1.0, 8.0])
    # quartiles 0.5 and 1.0: the fence 1.0 + 1.5·0.5 = 1.75; the largest DI not above it is 1.0 (8.0 is an outlier)
    assert applicability.threshold == pytest.approx(1.0)
    assert applicability.dissimilarity(toy_patches(np.array([7.0]), bands=1, window=1, steps=1))[0] \
        == pytest.approx(1.5)  # (7 − 4) / 2: outside the AOA


def test_whisker_is_the_largest_value_within_the_fence_never_above_the_largest():
    assert whisker(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 100])) == 9  # quartiles 3.25, 7.75: fence 14.5
    assert whisker(np.array([1.0, 2.0, 3.0, 4.0])) == 4.0  # the fence (6.25) lies above every value


def test_mean_distance_by_hand():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert mean_distance(points) == pytest.approx((5 + 10 + 5) / 3)
    with pytest.raises(SocmapError, match="1 training row"):
        mean_distance(points[:1])


def test_training_distance_is_to_the_predicting_models_training_rows():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [9.0, 12.0]])
    roles = np.array([["train", "val", "test", "buffer"], ["val", "train", "test", "buffer"],
                      ["test", "buffer", "train", "train"]])
    # holdout (fold −1): every run's training rows; kfold: those of the runs that test the row (row 2:
    # runs 0 and 1, which trained on rows 0 and 1; row 0: run 2, on rows 2 and 3)
    np.testing.assert_allclose(training_distance(points, roles, np.array([2, 2, 0]), np.array([-1, 0, 1])),
                               [0.0, 5.0, 10.0])


class BandModel:
    """A model of band `band`'s centre pixel in the last year alone (the others do not matter)."""

    def __init__(self, band: int):
        self.band = band

    def predict(self, patches: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        centre = patches.shape[2] // 2
        return np.asarray(patches[:, self.band, centre, centre, -1], dtype=np.float64)


def test_permutation_importance_finds_the_band_the_ensemble_uses():
    rng = np.random.default_rng(2)
    patches = rng.normal(20, 5, size=(80, 3, 3, 3, 2)).astype(np.float32)
    targets = patches[:, 1, 1, 1, -1].astype(np.float64)
    roles = np.array([np.where(np.arange(80) % 4 == run, "val", "train") for run in range(2)])
    importance = band_importance([BandModel(1), BandModel(1)], patches, targets, roles, 16, 0)
    assert importance[0] == 0 and importance[2] == 0
    assert importance[1] > 20  # shuffling the band adds about twice its variance (2 · 25) to the squared error
    with pytest.raises(SocmapError, match="two validation rows"):
        band_importance([BandModel(1)], patches, targets, np.full((1, 80), "train"), 16, 0)


def test_applicability_round_trips_and_a_missing_file_says_what_to_run(tmp_path):
    patches = toy_patches(np.arange(10.0))
    roles = np.where(np.arange(10) < 7, "train", "val")[None]
    applicability, _ = Applicability.fit(history_features(patches, np.zeros(2, bool)), roles, np.ones(2),
                                         np.zeros(2, bool), 2)
    applicability.save(tmp_path / "applicability.npz")
    loaded = Applicability.load(tmp_path / "applicability.npz")
    assert loaded.threshold == applicability.threshold and loaded.mean_distance == applicability.mean_distance
    np.testing.assert_array_equal(loaded.dissimilarity(patches), applicability.dissimilarity(patches))
    with pytest.raises(SocmapError, match="applicability.npz: the area of applicability's reference not found; "
                                          "run `socmap evaluate` first"):
        Applicability.load(tmp_path / "missing" / "applicability.npz")


def test_error_profile_bins_equal_rows_and_scores_each():
    table = pd.DataFrame({"dissimilarity": np.arange(10.0)[::-1], "observed": 10.0, "ensemble": np.arange(10.0),
                          "lower": 9.0, "upper": np.where(np.arange(10) < 5, 11.0, 9.5)})
    profile = error_profile(table, "dissimilarity", 0.9, bins=2)
    assert profile["n"].tolist() == [5, 5]
    assert profile["dissimilarity"].tolist() == [2.0, 7.0]  # the median of each bin, lowest DI first
    # the low-DI bin holds the rows 5..9: errors −5..−1
    assert profile["rmse"].iloc[0] == pytest.approx(np.sqrt(np.mean(np.arange(-5, 0) ** 2)))
    assert profile["picp"].tolist() == [0.0, 1.0] and profile["interval_width"].tolist() == [0.5, 2.0]
    assert profile["nominal"].tolist() == [0.9, 0.9]


# ------------------------------------------------------------------------------------------- on the map


def test_a_training_rows_pixel_has_dissimilarity_zero_on_the_map(mapped):
    root, params = mapped
    samples = pd.read_parquet(root / paths.SAMPLES)
    split = pd.read_parquet(root / paths.SPLIT)
    trained = split[split["role"] == "train"]["row_id"].unique()
    rows = samples[samples["row_id"].isin(trained) & (samples["year"] == 2020)]
    grid = RasterCatalog.open(params.data).grid
    row, col = grid.index(rows["x"].to_numpy(), rows["y"].to_numpy())
    values, meta = read(root / "data/maps/soc_2020.tif")
    assert meta["descriptions"][4:] == ("dissimilarity index (DI)", "area of applicability (1 inside, 0 outside)")
    mapped_here = values[0, row, col] != -9999.0
    assert mapped_here.sum() >= 5  # the tiny world's 2020 training rows
    # the map cuts the very patch the sample stage cut for the row: the same features, distance 0
    np.testing.assert_allclose(values[4, row, col][mapped_here], 0.0, atol=1e-6)
    assert (values[5, row, col][mapped_here] == 1).all()
    assert values[4][values[0] != -9999.0].max() > 0


def test_a_block_of_pixels_with_covariates_outside_training_is_outside_the_aoa(mapped, ensemble, calibration,
                                                                             fields, tmp_path):
    root, params = mapped
    rasters = tmp_path / "rasters"
    shutil.copytree(params.data.rasters.dir, rasters)
    block = (slice(8, 16), slice(8, 16))
    for year in (2018, 2019, 2020):  # the land surface 12 °C warmer there than anywhere in training
        with rasterio.open(rasters / "LST" / f"{year}.tif", "r+") as dst:
            values = dst.read(1)
            values[block] += 12.0
            dst.write(values, 1)
    hot = replace(params, **{"data.rasters.dir": str(rasters), "map.years": [2020]})
    applicability = Applicability.load(root / paths.APPLICABILITY)
    correlation = ErrorCorrelation.from_dict(read_json(root / paths.ERROR_CORRELATION, "evaluate"))
    (path,) = map_once(hot, ensemble, calibration, tmp_path / "maps", fields=fields, applicability=applicability,
                       correlation=correlation)
    values, _ = read(path)
    original, _ = read(root / "data/maps/soc_2020.tif")
    halo = params.sample.window_size // 2
    core = (slice(8 + halo, 16 - halo), slice(8 + halo, 16 - halo))  # whose whole window is warmer
    assert (values[5][core] == 0).all() and (values[4][core] > applicability.threshold).all()
    assert (original[5][core] == 1).mean() > 0.5  # inside before the change
    reach = np.zeros(values.shape[1:], dtype=bool)
    reach[8 - halo:16 + halo, 8 - halo:16 + halo] = True  # pixels whose window sees the block
    away = ~reach & (values[0] != -9999.0)
    # elsewhere the same, but where a window holds filled pixels (nodata, beyond the edge: the band mean moved)
    assert (values[5][away] == original[5][away]).mean() > 0.95
