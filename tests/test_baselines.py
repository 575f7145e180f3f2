"""Baselines: the features they see, and that they fit on training rows and predict only test rows."""

from __future__ import annotations

import numpy as np
import pytest

from socmap.config import EvaluateConfig
from socmap.applicability import history_features
from socmap.baselines import (baseline_predictions, fit_forest, forest_mean, load_baselines, quantile_forest,
                              save_baselines, survey_year_features)
from socmap.errors import SocmapError
from socmap.metrics import r2_score


def coded_patches(n: int = 2, bands: int = 3, window: int = 3, years: int = 4) -> np.ndarray:
    """A patch whose value encodes (row, band, i, j, t) as row·1e4 + band·1e3 + i·100 + j·10 + t."""
    r, c, i, j, t = np.indices((n, bands, window, window, years))
    return (r * 1e4 + c * 1e3 + i * 100 + j * 10 + t).astype(np.float32)


def test_survey_year_features_are_the_centre_pixel_in_the_last_year():
    features = survey_year_features(coded_patches())
    assert features.shape == (2, 3)
    assert np.array_equal(features[1], [10000 + 0 + 113, 10000 + 1000 + 113, 10000 + 2000 + 113])


def test_history_features_hold_centre_window_mean_and_context():
    patches = coded_patches()
    static = np.array([True, False, False])
    features = history_features(patches, static)
    # centre: 1 static + 2×4 yearly; window mean: the same; centre − mean: 3 bands
    assert features.shape == (2, (1 + 8) * 2 + 3)
    row = features[0]
    assert row[0] == 113  # static band, centre, last year, once
    assert np.array_equal(row[1:9], [1110, 1111, 1112, 1113, 2110, 2111, 2112, 2113])
    assert np.allclose(row[9], 113)  # window mean of a static band: mean of i·100 + j·10 = 110, + t = 3
    assert np.allclose(row[-3:], 0.0)  # centre = window mean for this linear code


def test_forests_fit_training_rows_and_predict_only_test_rows():
    rng = np.random.default_rng(0)
    n, years = 600, 4
    patches = rng.normal(size=(n, 2, 3, 3, years)).astype(np.float32)
    # the target lives in the history (the first year's window mean), which the survey-year centre misses
    target = 20.0 + 15.0 * patches[:, 1, :, :, 0].mean(axis=(1, 2)) + rng.normal(0, 0.3, n)
    roles = np.where(np.arange(n) < 400, "train", np.where(np.arange(n) < 480, "stop", "test"))
    roles = np.stack([roles, roles])
    roles[1, :40] = "buffer"
    xy = np.random.default_rng(1).uniform(0, 1e5, (n, 2))
    cfg = EvaluateConfig(rf_trees=30, rf_min_samples_leaf=(1, 5, 20), seed=0, kriging="none")
    fitted = baseline_predictions(patches, np.array([False, False]), target, roles, cfg, xy)
    predictions, chosen = fitted.predictions, fitted.chosen
    assert list(predictions) == ["training_mean", "rf_survey_year", "rf_features", "qrf"]
    test = roles[0] == "test"
    for name, values in predictions.items():
        assert values.shape == (2, n) and np.isnan(values[:, ~test]).all() and np.isfinite(values[:, test]).all()
    lower, upper = fitted.bounds["qrf"]
    assert (lower[:, test] < predictions["qrf"][:, test]).mean() > 0.95 and (upper[:, test] > lower[:, test]).all()
    inside = (target[test] >= lower[0, test]) & (target[test] <= upper[0, test])
    assert 0.8 < inside.mean() <= 1.0  # its own nominal 0.9 interval, roughly
    assert np.allclose(predictions["training_mean"][0, test], target[:400].mean())
    assert np.allclose(predictions["training_mean"][1, test], target[40:400].mean())
    rich = r2_score(target[test], predictions["rf_features"][0, test])
    plain = r2_score(target[test], predictions["rf_survey_year"][0, test])
    assert rich > 0.6 and plain < 0.2
    assert all(leaf in (1, 5, 20) for leaf in chosen["rf_features"]["min_samples_leaf"])


