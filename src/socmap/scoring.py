"""The evaluate stage's figures: test metrics in g/kg per run, ensemble and baseline, the block bootstrap,
the ceiling, calibrated intervals and their coverage; and the headline of them that experiments are compared on.

Only the test rows are scored, and they choose nothing: the best run is chosen by its validation r2,
the intervals are calibrated on validation rows.

- holdout: every run has the same test rows; the ensemble is the mean of the runs' predictions and
  its spread their std.
- kfold: each test fold has its own runs (`socmap.split`), and every row is test in one fold, so the
  headline figures are pooled out of fold: each row predicted by the ensemble of its fold's runs,
  none of which saw it; per-run figures are per run of a fold.

Test rows lie in square blocks, and the errors of one block are correlated: the bootstrap resamples
whole blocks (``bootstrap.unit`` says so), paired for the gains over the baselines.

`score` gives every figure (details.json beside predictions.csv); `headline` the few a user compares
between experiments (metrics.json, the columns of `dvc exp show`). Every interval is a {lo, hi}
mapping, and the bootstrap says what it resampled (`unit`) and its `level`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from socmap import paths
from socmap.applicability import training_distance
from socmap.baselines import Baselines
from socmap.config import EvaluateConfig
from socmap.errors import SocmapError
from socmap.intervals import fit_calibration, prediction_interval
from socmap.kriging import Kriging
from socmap.metrics import REGRESSION_METRICS, interval_metrics, r2_score, regression_metrics, spread
from socmap.truth import Truth

BOOTSTRAP_LEVEL = 0.95  # of every bootstrap interval
DISTANCE_BINS_KM = (0.0, 2.0, 4.0, 8.0, np.inf)  # of a test row's distance to the nearest training row
DISTANCE_LABELS = ("0-2 km", "2-4 km", "4-8 km", "over 8 km")
TARGET_BINS = 4  # target quartiles of the coverage table


@dataclass(frozen=True)
class Design:
    """The split as evaluate reads it: split.mode, the role of every row in every run [K, N], the test
    block of every row (−1 for a row no run tests) and the test group of every run [K] (the runs that
    share their test rows: holdout's all, kfold's of one fold; `socmap.split.test_groups`)."""

    mode: str
    roles: np.ndarray
    blocks: np.ndarray
    groups: np.ndarray


def score(samples: pd.DataFrame, predictions: np.ndarray, design: Design, baselines: Baselines,
          cfg: EvaluateConfig, truth: Truth | None = None,
          kriging: Kriging | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """All figures of the stage from the runs' predictions of every row.

    Args:
        samples: samples.parquet; predictions: [K, N] g/kg per run (kriged, if kriging is on).
        cfg: evaluate.* (the nominal interval, the bootstrap resamples and seed).
        truth: the simulated world's truth; None: real data, no ceiling.
        kriging: what kriging added to `predictions` (`krige_runs`); None: no kriging.
    Returns:
        (every figure, for details.json (`headline` picks metrics.json's), predictions table of the test rows,
        interval calibration).
    """
    targets, roles = samples["target"].to_numpy(np.float64), design.roles
    observed, predicted, others, kappa = calibration_rows(targets, predictions, roles, design.groups,
                                                          None if kriging is None else kriging.variance)
    calibration = fit_calibration(observed, predicted, others, runs=int(np.bincount(design.groups).min()),
                                  interval=cfg.interval, kappa=kappa)
    table, rows = test_table(samples, predictions, design, calibration, kriging)
    for name, per_run in baselines.predictions.items():
        table[name] = np.nanmean(per_run[:, rows], axis=0)  # the mean of the runs that test the row
    for name, (lower, upper) in baselines.bounds.items():
        table[f"{name}_lower"], table[f"{name}_upper"] = (np.nanmean(b[:, rows], axis=0) for b in (lower, upper))
    if truth is not None:
        for column in ("truth", "truth_covariates"):
            table[column] = truth.table[column].to_numpy()[rows]
    observed_test, mean = table["observed"].to_numpy(), table["ensemble"].to_numpy()
    summary = {**regression_metrics(observed_test, mean),
               **interval_metrics(observed_test, table["lower"], table["upper"], cfg.interval),
               "interval": cfg.interval, "mode": design.mode, "val": regression_metrics(observed, predicted),
               **run_summary(targets, predictions, roles),
               "bootstrap": bootstrap(table, mean, cfg, list(baselines.predictions)),
               "baselines": {name: baseline_summary(observed_test, table[name], targets, roles, per_run)
                             for name, per_run in baselines.predictions.items()}}
    for name in baselines.predictions:
        summary["baselines"][name]["r2_gain"] = summary["r2"] - summary["baselines"][name]["r2"]
    for name in baselines.bounds:
        summary["baselines"][name].update(interval_metrics(observed_test, table[f"{name}_lower"],
                                                           table[f"{name}_upper"], cfg.interval))
    summary["ceiling"] = ceiling(table, truth)
    summary["kriging"] = kriging_summary(table, kriging)
    curve = coverage_curve(table, calibration)
    summary["coverage"] = curve.set_index("nominal")["observed"].rename(lambda v: f"{v:g}").to_dict()
    return summary, table, calibration


def headline(details: dict) -> dict:
    """The figures experiments are compared on (metrics.json), from the stage's `details` (`score`).

    The ensemble's test figures, the validation r2 of what is scored (every validation row predicted by
    a run that did not fit it, kriged when kriging is on: choose on it, never on test) and its spread over
    runs, the runs' test r2, the bootstrap intervals, each baseline's r2 (interval figures, if it has
    intervals) and the ensemble's gain over it, the ensemble without kriging, the simulated world's ceiling
    and the area of applicability's threshold with the share of test rows inside it.
    """
    val_r2 = np.array([run["val_r2"] for run in details["runs"].values()])
    top = {key: details[key] for key in ("mode", "n", "interval", *REGRESSION_METRICS, "picp", "interval_width",
                                         "interval_score")}
    top["val_r2"] = details["val"]["r2"]
    top["val_r2_std"] = float(np.nanstd(val_r2, ddof=1)) if val_r2.size > 1 else 0.0  # ddof 1, as runs_std
    top["runs_r2"] = {"mean": details["runs_mean"]["r2"], "std": details["runs_std"]["r2"]}
    if "unkriged" in details["kriging"]:
        top["unkriged"] = {key: details["kriging"]["unkriged"][key] for key in ("r2", "rmse")}
    top["bootstrap"] = details["bootstrap"]
    top["baselines"] = {name: {key: figures[key] for key in ("r2", "rmse", "r2_gain", "picp", "interval_score")
                               if key in figures}
                        for name, figures in details["baselines"].items()}
    if "truth" in details["ceiling"]:
        top["ceiling"] = {"truth_r2": details["ceiling"]["truth"]["r2"],
                          "truth_covariates_r2": details["ceiling"]["truth_covariates"]["r2"]}
    top.update({key: details[key] for key in ("aoa_threshold", "aoa_test_inside") if key in details})
    return top


def test_table(samples: pd.DataFrame, predictions: np.ndarray, design: Design, calibration: dict,
               kriging: Kriging | None) -> tuple[pd.DataFrame, np.ndarray]:
    """The test rows with every run's prediction, the ensemble, its spread, interval and residual, the
    test block (kfold: and fold) and the distance to the nearest training row (with kriging also the
    prediction before it and the relative kriging variance); and their positions."""
    roles = design.roles
    rows, fold = test_rows(roles, design.groups, design.mode)
    mean = at_test_rows(predictions, rows, fold, design.groups)
    std = at_test_rows(predictions, rows, fold, design.groups, reduce=spread)
    kappa = None if kriging is None else at_test_rows(kriging.variance, rows, fold, design.groups)
    lower, upper = prediction_interval(mean, std, calibration, kappa=kappa)
    observed = samples["target"].to_numpy(np.float64)[rows]
    table = samples.iloc[rows][["row_id", "site_id", "year", "x", "y"]].reset_index(drop=True)
    table["observed"] = observed
    if design.mode == "kfold":
        table["fold"] = fold
    table["block"] = design.blocks[rows]
    table["distance_km"] = training_distance(samples[["x", "y"]].to_numpy(float), roles, rows, fold) / 1000.0
    for k in range(len(predictions)):
        table[f"run_{k}"] = np.where(roles[k, rows] == "test", predictions[k, rows], np.nan)
    table = table.assign(ensemble=mean, std=std, lower=lower, upper=upper, residual=mean - observed)
    if kriging is not None:
        table["unkriged"] = at_test_rows(kriging.unkriged, rows, fold, design.groups)
        table["kriging_variance"] = kappa
    return table, rows


def test_rows(roles: np.ndarray, groups: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows scored on test and the test group (kfold: the fold) of each; −1 in holdout, where every
    run tests them."""
    test = roles == "test"
    if mode == "holdout":
        if not (test == test[0]).all():
            raise SocmapError(f"{paths.SPLIT}: test rows differ between runs, as in kfold, but split.mode is holdout; "
                              f"rerun `socmap split`")
        rows = np.flatnonzero(test[0])
        fold = np.full(rows.size, -1)
    else:
        rows = np.flatnonzero(test.any(axis=0))
        fold = groups[test[:, rows].argmax(axis=0)]
    if rows.size == 0:
        raise SocmapError(f"{paths.SPLIT}: no test rows; raise split.test_ratio")
    return rows, fold


