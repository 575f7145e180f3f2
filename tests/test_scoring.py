"""The evaluate stage's figures, recomputed with scikit-learn from predictions.csv: holdout, kfold, kriged, the
ceiling, the bootstrap; metrics.json as the headline of details.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_error, r2_score

from figures import BASELINES, FOLDS, RUNS, assert_figures, hand_made, sklearn_figures
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
    samples, design, predictions, baselines = hand_made(mode)
    cfg = EvaluateConfig(interval=0.9, bootstrap=200, seed=0, kriging=kriging)
    predictions, added = krige_runs(samples[["x", "y"]].to_numpy(), samples["target"].to_numpy(), predictions,
                                    design.roles, design.groups, cfg, 1200.0)
    summary, table, calibration = score(samples, predictions, design, baselines, cfg, truth, added)
    roles = design.roles
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
    runs, rows = np.nonzero(roles == "val")  # every validation row by the run that held it out, pooled
    assert metrics["val"]["r2"] == pytest.approx(r2_score(samples["target"].to_numpy()[rows], predictions[runs, rows]))
    assert headline(metrics)["val_r2"] == metrics["val"]["r2"]  # what to choose on
    assert headline(metrics)["val_r2_std"] == pytest.approx(np.std(val_r2, ddof=1))
    for name in BASELINES:
        assert_figures(metrics["baselines"][name], sklearn_figures(table["observed"], table[name]))
        gain = metrics["r2"] - sklearn_figures(table["observed"], table[name])["r2"]
        assert metrics["baselines"][name]["r2_gain"] == pytest.approx(gain)
        gain = metrics["bootstrap"]["r2_gain"][name]
        assert 0 < gain["lo"] < metrics["baselines"][name]["r2_gain"] < gain["hi"]  # every baseline is far behind
    interval = metrics["bootstrap"]["r2"]
    assert interval["lo"] < metrics["r2"] < interval["hi"] and metrics["bootstrap"]["resamples"] == 200
    assert metrics["bootstrap"]["unit"] == "block" and metrics["bootstrap"]["units"] == table["block"].nunique() == 5
    qrf = metrics["baselines"]["qrf"]
    inside = (table["observed"] >= table["qrf_lower"]) & (table["observed"] <= table["qrf_upper"])
    assert qrf["picp"] == pytest.approx(inside.mean())
    miss = np.maximum(table["qrf_lower"] - table["observed"], 0) + np.maximum(table["observed"] - table["qrf_upper"], 0)
    width = table["qrf_upper"] - table["qrf_lower"]
    assert qrf["interval_score"] == pytest.approx((width + 20.0 * miss).mean())  # 2 / (1 - 0.9)
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


def test_kfold_pools_the_folds_ensembles_out_of_fold(tmp_path):
    metrics, table, samples, roles, predictions = written(tmp_path, "kfold")
    assert len(table) == len(samples) and metrics["n"] == len(samples)  # every row is test in one fold
    assert metrics["mode"] == "kfold" and sorted(table["fold"].unique()) == list(range(FOLDS))
    for f in range(FOLDS):
        fold = table[table["fold"] == f]
        own = [f"run_{f * RUNS + k}" for k in range(RUNS)]
        assert fold[[f"run_{j}" for j in range(FOLDS * RUNS) if f"run_{j}" not in own]].isna().all().all()
        assert np.allclose(fold["ensemble"], fold[own].mean(axis=1))  # the fold's runs, none of which saw it
        assert np.allclose(fold["std"], fold[own].std(axis=1, ddof=1))
        for column in own:
            assert_figures(metrics["runs"][column], sklearn_figures(fold["observed"], fold[column]))
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))


@pytest.mark.parametrize("mode", ["holdout", "kfold"])
def test_kriged_figures_and_the_unkriged_ensemble_recompute_from_predictions_csv(tmp_path, mode):
    metrics, table, samples, roles, predictions = written(tmp_path, mode, kriging="log")
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    assert_figures(metrics["kriging"]["unkriged"], sklearn_figures(table["observed"], table["unkriged"]))
    assert not np.allclose(table["unkriged"], table["ensemble"])
    if mode == "holdout":
        raw = hand_made(mode)[2]
        assert np.allclose(table["unkriged"], raw[:, roles[0] == "test"].mean(axis=0))
        assert metrics["kriging"]["variograms"]["field_0"]["rows"] == (roles == "val").any(axis=0).sum()
    # the intervals, rebuilt from the csv with the calibration file: they scale with the kriging variance
    calibration = json.loads((tmp_path / paths.CALIBRATION).read_text())
    lower, upper = prediction_interval(table["ensemble"], table["std"], calibration, kappa=table["kriging_variance"])
    assert np.allclose(lower, table["lower"]) and np.allclose(upper, table["upper"])
    assert 0 < table["kriging_variance"].min() < table["kriging_variance"].max() <= 1
    inside = (table["observed"] >= table["lower"]) & (table["observed"] <= table["upper"])
    assert metrics["picp"] == pytest.approx(inside.mean())
    import matplotlib
    import matplotlib.image

    fields = 1 if mode == "holdout" else FOLDS  # one cross-fitted field serves the runs of a test group
    picture = matplotlib.image.imread(tmp_path / paths.EVALUATE_PLOTS / "variogram.png")[..., :3]
    dots = [0.7 * np.array(matplotlib.colormaps["tab10"](k)[:3]) + 0.3 for k in range(fields + 1)]  # alpha 0.7
    drawn = [(np.abs(picture - dot).max(axis=-1) < 0.01).sum() for dot in dots]
    assert min(drawn[:fields]) > 20 and drawn[fields] == 0  # each field's points in its own colour, no other
    variograms = metrics["kriging"]["variograms"]
    assert metrics["kriging"]["space"] == "log" and set(variograms) == {f"field_{k}" for k in range(fields)}
    if mode == "kfold":  # a fold's field: every row its runs validate
        assert all(v["rows"] == (roles[f * RUNS:(f + 1) * RUNS] == "val").any(axis=0).sum()
                   for f, v in enumerate(variograms.values()))
    assert calibration["runs"] == RUNS  # the intervals surround the mean of a group's runs
    by = pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "coverage_by.csv")
    near = table[table["distance_km"] < 2.0]
    nine = by[(by["by"] == "distance") & (by["bin"] == "0-2 km") & (by["nominal"] == 0.9)]
    assert len(near) > 0
    lower, upper = prediction_interval(near["ensemble"], near["std"], calibration, kappa=near["kriging_variance"])
    assert nine["observed"].item() == pytest.approx(((near["observed"] >= lower) & (near["observed"] <= upper)).mean())
    assert by[(by["by"] == "target") & (by["nominal"] == 0.9)]["rows"].sum() == len(table)
    assert by[(by["by"] == "distance") & (by["nominal"] == 0.9)]["rows"].sum() == len(table)
    drawn = pd.read_csv(tmp_path / paths.EVALUATE_PLOTS / "coverage_by_distance.csv")  # what dvc plots draws
    assert list(drawn.columns) == ["nominal", "0-2 km", "2-4 km", "4-8 km", "over 8 km"]
    assert drawn.set_index("nominal").loc[0.9, "0-2 km"] == pytest.approx(nine["observed"].item())
    bins = set(by.loc[by["by"] == "distance", "bin"])
    assert drawn.set_index("nominal").notna().all().to_dict() == {label: label in bins for label in drawn.columns[1:]}


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
    figures = ["r2", "r2_pearson", "mae", "rmse", "bias", "rpiq", "ccc", "picp", "interval_width", "interval_score"]
    interval_baselines = {"qrf"}
    assert set(columns) == {"mode", "n", "interval", *figures, "val_r2", "val_r2_std", "runs_r2.mean", "runs_r2.std",
                            "unkriged.r2", "unkriged.rmse", "bootstrap.unit", "bootstrap.units",
                            "bootstrap.resamples", "bootstrap.level", "bootstrap.r2.lo", "bootstrap.r2.hi",
                            "bootstrap.rmse.lo", "bootstrap.rmse.hi", "ceiling.truth_r2", "ceiling.truth_covariates_r2",
                            *(f"baselines.{name}.{key}" for name in BASELINES for key in ("r2", "rmse", "r2_gain")),
                            *(f"baselines.{name}.{key}" for name in interval_baselines
                              for key in ("picp", "interval_score")),
                            *(f"bootstrap.r2_gain.{name}.{end}" for name in BASELINES for end in ("lo", "hi"))}
    assert not any(isinstance(value, list) for value in columns.values())  # DVC drops lists
    assert columns["bootstrap.unit"] == "block" and columns["bootstrap.level"] == 0.95
    assert columns["bootstrap.r2.lo"] < columns["r2"] < columns["bootstrap.r2.hi"]
    assert columns["unkriged.r2"] == pytest.approx(r2_score(table["observed"], table["unkriged"]))
    assert columns["ceiling.truth_r2"] == pytest.approx(r2_score(table["observed"], table["truth"]))
    assert len(leaves(details)) > 4 * len(columns)  # the per-run, per-variogram and coverage detail stays there


def test_bootstrap_resamples_blocks_reproducibly():
    rng = np.random.default_rng(0)
    observed = rng.normal(20, 5, 200)
    block_error = rng.normal(0, 3, 20)  # errors shared within a block, as the test blocks' are
    table = pd.DataFrame({"observed": observed, "block": np.arange(200) // 10})
    predicted = observed + block_error[table["block"]] + rng.normal(0, 1, 200)
    cfg = EvaluateConfig(bootstrap=300, seed=7)
    first, again = bootstrap(table, predicted, cfg, []), bootstrap(table, predicted, cfg, [])
    assert first == again and first["unit"] == "block" and first["units"] == 20
    assert first["rmse"]["lo"] < np.sqrt(np.mean((predicted - observed) ** 2)) < first["rmse"]["hi"]
    by_row = bootstrap(table.assign(block=np.arange(200)), predicted, cfg, [])
    assert (by_row["rmse"]["hi"] - by_row["rmse"]["lo"]) < 0.7 * (first["rmse"]["hi"] - first["rmse"]["lo"])
    assert first["level"] == 0.95
    assert bootstrap(table, predicted, EvaluateConfig(bootstrap=0), []) == {"unit": "block", "resamples": 0}
    table = table.assign(worse=observed + rng.normal(0, 6, 200), same=predicted.copy())
    paired = bootstrap(table, predicted, cfg, ["worse", "same"])
    assert paired["r2"] == first["r2"] and paired["rmse"] == first["rmse"]  # the same resamples
    assert 0 < paired["r2_gain"]["worse"]["lo"] < paired["r2_gain"]["worse"]["hi"]
    assert paired["r2_gain"]["same"] == {"lo": 0.0, "hi": 0.0}