def test_the_stage_file_gives_back_what_was_fitted_and_refuses_other_rows(tmp_path):
    rng = np.random.default_rng(2)
    patches, target = rng.normal(size=(60, 2, 3, 3, 2)).astype(np.float32), rng.uniform(5, 50, 60)
    roles = np.stack([np.where(np.arange(60) < 40, "train", np.where(np.arange(60) < 48, "stop", "test"))] * 2)
    roles[1, :5] = "buffer"
    fitted = baseline_predictions(patches, np.array([False, True]), target, roles,
                                  EvaluateConfig(rf_trees=5, rf_min_samples_leaf=(1, 5)), rng.uniform(0, 1e5, (60, 2)))
    row_ids = np.arange(60) + 7
    save_baselines(tmp_path / "baselines.npz", fitted, row_ids)
    back = load_baselines(tmp_path / "baselines.npz", row_ids, runs=2)
    assert list(back.predictions) == list(fitted.predictions) and back.chosen == fitted.chosen
    for name, values in fitted.predictions.items():
        np.testing.assert_array_equal(back.predictions[name], values)
    for got, want in zip(back.bounds["qrf"], fitted.bounds["qrf"]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(SocmapError, match=r"npz: its rows differ from those of .*samples.parquet; rerun `socmap"):
        load_baselines(tmp_path / "baselines.npz", row_ids[::-1], runs=2)
    with pytest.raises(SocmapError, match=r"its runs \(2\) differ from the 3 runs in models; rerun"):
        load_baselines(tmp_path / "baselines.npz", row_ids, runs=3)
    with pytest.raises(SocmapError, match="missing.npz: not found; run `socmap baselines`"):
        load_baselines(tmp_path / "missing.npz", row_ids, runs=2)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(SocmapError, match="broken.npz: not a socmap baselines file"):
        load_baselines(tmp_path / "broken.npz", row_ids, runs=2)


def test_leaf_size_is_chosen_on_the_rows_given_to_choose_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    y = 0.5 * x[:, 0] + rng.normal(0, 2.0, 500)  # mostly noise: large leaves generalise better
    _, leaf = fit_forest(x[:300], y[:300], x[300:], y[300:], trees=30, leaf_sizes=(1, 50), seed=0)
    assert leaf == 50
    model, leaf = fit_forest(x[:300], y[:300], x[300:], y[300:], trees=7, leaf_sizes=(3,), seed=0)
    assert leaf == 3 and model.n_estimators == 7
    with pytest.raises(SocmapError, match=r"evaluate.rf_min_samples_leaf = \[\]"):
        baseline_predictions(np.zeros((4, 1, 1, 1, 1)), np.array([False]), np.ones(4), np.array([["train"] * 4]),
                             EvaluateConfig(rf_trees=2, rf_min_samples_leaf=()), np.zeros((4, 2)))


def test_forest_predictions_are_the_same_bits_every_time():
    """Metrics and dvc.lock must not change between identical runs: no thread-order sums in predict."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(1500, 30)), rng.normal(size=1500)
    first, _ = fit_forest(x, y, x[:50], y[:50], 100, (5,), 0)
    again, _ = fit_forest(x, y, x[:50], y[:50], 100, (5,), 0)
    predictions = {model.predict(x[:400]).tobytes() for model in (first, again) for _ in range(5)}
    assert len(predictions) == 1


def test_one_quantile_forest_fit_serves_the_random_forest_and_the_qrf():
    """The quantile forest's trees are the random forest's: the same mean, the same out-of-bag residuals."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 8))
    y = 2.0 * x[:, 0] + rng.normal(size=600)
    plain, _ = fit_forest(x[:500], y[:500], x[500:], y[500:], 40, (5,), 3)
    shared, _ = fit_forest(x[:500], y[:500], x[500:], y[500:], 40, (5,), 3, quantiles=True)
    assert type(plain).__name__ == "RandomForestRegressor" and type(shared).__name__ == "RandomForestQuantileRegressor"
    np.testing.assert_array_equal(forest_mean(shared, x[500:]), plain.predict(x[500:]))
    np.testing.assert_array_equal(shared.oob_prediction_, plain.oob_prediction_)
    mean, lower, upper = quantile_forest(shared, x[500:], 0.9)
    assert np.all(lower <= upper) and np.corrcoef(mean, plain.predict(x[500:]))[0, 1] > 0.99


def test_kriged_forests_add_back_the_spatial_error_from_out_of_bag_residuals():
    """A target with a smooth spatial part that no band sees: kriging the forest's residuals recovers it."""
    rng = np.random.default_rng(0)
    n = 1200
    xy = rng.uniform(0, 100_000, (n, 2))
    patches = rng.normal(size=(n, 2, 3, 3, 2)).astype(np.float32)
    spatial = 8.0 * np.sin(xy[:, 0] / 15_000) * np.cos(xy[:, 1] / 15_000)
    target = 30.0 + 6.0 * patches[:, 0, 1, 1, -1] + spatial + rng.normal(0, 1.0, n)
    roles = np.where(np.arange(n) < 900, "train", np.where(np.arange(n) < 1000, "stop", "test"))[None]
    cfg = EvaluateConfig(rf_trees=60, rf_min_samples_leaf=(5,), seed=0, kriging="linear", kriging_neighbours=16)
    predictions = baseline_predictions(patches, np.array([False, False]), target, roles, cfg, xy).predictions
    assert list(predictions) == ["training_mean", "rf_survey_year", "rf_features", "rf_survey_year_kriged",
                                 "rf_features_kriged", "qrf"]
    test = roles[0] == "test"
    for name in ("rf_survey_year", "rf_features"):
        plain = r2_score(target[test], predictions[name][0, test])
        kriged = r2_score(target[test], predictions[f"{name}_kriged"][0, test])
        assert kriged > plain + 0.2 and np.isnan(predictions[f"{name}_kriged"][0, ~test]).all()


def test_the_forests_and_their_kriging_see_no_held_out_target():
    """Out-of-bag residuals come from the training rows alone: the test targets ×3 change no prediction."""
    rng = np.random.default_rng(2)
    n = 500
    xy = rng.uniform(0, 50_000, (n, 2))
    patches = rng.normal(size=(n, 2, 3, 3, 2)).astype(np.float32)
    target = 30.0 + 6.0 * patches[:, 0, 1, 1, -1] + 5.0 * np.sin(xy[:, 0] / 9_000) + rng.normal(0, 1.0, n)
    roles = np.where(np.arange(n) < 350, "train", np.where(np.arange(n) < 400, "stop", "test"))[None]
    cfg = EvaluateConfig(rf_trees=40, rf_min_samples_leaf=(5,), seed=0, kriging="log", kriging_neighbours=16)
    first = baseline_predictions(patches, np.array([False, False]), target, roles, cfg, xy)
    changed = np.where(roles[0] == "test", 3.0 * target, target)
    again = baseline_predictions(patches, np.array([False, False]), changed, roles, cfg, xy)
    for name, values in first.predictions.items():
        assert np.array_equal(values, again.predictions[name], equal_nan=True), name
    for a, b in zip(first.bounds["qrf"], again.bounds["qrf"]):
        assert np.array_equal(a, b, equal_nan=True)


def test_forests_fitted_in_worker_processes_are_the_forests_fitted_here():
    """The stage fits its forests in one process per core: the same predictions, bounds and leaf sizes,
    bit for bit, as fitted in this process on every core."""
    rng = np.random.default_rng(4)
    n = 400
    xy = rng.uniform(0, 50_000, (n, 2))
    patches = rng.normal(size=(n, 2, 3, 3, 2)).astype(np.float32)
    target = 30.0 + 6.0 * patches[:, 0, 1, 1, -1] + 5.0 * np.sin(xy[:, 0] / 9_000) + rng.normal(0, 1.0, n)
    roles = np.where(np.arange(n) < 280, "train", np.where(np.arange(n) < 330, "stop", "test"))
    roles = np.stack([roles, np.roll(roles, 70), np.roll(roles, 140)])
    cfg = EvaluateConfig(rf_trees=20, rf_min_samples_leaf=(1, 20), seed=0, kriging="log", kriging_neighbours=8)
    here = baseline_predictions(patches, np.array([False, True]), target, roles, cfg, xy)
    workers = baseline_predictions(patches, np.array([False, True]), target, roles, cfg, xy, workers=2)
    assert list(workers.predictions) == list(here.predictions)
    for name, values in here.predictions.items():
        assert np.isfinite(values[roles == "test"]).all() and np.array_equal(values, workers.predictions[name],
                                                                             equal_nan=True), name
    for a, b in zip(here.bounds["qrf"], workers.bounds["qrf"]):
        assert np.array_equal(a, b, equal_nan=True)
    assert workers.chosen == here.chosen and len(here.chosen["rf_features"]["min_samples_leaf"]) == 3