def at_test_rows(values: np.ndarray, rows: np.ndarray, fold: np.ndarray, groups: np.ndarray,
                 reduce=lambda v: v.mean(axis=0)) -> np.ndarray:
    """Per-run values [K, N] at the test `rows`, reduced (by default: their mean; `spread`: their spread)
    over the runs that test each row (holdout, fold −1: every run; kfold: the runs of the row's fold)."""
    if (fold < 0).all():
        return reduce(values[:, rows])
    out = np.empty(rows.size)
    for group in np.unique(fold):
        here = fold == group
        out[here] = reduce(values[np.ix_(groups == group, rows[here])])
    return out


def calibration_rows(targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray, groups: np.ndarray,
                     variance: np.ndarray | None = None) -> tuple[np.ndarray | None, ...]:
    """(observed, honest prediction, spread of the other runs of its test group, that run's relative
    kriging variance or None) for every (row, run) where the row is validation."""
    runs, rows = np.nonzero(roles == "val")
    run_ids = np.arange(len(predictions))
    others = np.array([spread(predictions[(groups == groups[k]) & (run_ids != k), r]) for k, r in zip(runs, rows)])
    return targets[rows], predictions[runs, rows], others, None if variance is None else variance[runs, rows]


def bootstrap(table: pd.DataFrame, predicted: np.ndarray, cfg: EvaluateConfig, others: list[str]) -> dict:
    """`BOOTSTRAP_LEVEL` percentile intervals ({lo, hi}) of r2 and rmse, resampling whole test blocks, whose errors are
    correlated; with `others` (columns of `table`), also the interval of the r2 gain over each,
    r2(predicted) − r2(other) on the same resamples (paired): above 0 means ahead beyond the test noise."""
    if cfg.bootstrap == 0:
        return {"unit": "block", "resamples": 0}
    observed = table["observed"].to_numpy()
    blocks, block_of_row = np.unique(table["block"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng(cfg.seed)
    r2, rmse, gain = [], [], {name: [] for name in others}
    for _ in range(cfg.bootstrap):
        draws = np.bincount(rng.integers(0, blocks.size, blocks.size), minlength=blocks.size)
        rows = np.repeat(np.arange(len(observed)), draws[block_of_row])  # each row as often as its block was drawn
        figures = regression_metrics(observed[rows], predicted[rows])
        r2.append(figures["r2"])
        rmse.append(figures["rmse"])
        for name in others:
            gain[name].append(figures["r2"] - r2_score(observed[rows], table[name].to_numpy()[rows]))
    result = {"unit": "block", "units": int(blocks.size), "resamples": cfg.bootstrap, "level": BOOTSTRAP_LEVEL,
              "r2": percentile_interval(r2), "rmse": percentile_interval(rmse)}
    if others:
        result["r2_gain"] = {name: percentile_interval(values) for name, values in gain.items()}
    return result


def percentile_interval(values: list[float]) -> dict:
    """The central `BOOTSTRAP_LEVEL` percentile interval of resampled values, as {lo, hi} (NaN draws left out)."""
    tail = 100 * (1 - BOOTSTRAP_LEVEL) / 2
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return {"lo": float(lo), "hi": float(hi)}


def run_summary(targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray) -> dict:
    """Per run: test metrics and validation r2; the best run by validation r2; mean and std over runs."""
    runs = {}
    for k in range(len(predictions)):
        test, val = roles[k] == "test", roles[k] == "val"
        runs[f"run_{k}"] = {**regression_metrics(targets[test], predictions[k, test]),
                            "val_r2": r2_score(targets[val], predictions[k, val])}
    best = max(range(len(runs)), key=lambda k: np.nan_to_num(runs[f"run_{k}"]["val_r2"], nan=-np.inf))
    return {"runs": runs, "best_run": {"run": best, **runs[f"run_{best}"]}, **_mean_std(list(runs.values()))}


def baseline_summary(observed: np.ndarray, pooled: pd.Series, targets: np.ndarray, roles: np.ndarray,
                     per_run: np.ndarray) -> dict:
    """A baseline's figures on the test rows (`pooled`: its prediction of them, as the ensemble's is pooled)
    and the mean and std of its runs' figures (`per_run`: [K, N], each run's test rows)."""
    runs = [regression_metrics(targets[roles[k] == "test"], per_run[k, roles[k] == "test"])
            for k in range(len(per_run))]
    return {**regression_metrics(observed, pooled), **_mean_std(runs)}


def ceiling(table: pd.DataFrame, truth: Truth | None) -> dict:
    """The truth's figures on the test rows (with and without the residual no covariate explains)."""
    if truth is None:
        return {"skipped": f"{paths.TRUTH} has no rows: real data have no ceiling"}
    oracle = truth.oracle or {}
    return {
        "truth": regression_metrics(table["observed"], table["truth"]),
        "truth_covariates": regression_metrics(table["observed"], table["truth_covariates"]),
        "oracle_r2_full": oracle.get("r2_full"),
        "oracle_r2_covariates": oracle.get("r2_covariates"),
    }


def kriging_summary(table: pd.DataFrame, kriging: Kriging | None) -> dict:
    """The variogram of every distinct field and the ensemble's test figures without kriging."""
    if kriging is None:
        return {"space": "none"}
    fields = {id(field): field for field in kriging.fields}.values()
    return {"space": kriging.fields[0].space, "neighbours": kriging.fields[0].neighbours,
            "residuals": "cross-fitted: validation rows, each by the run that held it out",
            "variograms": {f"field_{i}": field.summary() for i, field in enumerate(fields)},
            "unkriged": regression_metrics(table["observed"], table["unkriged"])}


def coverage_curve(table: pd.DataFrame, calibration: dict) -> pd.DataFrame:
    """Nominal against observed coverage (and mean width) of the test rows at every calibrated level.

    Args:
        table: the test table (`test_table`): observed, ensemble, std and, with kriging, kriging_variance.
    """
    rows = []
    for level in sorted(float(k) for k in calibration["quantiles"]):
        lower, upper = prediction_interval(table["ensemble"], table["std"], calibration, level=level,
                                           kappa=table.get("kriging_variance"))
        figures = interval_metrics(table["observed"], lower, upper, level)
        rows.append({"nominal": level, "observed": figures["picp"], "width": figures["interval_width"],
                     "interval_score": figures["interval_score"]})
    return pd.DataFrame(rows)


def coverage_by(table: pd.DataFrame, calibration: dict) -> pd.DataFrame:
    """Observed coverage at every calibrated level by distance to the nearest training row (km bins) and
    by target quartile: columns by (distance or target), bin, rows, nominal, observed."""
    groups = {"distance": pd.cut(table["distance_km"], DISTANCE_BINS_KM, right=False, labels=DISTANCE_LABELS),
              "target": pd.qcut(table["observed"], TARGET_BINS, duplicates="drop")}
    out = []
    for by, labels in groups.items():
        for label, group in table.groupby(labels, observed=True, sort=True):  # bins in order, empty ones left out
            curve = coverage_curve(group, calibration)
            out.append(curve.assign(by=by, bin=str(label), rows=len(group))[["by", "bin", "rows", "nominal",
                                                                               "observed"]])
    return pd.concat(out, ignore_index=True)


def coverage_by_distance(by: pd.DataFrame) -> pd.DataFrame:
    """`coverage_by`'s distance rows as one column per distance bin (NaN for a bin without test rows) beside
    the nominal level: what dvc plots draws."""
    distance = by[by["by"] == "distance"].pivot(index="nominal", columns="bin", values="observed")
    return distance.reindex(columns=list(DISTANCE_LABELS)).reset_index()


def error_by_year(table: pd.DataFrame) -> pd.DataFrame:
    """Test error of the ensemble per survey year."""
    rows = []
    for year, group in table.groupby("year"):
        figures = regression_metrics(group["observed"], group["ensemble"])
        rows.append({"year": int(year), **{k: figures[k] for k in ("n", "rmse", "mae", "bias", "r2")}})
    return pd.DataFrame(rows)


def _mean_std(runs: list[dict]) -> dict:
    """runs_mean and runs_std (ddof 1; 0 with one run) of each regression metric over runs."""
    table = pd.DataFrame(runs)[list(REGRESSION_METRICS)]
    return {"runs_mean": table.mean().to_dict(),
            "runs_std": table.std(ddof=1).fillna(0.0).to_dict() if len(table) > 1 else dict.fromkeys(table, 0.0)}
