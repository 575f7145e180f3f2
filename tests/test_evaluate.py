"""Evaluate stage: figures recomputed independently from predictions.csv, both split modes, the stage end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from socmap.baselines import baseline_names
from socmap.errors import SocmapError
from socmap.config import EvaluateConfig
from socmap import paths
from socmap.evaluate import roles_matrix, write_outputs
from socmap.intervals import prediction_interval
from socmap.kriging import krige_runs, load_fields
from socmap.scoring import Truth, bootstrap, score

RUNS = 3
BASELINES = baseline_names("log")


def sklearn_figures(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """The regression figures as socmap.metrics defines them, computed with scikit-learn, scipy and numpy instead."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    rmse = np.sqrt(mean_squared_error(observed, predicted))
    q1, q3 = np.percentile(observed, [25, 75])
    ccc = (2 * np.cov(observed, predicted, bias=True)[0, 1]
           / (observed.var() + predicted.var() + (observed.mean() - predicted.mean()) ** 2))
    pearson = pearsonr(observed, predicted)[0] if np.ptp(predicted) > 0 else np.nan
    return {"r2": r2_score(observed, predicted), "r2_pearson": pearson**2,
            "mae": mean_absolute_error(observed, predicted), "rmse": rmse,
            "bias": np.mean(predicted - observed), "rpiq": (q3 - q1) / rmse, "ccc": ccc, "n": observed.size}


