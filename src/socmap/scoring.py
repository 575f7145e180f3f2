"""The evaluate stage's figures: test metrics in g/kg per run, ensemble and baseline, the bootstrap, the
ceiling, calibrated intervals and their coverage; and the headline of them that experiments are compared on.

Only the test rows are scored, and they choose nothing: the best run is chosen by its validation r2,
the intervals are calibrated on validation rows.

- holdout: every run has the same test rows; the ensemble is the mean of the runs' predictions and
  its spread their std.
- kfold: each run (fold) has its own test rows and every row is test once, so the headline figures
  are pooled out of fold: each row predicted by the one model that did not see it; per-run figures
  are per fold.

`score` gives every figure (details.json beside predictions.csv); `headline` the few a user compares
between experiments (metrics.json, the columns of `dvc exp show`). Every interval is a {lo, hi}
mapping, and the bootstrap says what it resampled (`unit`) and its `level`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from socmap import paths
from socmap.config import EvaluateConfig
from socmap.errors import SocmapError
from socmap.intervals import fit_calibration, prediction_interval
from socmap.kriging import Kriging
from socmap.metrics import REGRESSION_METRICS, interval_metrics, r2_score, regression_metrics, spread
from socmap.truth import Truth

BOOTSTRAP_LEVEL = 0.95  # of every bootstrap interval


def score(samples: pd.DataFrame, predictions: np.ndarray, roles: np.ndarray, baselines: dict[str, np.ndarray],
          mode: str, cfg: EvaluateConfig, truth: Truth | None = None,
          kriging: Kriging | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """All figures of the stage from the runs' predictions of every row.

    Args:
        samples: samples.parquet; predictions: [K, N] g/kg per run (kriged, if kriging is on); roles: [K, N];
        baselines: {name: [K, N] predictions of each run's test rows}, in report order.
        cfg: evaluate.* (the nominal interval, the bootstrap resamples and seed).
        truth: the simulated world's truth; None: real data, no ceiling.
        kriging: what kriging added to `predictions` (`krige_runs`); None: no kriging.
    Returns:
        (every figure, for details.json (`headline` picks metrics.json's), predictions table of the test rows,
        interval calibration).
    """
    targets = samples["target"].to_numpy(np.float64)
    observed, predicted, others, kappa = calibration_rows(targets, predictions, roles,
                                                          None if kriging is None else kriging.variance)
    calibration = fit_calibration(observed, predicted, others, runs=len(predictions), interval=cfg.interval,
                                  kappa=kappa)
    table, rows = test_table(samples, predictions, roles, mode, calibration, kriging)
    for name in baselines:
        table[name] = np.nanmean(baselines[name][:, rows], axis=0)  # holdout: mean of the runs; kfold: the fold's
    if truth is not None:
        for column in ("truth", "truth_covariates"):
            table[column] = truth.table[column].to_numpy()[rows]
    observed, mean = table["observed"].to_numpy(), table["ensemble"].to_numpy()
    summary = {**regression_metrics(observed, mean), **interval_metrics(observed, table["lower"], table["upper"]),
               "interval": cfg.interval, "mode": mode, **run_summary(targets, predictions, roles),
               "bootstrap": bootstrap(observed, mean, table["site_id"].to_numpy(), cfg.bootstrap, cfg.seed,
                                      {name: table[name].to_numpy() for name in baselines}),
               "baselines": {name: baseline_summary(observed, table[name], targets, roles, per_run)
                             for name, per_run in baselines.items()}}
    for name in baselines:
        summary["baselines"][name]["r2_gain"] = summary["r2"] - summary["baselines"][name]["r2"]
    summary["ceiling"] = ceiling(table, truth)
    summary["kriging"] = {"space": "none"}
    if kriging is not None:  # the variogram of every run, and the ensemble without kriging: what kriging added
        fields = kriging.fields
        summary["kriging"] = {"space": fields[0].space, "neighbours": fields[0].neighbours,
                              "variograms": {f"run_{k}": field.summary() for k, field in enumerate(fields)},
                              "unkriged": regression_metrics(observed, table["unkriged"])}
    coverage = coverage_curve(table, calibration, ensemble=mode == "holdout")
    summary["coverage"] = coverage.set_index("nominal")["observed"].rename(lambda v: f"{v:g}").to_dict()
    return summary, table, calibration


def headline(details: dict) -> dict:
    """The figures experiments are compared on (metrics.json), from the stage's `details` (`score`).

    The ensemble's test figures, the mean validation r2 of what is scored (kriged, when kriging is on:
    choose on it, never on test), the runs' test r2, the bootstrap intervals, each baseline's r2 and
    the ensemble's gain over it, the ensemble without kriging and the simulated world's ceiling.
    """
    val_r2 = np.array([run["val_r2"] for run in details["runs"].values()])
    top = {key: details[key] for key in ("mode", "n", "interval", *REGRESSION_METRICS, "picp", "interval_width")}
    top["val_r2"] = float(np.nanmean(val_r2))
    top["val_r2_std"] = float(np.nanstd(val_r2, ddof=1)) if val_r2.size > 1 else 0.0  # ddof 1, as runs_std
    top["runs_r2"] = {"mean": details["runs_mean"]["r2"], "std": details["runs_std"]["r2"]}
    if "unkriged" in details["kriging"]:
        top["unkriged"] = {key: details["kriging"]["unkriged"][key] for key in ("r2", "rmse")}
    top["bootstrap"] = details["bootstrap"]
    top["baselines"] = {name: {key: figures[key] for key in ("r2", "rmse", "r2_gain")}
                        for name, figures in details["baselines"].items()}
    if "truth" in details["ceiling"]:
        top["ceiling"] = {"truth_r2": details["ceiling"]["truth"]["r2"],
                          "truth_covariates_r2": details["ceiling"]["truth_covariates"]["r2"]}
    return top


def test_table(samples: pd.DataFrame, predictions: np.ndarray, roles: np.ndarray, mode: str, calibration: dict,
               kriging: Kriging | None) -> tuple[pd.DataFrame, np.ndarray]:
    """The test rows with every run's prediction, the ensemble, its spread, interval and residual (with
    kriging also the prediction before it and the relative kriging variance); and their positions."""
    rows, mean, std, fold = test_scores(predictions, roles, mode)
    kappa = None if kriging is None else at_test_rows(kriging.variance, rows, fold)
    lower, upper = prediction_interval(mean, std, calibration, ensemble=mode == "holdout", kappa=kappa)
    observed = samples["target"].to_numpy(np.float64)[rows]
    table = samples.iloc[rows][["row_id", "site_id", "year", "x", "y"]].reset_index(drop=True)
    table["observed"] = observed
    if mode == "kfold":
        table["fold"] = fold
    for k in range(len(predictions)):
        table[f"run_{k}"] = np.where(roles[k, rows] == "test", predictions[k, rows], np.nan)
    table = table.assign(ensemble=mean, std=std, lower=lower, upper=upper, residual=mean - observed)
    if kriging is not None:
        table["unkriged"] = at_test_rows(kriging.unkriged, rows, fold)
        table["kriging_variance"] = kappa
    return table, rows


def test_scores(predictions: np.ndarray, roles: np.ndarray, mode: str) -> tuple[np.ndarray, ...]:
    """Rows scored on test, their prediction, spread and (kfold) fold.

    Returns (rows, mean, std, fold): holdout: mean and std over all runs; kfold: the fold model's
    prediction and the std of the other runs (as on the calibration rows), fold = the run testing the row.
    """
    test = roles == "test"
    if mode == "holdout":
        if not (test == test[0]).all():
            raise SocmapError(f"{paths.SPLIT}: test rows differ between runs, as in kfold, but split.mode is holdout; "
                              f"rerun `socmap split`")
        rows = np.flatnonzero(test[0])
        fold = np.full(rows.size, -1)
        std = spread(predictions[:, rows])
    else:
        rows = np.flatnonzero(test.any(axis=0))
        fold = test[:, rows].argmax(axis=0)
        std = np.array([spread(np.delete(predictions[:, r], f)) for r, f in zip(rows, fold)])
    if rows.size == 0:
        raise SocmapError(f"{paths.SPLIT}: no test rows; raise split.test_ratio")
    return rows, at_test_rows(predictions, rows, fold), std, fold


def at_test_rows(values: np.ndarray, rows: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per-run values [K, N] at the test `rows`: their mean over the runs (holdout, fold −1) or the
    value of the run that tests the row (kfold)."""
    return values[:, rows].mean(axis=0) if (fold < 0).all() else values[fold, rows]


