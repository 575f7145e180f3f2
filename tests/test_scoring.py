"""The evaluate stage's figures, recomputed with scikit-learn from predictions.csv: holdout, kfold, kriged, the
ceiling, the bootstrap; metrics.json as the headline of details.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_error, r2_score

from figures import BASELINES, RUNS, assert_figures, hand_made, sklearn_figures
from socmap import paths
from socmap.config import EvaluateConfig
from socmap.evaluate import write_outputs
from socmap.intervals import prediction_interval
from socmap.kriging import krige_runs
from socmap.scoring import bootstrap, headline, score
from socmap.truth import Truth


def written(tmp_path, mode: str, kriging: str = "none", truth: Truth | None = None):
    """Score a hand-made world and write the outputs: (details.json, predictions.csv, samples, roles, predictions);
    metrics.json is checked to be the headline of details.json."""
    samples, roles, predictions, baselines = hand_made(mode)
    predictions, added = krige_runs(samples[["x", "y"]].to_numpy(), samples["target"].to_numpy(), predictions,
                                    roles, kriging, 16)
    summary, table, calibration = score(samples, predictions, roles, baselines, mode,
                                        EvaluateConfig(interval=0.9, bootstrap=200, seed=0), truth, added)
    outline = [(np.array([0, 5e4, 5e4, 0, 0]), np.array([0, 0, 5e4, 5e4, 0]))]
    write_outputs(summary, table, calibration, samples, outline, [] if added is None else added.fields, tmp_path)
    details = json.loads((tmp_path / paths.EVALUATE_DETAILS).read_text())
    assert json.loads((tmp_path / paths.EVALUATE_METRICS / "metrics.json").read_text()) == headline(details)
    return details, pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "predictions.csv"), samples, roles, predictions


def test_holdout_metrics_equal_sklearn_recomputation_from_predictions_csv(tmp_path):
    metrics, table, samples, roles, predictions = written(tmp_path, "holdout")
    test = roles[0] == "test"
    assert table["row_id"].tolist() == samples["row_id"][test].tolist()
    assert list(table.columns[:6]) == ["row_id", "site_id", "year", "x", "y", "observed"]
    ensemble = table[[f"run_{k}" for k in range(RUNS)]].mean(axis=1)
    assert np.allclose(table["ensemble"], ensemble)
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    inside = (table["observed"] >= table["lower"]) & (table["observed"] <= table["upper"])
    assert metrics["picp"] == pytest.approx(inside.mean())
    assert metrics["interval_width"] == pytest.approx((table["upper"] - table["lower"]).mean())
    for k in range(RUNS):
        assert_figures(metrics["runs"][f"run_{k}"], sklearn_figures(table["observed"], table[f"run_{k}"]))
    r2s = [r2_score(table["observed"], table[f"run_{k}"]) for k in range(RUNS)]
    assert metrics["runs_mean"]["r2"] == pytest.approx(np.mean(r2s))
    assert metrics["runs_std"]["r2"] == pytest.approx(np.std(r2s, ddof=1))
    val_r2 = [r2_score(samples["target"][roles[k] == "val"], predictions[k, roles[k] == "val"]) for k in range(RUNS)]
    assert metrics["best_run"]["run"] == int(np.argmax(val_r2))
    assert headline(metrics)["val_r2"] == pytest.approx(np.mean(val_r2))  # what to choose on
    assert headline(metrics)["val_r2_std"] == pytest.approx(np.std(val_r2, ddof=1))
    for name in BASELINES:
        assert_figures(metrics["baselines"][name], sklearn_figures(table["observed"], table[name]))
        gain = metrics["r2"] - sklearn_figures(table["observed"], table[name])["r2"]
        assert metrics["baselines"][name]["r2_gain"] == pytest.approx(gain)
        gain = metrics["bootstrap"]["r2_gain"][name]
        assert 0 < gain["lo"] < metrics["baselines"][name]["r2_gain"] < gain["hi"]  # every baseline is far behind
    assert metrics["bootstrap"]["r2"]["lo"] < metrics["r2"] < metrics["bootstrap"]["r2"]["hi"]
    assert metrics["bootstrap"]["resamples"] == 200 and metrics["bootstrap"]["unit"] == "site"
    assert metrics["ceiling"]["skipped"] == "data/processed/truth.parquet has no rows: real data have no ceiling"
    assert metrics["kriging"] == {"space": "none"} and "unkriged" not in table
    import matplotlib
    import matplotlib.image

    placeholder = matplotlib.image.imread(tmp_path / paths.EVALUATE_PLOTS / "variogram.png")[..., :3]
    run_0 = 0.7 * np.array(matplotlib.colormaps["tab10"](0)[:3]) + 0.3
    assert (np.abs(placeholder - run_0).max(axis=-1) < 0.01).sum() == 0  # no run's points: it says there are none
    assert (placeholder.max(axis=-1) < 0.3).sum() > 100  # its text
    assert metrics["mode"] == "holdout" and metrics["coverage"]["0.9"] == metrics["picp"]
    # what the map stage applies: the calibration file rebuilds the bounds of the csv
    calibration = json.loads((tmp_path / paths.CALIBRATION).read_text())
    lower, upper = prediction_interval(table["ensemble"], table["std"], calibration)
    assert np.allclose(lower, table["lower"]) and np.allclose(upper, table["upper"]) and (lower >= 0).all()
    scatter = matplotlib.image.imread(tmp_path / paths.EVALUATE_PLOTS / "predicted_vs_observed.png")[..., :3]
    dot = np.array([0x1F, 0x5F, 0xA8]) / 255 * 0.85 + 0.15  # a test row's colour, alpha 0.85 over white
    assert (np.abs(scatter - dot).max(axis=-1) < 0.01).sum() > 5 * len(table)  # a disc of about 13 pixels a row
    residual_map = matplotlib.image.imread(tmp_path / paths.EVALUATE_PLOTS / "residual_map.png")[..., :3]
    residual_map = residual_map[:, :int(0.7 * residual_map.shape[1])]  # the map, left of the colour bar
    over = residual_map[..., 0] - residual_map[..., 2] > 0.3  # red
    under = residual_map[..., 2] - residual_map[..., 0] > 0.3  # blue
    assert over.sum() > 50 and under.sum() > 50  # test rows of both signs, each a disc of about 28 pixels
    coverage = pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "coverage.csv").set_index("nominal")
    assert coverage.loc[0.9, "observed"] == pytest.approx(metrics["picp"])
    assert coverage.loc[0.9, "width"] == pytest.approx(metrics["interval_width"])
    by_year = pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "error_by_year.csv")
    assert by_year["n"].sum() == len(table)
    first = table[table["year"] == by_year["year"][0]]
    assert by_year["rmse"][0] == pytest.approx(np.sqrt(mean_squared_error(first["observed"], first["ensemble"])))


def test_kfold_pools_out_of_fold_predictions(tmp_path):
    metrics, table, samples, roles, predictions = written(tmp_path, "kfold")
    assert len(table) == len(samples) and metrics["n"] == len(samples)  # every row is test once
    assert metrics["mode"] == "kfold"
    for k in range(RUNS):
        fold = table[table["fold"] == k]
        assert fold[[f"run_{j}" for j in range(RUNS) if j != k]].isna().all().all()
        assert np.allclose(fold["ensemble"], fold[f"run_{k}"])
        assert_figures(metrics["runs"][f"run_{k}"], sklearn_figures(fold["observed"], fold[f"run_{k}"]))
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    row = 5
    others = np.delete(predictions[:, row], table["fold"][row])
    assert table["std"][row] == pytest.approx(np.std(others, ddof=1))


@pytest.mark.parametrize("mode", ["holdout", "kfold"])
def test_kriged_figures_and_the_unkriged_ensemble_recompute_from_predictions_csv(tmp_path, mode):
    metrics, table, samples, roles, predictions = written(tmp_path, mode, kriging="log")
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    assert_figures(metrics["kriging"]["unkriged"], sklearn_figures(table["observed"], table["unkriged"]))
    assert not np.allclose(table["unkriged"], table["ensemble"])
    if mode == "holdout":
        raw = hand_made(mode)[2]
        assert np.allclose(table["unkriged"], raw[:, roles[0] == "test"].mean(axis=0))
    # the intervals, rebuilt from the csv with the calibration file: they scale with the kriging variance
    calibration = json.loads((tmp_path / paths.CALIBRATION).read_text())
    lower, upper = prediction_interval(table["ensemble"], table["std"], calibration, ensemble=mode == "holdout",
                                       kappa=table["kriging_variance"])
    assert np.allclose(lower, table["lower"]) and np.allclose(upper, table["upper"])
    assert 0 < table["kriging_variance"].min() < table["kriging_variance"].max() <= 1
    inside = (table["observed"] >= table["lower"]) & (table["observed"] <= table["upper"])
    assert metrics["picp"] == pytest.approx(inside.mean())
    import matplotlib
    import matplotlib.image

    picture = matplotlib.image.imread(tmp_path / paths.EVALUATE_PLOTS / "variogram.png")[..., :3]
    dots = [0.7 * np.array(matplotlib.colormaps["tab10"](k)[:3]) + 0.3 for k in range(RUNS + 1)]  # alpha 0.7
    drawn = [(np.abs(picture - dot).max(axis=-1) < 0.01).sum() for dot in dots]
    assert min(drawn[:RUNS]) > 50 and drawn[RUNS] == 0  # each run's points in its own colour, no fourth run
    variograms = metrics["kriging"]["variograms"]
    assert metrics["kriging"]["space"] == "log" and set(variograms) == {f"run_{k}" for k in range(RUNS)}
    assert all(v["rows"] == (roles[k] == "train").sum() for k, v in enumerate(variograms.values()))


def test_ceiling_from_truth(tmp_path):
    samples, *_ = hand_made("holdout")
    truth = pd.DataFrame({"row_id": samples["row_id"], "truth": samples["target"] * 0.9,
                          "truth_covariates": samples["target"] * 0.8 + 3})
    metrics, table, *_ = written(tmp_path, "holdout", truth=Truth(truth, {"r2_full": 0.9, "r2_covariates": 0.7}))
    ceiling = metrics["ceiling"]
    assert_figures(ceiling["truth"], sklearn_figures(table["observed"], table["truth"]))
    assert_figures(ceiling["truth_covariates"], sklearn_figures(table["observed"], table["truth_covariates"]))
    assert ceiling["oracle_r2_full"] == 0.9 and ceiling["oracle_r2_covariates"] == 0.7


def leaves(tree: dict, prefix: str = "") -> dict:
    """The columns `dvc exp show` makes of a metrics file: dotted key -> value."""
    flat = {}
    for key, value in tree.items():
        flat.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_metrics_json_holds_the_figures_a_user_compares_and_every_interval_as_lo_and_hi(tmp_path):
    samples, *_ = hand_made("holdout")
    truth = pd.DataFrame({"row_id": samples["row_id"], "truth": samples["target"] * 0.9,
                          "truth_covariates": samples["target"] * 0.8 + 3})
    details, table, *_ = written(tmp_path, "holdout", kriging="log", truth=Truth(truth, None))
    columns = leaves(json.loads((tmp_path / paths.EVALUATE_METRICS / "metrics.json").read_text()))
    figures = ["r2", "r2_pearson", "mae", "rmse", "bias", "rpiq", "ccc", "picp", "interval_width"]
    assert set(columns) == {"mode", "n", "interval", *figures, "val_r2", "val_r2_std", "runs_r2.mean", "runs_r2.std",
                            "unkriged.r2", "unkriged.rmse", "bootstrap.unit", "bootstrap.resamples",
                            "bootstrap.level", "bootstrap.r2.lo", "bootstrap.r2.hi", "bootstrap.rmse.lo",
                            "bootstrap.rmse.hi", "ceiling.truth_r2", "ceiling.truth_covariates_r2",
                            *(f"baselines.{name}.{key}" for name in BASELINES for key in ("r2", "rmse", "r2_gain")),
                            *(f"bootstrap.r2_gain.{name}.{end}" for name in BASELINES for end in ("lo", "hi"))}
    assert not any(isinstance(value, list) for value in columns.values())  # DVC drops lists
    assert columns["bootstrap.unit"] == "site" and columns["bootstrap.level"] == 0.95
    assert columns["bootstrap.r2.lo"] < columns["r2"] < columns["bootstrap.r2.hi"]
    assert columns["unkriged.r2"] == pytest.approx(r2_score(table["observed"], table["unkriged"]))
    assert columns["ceiling.truth_r2"] == pytest.approx(r2_score(table["observed"], table["truth"]))
    assert len(leaves(details)) > 4 * len(columns)  # the per-run, per-variogram and coverage detail stays there


def test_bootstrap_resamples_sites_reproducibly():
    rng = np.random.default_rng(0)
    observed = rng.normal(20, 5, 200)
    predicted = observed + rng.normal(0, 3, 200)
    sites = np.arange(200) // 4
    first, again = bootstrap(observed, predicted, sites, 300, 7), bootstrap(observed, predicted, sites, 300, 7)
    assert first == again and first["unit"] == "site" and first["level"] == 0.95
    assert first["rmse"]["lo"] < 3.0 < first["rmse"]["hi"]
    assert bootstrap(observed, predicted, sites, 0, 7) == {"unit": "site", "resamples": 0}
    worse, same = observed + rng.normal(0, 6, 200), predicted.copy()
    paired = bootstrap(observed, predicted, sites, 300, 7, {"worse": worse, "same": same})
    assert paired["r2"] == first["r2"] and paired["rmse"] == first["rmse"]  # the same resamples
    assert 0 < paired["r2_gain"]["worse"]["lo"] < paired["r2_gain"]["worse"]["hi"]
    assert paired["r2_gain"]["same"] == {"lo": 0.0, "hi": 0.0}