def assert_figures(stored: dict, expected: dict, skip: tuple[str, ...] = ()) -> None:
    for key, value in expected.items():
        if key in skip:
            continue
        assert stored[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


def hand_made(mode: str, rows: int = 300, seed: int = 0):
    """Samples, roles [K, N], predictions [K, N] and baselines for a small world with revisited sites."""
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(rows // 2), 2)[:rows]
    target = rng.lognormal(3.0, 0.5, rows)
    samples = pd.DataFrame({"row_id": np.arange(rows) * 3 + 7, "site_id": site, "x": rng.uniform(0, 5e4, rows),
                            "y": rng.uniform(0, 5e4, rows), "year": 2015 + site % 4, "target": target})
    roles = np.full((RUNS, rows), "train", dtype=object)
    if mode == "holdout":
        roles[:, site < 20] = "test"
        roles[:, (site >= 20) & (site < 25)] = "buffer"
        for k in range(RUNS):
            roles[k, (site >= 25 + 15 * k) & (site < 40 + 15 * k)] = "val"
    else:
        fold = site % RUNS
        for k in range(RUNS):
            roles[k, fold == k] = "test"
            roles[k, (fold == (k + 1) % RUNS) & (site % 5 == 0)] = "val"
    predictions = target + rng.normal(0, 0.25 * target, (RUNS, rows)) + rng.normal(0, 1.0, (RUNS, rows))
    test = roles == "test"
    baselines = {name: np.where(test, target.mean() + i * rng.normal(0, 4, (RUNS, rows)), np.nan)
                 for i, name in enumerate(BASELINES)}
    return samples, roles.astype(str), predictions, baselines


def written(tmp_path, mode: str, kriging: str = "none", truth: Truth | None = None):
    samples, roles, predictions, baselines = hand_made(mode)
    predictions, added = krige_runs(samples[["x", "y"]].to_numpy(), samples["target"].to_numpy(), predictions,
                                    roles, kriging, 16)
    summary, table, calibration = score(samples, predictions, roles, baselines, mode,
                                        EvaluateConfig(interval=0.9, bootstrap=200, seed=0), truth, added)
    outline = [(np.array([0, 5e4, 5e4, 0, 0]), np.array([0, 0, 5e4, 5e4, 0]))]
    write_outputs(summary, table, calibration, samples, outline, [] if added is None else added.fields, tmp_path)
    metrics = json.loads((tmp_path / paths.EVALUATE_METRICS / "metrics.json").read_text())
    return metrics, pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "predictions.csv"), samples, roles, predictions


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
    for name in BASELINES:
        assert_figures(metrics["baselines"][name], sklearn_figures(table["observed"], table[name]))
        gain = metrics["r2"] - sklearn_figures(table["observed"], table[name])["r2"]
        assert metrics["baselines"][name]["r2_gain"] == pytest.approx(gain)
        lo, hi = metrics["bootstrap"]["r2_gain"][name]
        assert 0 < lo < metrics["baselines"][name]["r2_gain"] < hi  # every baseline is far behind
    lo, hi = metrics["bootstrap"]["r2"]
    assert lo < metrics["r2"] < hi and metrics["bootstrap"]["resamples"] == 200
    assert metrics["ceiling"]["skipped"].startswith("no truth.parquet")
    assert metrics["kriging"] == {"space": "none"} and "unkriged" not in table
    assert not (tmp_path / paths.EVALUATE_PLOTS / "variogram.png").exists()
    assert metrics["mode"] == "holdout" and metrics["coverage"]["0.9"] == metrics["picp"]
    # what the map stage applies: the calibration file rebuilds the bounds of the csv
    calibration = json.loads((tmp_path / paths.CALIBRATION).read_text())
    lower, upper = prediction_interval(table["ensemble"], table["std"], calibration)
    assert np.allclose(lower, table["lower"]) and np.allclose(upper, table["upper"]) and (lower >= 0).all()
    import matplotlib.image

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


def test_kriging_of_a_run_sees_only_its_training_rows():
    samples, roles, predictions, _ = hand_made("holdout")
    xy, targets = samples[["x", "y"]].to_numpy(), samples["target"].to_numpy()
    kriged, added = krige_runs(xy, targets, predictions, roles, "log", 16)
    held_out = roles[0] != "train"
    changed = targets.copy()
    changed[held_out] *= 3.0  # the validation and test targets of run 0 tell its kriging nothing
    again, _ = krige_runs(xy, changed, predictions, roles, "log", 16)
    assert np.array_equal(again[0], kriged[0])
    changed = targets.copy()
    changed[roles[0] == "train"] *= 1.5
    moved, _ = krige_runs(xy, changed, predictions, roles, "log", 16)
    assert not np.allclose(moved[0, held_out], kriged[0, held_out])
    assert len(added.fields) == RUNS and np.array_equal(added.unkriged, predictions)
    # next to a run's training rows kriging explains more of the error than at its held-out rows
    assert added.variance[0, roles[0] == "train"].mean() < added.variance[0, held_out].mean()
    assert krige_runs(xy, targets, predictions, roles, "none", 16) == (predictions, None)


def test_ceiling_from_truth(tmp_path):
    samples, *_ = hand_made("holdout")
    truth = pd.DataFrame({"row_id": samples["row_id"], "truth": samples["target"] * 0.9,
                          "truth_covariates": samples["target"] * 0.8 + 3})
    metrics, table, *_ = written(tmp_path, "holdout", truth=Truth(truth, {"r2_full": 0.9, "r2_covariates": 0.7}))
    ceiling = metrics["ceiling"]
    assert_figures(ceiling["truth"], sklearn_figures(table["observed"], table["truth"]))
    assert_figures(ceiling["truth_covariates"], sklearn_figures(table["observed"], table["truth_covariates"]))
    assert ceiling["oracle_r2_full"] == 0.9 and ceiling["oracle_r2_covariates"] == 0.7


def test_bootstrap_resamples_sites_reproducibly():
    rng = np.random.default_rng(0)
    observed = rng.normal(20, 5, 200)
    predicted = observed + rng.normal(0, 3, 200)
    sites = np.arange(200) // 4
    first, again = bootstrap(observed, predicted, sites, 300, 7), bootstrap(observed, predicted, sites, 300, 7)
    assert first == again and first["unit"] == "site"
    assert first["rmse"][0] < 3.0 < first["rmse"][1]
    assert bootstrap(observed, predicted, sites, 0, 7) == {"resamples": 0}
    worse, same = observed + rng.normal(0, 6, 200), predicted.copy()
    paired = bootstrap(observed, predicted, sites, 300, 7, {"worse": worse, "same": same})
    assert paired["r2"] == first["r2"] and paired["rmse"] == first["rmse"]  # the same resamples
    assert 0 < paired["r2_gain"]["worse"][0] < paired["r2_gain"]["worse"][1]
    assert paired["r2_gain"]["same"] == [0.0, 0.0]


def test_roles_matrix_and_split_errors():
    split = pd.DataFrame({"row_id": [1, 2, 1, 2], "run": [0, 0, 1, 1], "role": ["train", "test", "val", "test"]})
    assert roles_matrix(split, np.array([2, 1]), 2).tolist() == [["test", "train"], ["test", "val"]]
    with pytest.raises(SocmapError, match="row_id 3 .* has no role"):
        roles_matrix(split, np.array([1, 3]), 2)
    with pytest.raises(SocmapError, match=r"runs \[0, 1\] but models/ holds run_0..run_2"):
        roles_matrix(split, np.array([1, 2]), 3)
    samples, roles, predictions, baselines = hand_made("kfold")
    with pytest.raises(SocmapError, match="test rows differ between runs"):
        score(samples, predictions, roles, baselines, "holdout", EvaluateConfig(bootstrap=0))


@pytest.mark.parametrize("mode", ["holdout", "kfold"])
def test_stage_end_to_end_on_the_tiny_world(tiny_world, tmp_path, monkeypatch, mode):
    from socmap import sample, split, train
    from socmap import evaluate as stage
    from conftest import tiny_params

    params = tiny_params(tiny_world, **{"train.epochs": 1, "train.num_runs": 3, "split.test_ratio": 0.2,
                                        "split.mode": mode, "split.folds": 3, "evaluate.rf_min_samples_leaf": [2, 10]})
    monkeypatch.chdir(tmp_path)
    for module in (sample, split, train, stage):
        module.main(params)
    metrics = json.loads((tmp_path / "metrics/evaluate/metrics.json").read_text())
    table = pd.read_csv(tmp_path / "plots/evaluate/predictions.csv")
    split_table = pd.read_parquet(tmp_path / "data/splits/split.parquet")
    test_ids = split_table[(split_table["run"] == 0) & (split_table["role"] == "test")]["row_id"]
    if mode == "kfold":  # every row is test in exactly one fold
        test_ids = split_table[split_table["role"] == "test"]["row_id"]
        assert test_ids.is_unique and len(test_ids) == len(pd.read_parquet(tmp_path / "data/processed/samples.parquet"))
    assert sorted(table["row_id"]) == sorted(test_ids)
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    assert list(metrics["baselines"]) == BASELINES
    assert_figures(metrics["kriging"]["unkriged"], sklearn_figures(table["observed"], table["unkriged"]))
    for name in BASELINES:  # the training mean is constant: no Pearson correlation to recompute
        assert_figures(metrics["baselines"][name], sklearn_figures(table["observed"], table[name]),
                       skip=("r2_pearson",) if name == "training_mean" else ())
    assert_figures(metrics["ceiling"]["truth"], sklearn_figures(table["observed"], table["truth"]))
    assert set(metrics["runs"]) == {"run_0", "run_1", "run_2"}
    assert metrics["picp"] == pytest.approx(table["observed"].between(table["lower"], table["upper"]).mean())
    assert all(leaf in params.evaluate.rf_min_samples_leaf
               for leaf in metrics["baselines"]["rf_features"]["min_samples_leaf"])
    calibration = json.loads((tmp_path / "data/evaluate/calibration.json").read_text())
    assert calibration["n"] > 20 and calibration["spread_weight"] == 1.0
    assert sorted(os.listdir(tmp_path / "metrics/evaluate")) == ["metrics.json"]
    assert len(load_fields(tmp_path / "data/evaluate/kriging.npz")) == 3