def calibration_rows(targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray,
                     variance: np.ndarray | None = None) -> tuple[np.ndarray | None, ...]:
    """(observed, honest prediction, spread of the other runs, that run's relative kriging variance or None)
    for every (row, run) where the row is validation."""
    runs, rows = np.nonzero(roles == "val")
    others = np.array([spread(np.delete(predictions[:, r], k)) for k, r in zip(runs, rows)])
    return targets[rows], predictions[runs, rows], others, None if variance is None else variance[runs, rows]


def bootstrap(observed: np.ndarray, predicted: np.ndarray, sites: np.ndarray, resamples: int, seed: int,
              others: dict[str, np.ndarray] | None = None) -> dict:
    """95 % percentile intervals of r2 and rmse, resampling whole sites (revisits are not independent).

    With `others` ({name: predictions of the same rows}), also the interval of the r2 gain over each,
    r2(predicted) − r2(other) on the same resamples (paired): above 0 means ahead beyond the test noise.
    """
    if resamples == 0:
        return {"unit": "site", "resamples": 0}
    others = others or {}
    site_ids, site_of_row = np.unique(sites, return_inverse=True)
    rng = np.random.default_rng(seed)
    r2, rmse, gain = [], [], {name: [] for name in others}
    for _ in range(resamples):
        draws = np.bincount(rng.integers(0, site_ids.size, site_ids.size), minlength=site_ids.size)
        rows = np.repeat(np.arange(sites.size), draws[site_of_row])  # each row as often as its site was drawn
        figures = regression_metrics(observed[rows], predicted[rows])
        r2.append(figures["r2"])
        rmse.append(figures["rmse"])
        for name, other in others.items():
            gain[name].append(figures["r2"] - r2_score(observed[rows], other[rows]))
    result = {"unit": "site", "resamples": resamples, "level": BOOTSTRAP_LEVEL, "r2": percentile_interval(r2),
              "rmse": percentile_interval(rmse)}
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


def coverage_curve(table: pd.DataFrame, calibration: dict, ensemble: bool) -> pd.DataFrame:
    """Nominal against observed coverage (and mean width) of the test rows at every calibrated level.

    Args:
        table: the test table (`test_table`): observed, ensemble, std and, with kriging, kriging_variance.
        ensemble: whether the predictions are the mean of all runs (holdout) or one run's (kfold).
    """
    rows = []
    for level in sorted(float(k) for k in calibration["quantiles"]):
        lower, upper = prediction_interval(table["ensemble"], table["std"], calibration, level=level,
                                           ensemble=ensemble, kappa=table.get("kriging_variance"))
        figures = interval_metrics(table["observed"], lower, upper)
        rows.append({"nominal": level, "observed": figures["picp"], "width": figures["interval_width"]})
    return pd.DataFrame(rows)


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
