"""Evaluate stage: test metrics in g/kg, baselines side by side, the ceiling, calibrated intervals, plots.

Only the test rows are scored, and they choose nothing: the best run is chosen by its validation r2,
the forests' leaf size and the intervals are calibrated on validation rows.

With `evaluate.kriging` on, every run's predictions are regression-kriged from its own training
residuals (`socmap.kriging`) before anything is scored; the fields go to the map stage, and the
figures without kriging are kept under ``kriging.unkriged``.

- holdout: every run has the same test rows; the ensemble is the mean of the runs' predictions and
  its spread their std.
- kfold: each run (fold) has its own test rows and every row is test once, so the headline figures
  are pooled out of fold: each row predicted by the one model that did not see it; per-run figures
  are per fold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from socmap.baselines import baseline_predictions  # noqa: E402
from socmap.errors import SocmapError  # noqa: E402
from socmap.intervals import fit_calibration, prediction_interval  # noqa: E402
from socmap.io import atomic_path, write_json  # noqa: E402
from socmap.kriging import (FIELDS, MAX_LAG_KM, ResidualField, empirical_variogram,  # noqa: E402
                            require_projected, save_fields)
from socmap.metrics import REGRESSION_METRICS, interval_metrics, r2_score, regression_metrics  # noqa: E402
from socmap.plots import save_figure  # noqa: E402

log = logging.getLogger(__name__)

PATCHES, SAMPLES, REPORT = "data/processed/patches.npy", "data/processed/samples.parquet", "data/processed/report.json"
SPLIT, MODELS = "data/splits/split.parquet", "models"
METRICS_DIR, PLOTS_DIR, CALIBRATION = "metrics/evaluate", "plots/evaluate", "data/evaluate/calibration.json"


# ------------------------------------------------------------------------------- inputs


def roles_matrix(split: pd.DataFrame, row_ids: np.ndarray, runs: int) -> np.ndarray:
    """[runs, N] role of each sample row (in samples order) in each run; checks split.parquet covers them."""
    if sorted(split["run"].unique()) != list(range(runs)):
        raise SocmapError(f"{SPLIT}: runs {sorted(split['run'].unique().tolist())} but models/ holds "
                          f"run_0..run_{runs - 1}; rerun `socmap split` and `socmap train` with the same params")
    table = split.pivot(index="row_id", columns="run", values="role")
    missing = np.setdiff1d(row_ids, table.index.to_numpy())
    if missing.size or table.isna().any().any():
        raise SocmapError(f"{SPLIT}: row_id {missing[0] if missing.size else '?'} of {SAMPLES} has no role in "
                          f"some run; rerun `socmap split`")
    return table.loc[row_ids].to_numpy().T.astype(str)


def load_truth(points_path: str | Path, samples: pd.DataFrame) -> tuple[pd.DataFrame | None, dict | None]:
    """The noise-free truth per sample row and the oracle figures, if a simulated world lies beside the points.

    The rule: a `truth.parquet` in the directory of `data.points.path` marks a simulated world (simulate writes
    them side by side); real data have none, and the ceiling is skipped.
    """
    folder = Path(points_path).parent
    if not (folder / "truth.parquet").exists():
        return None, None
    truth = pd.read_parquet(folder / "truth.parquet").set_index("row_id")
    missing = np.setdiff1d(samples["row_id"], truth.index)
    if missing.size:
        raise SocmapError(f"{folder / 'truth.parquet'}: no row_id {missing[0]} of {SAMPLES}; the truth belongs "
                          f"to another world: rerun `socmap simulate` and the stages after it")
    truth = truth.loc[samples["row_id"]]
    if not np.array_equal(truth["year"].to_numpy(), samples["year"].to_numpy()):
        raise SocmapError(f"{folder / 'truth.parquet'}: years differ from {SAMPLES} for the same row_id; "
                          f"rerun the stages after `socmap simulate`")
    oracle_path = folder / "oracle.json"
    oracle = json.loads(oracle_path.read_text()) if oracle_path.exists() else None
    return truth.reset_index(), oracle


# --------------------------------------------------------------------------- computation


@dataclass(frozen=True)
class Kriging:
    """What regression kriging adds to the runs' predictions (`krige_runs`)."""

    unkriged: np.ndarray  # [K, N] the predictions before kriging, g/kg
    fields: list[ResidualField]  # each run's
    variance: np.ndarray  # [K, N] relative kriging variance of each run at each row


def krige_runs(xy: np.ndarray, targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray, space: str,
               neighbours: int) -> tuple[np.ndarray, Kriging | None]:
    """Every run's predictions of every row, regression-kriged from that run's training residuals.

    Args:
        xy: [N, 2] metres; targets: [N]; predictions: [K, N] g/kg; roles: [K, N].
    Returns:
        ([K, N] kriged predictions, what kriging added); with `space` none, the predictions and None.
    """
    if space == "none":
        return predictions, None
    fields, kriged, variance = [], np.empty_like(predictions), np.empty_like(predictions)
    for run, predicted in enumerate(predictions):
        train = roles[run] == "train"
        field = ResidualField.fit(xy[train], targets[train], predicted[train], space, neighbours)
        residual, variance[run] = field.krige(xy)
        kriged[run] = field.correct(predicted, residual, variance[run])
        fields.append(field)
    return kriged, Kriging(predictions, fields, variance)


def test_scores(predictions: np.ndarray, roles: np.ndarray, mode: str) -> tuple[np.ndarray, ...]:
    """Rows scored on test, their prediction, spread and (kfold) fold.

    Returns (rows, mean, std, fold): holdout: mean and std over all runs; kfold: the fold model's
    prediction and the std of the other runs (as on the calibration rows), fold = the run testing the row.
    """
    test = roles == "test"
    if mode == "holdout":
        if not (test == test[0]).all():
            raise SocmapError(f"{SPLIT}: test rows differ between runs, as in kfold, but split.mode is holdout; "
                              f"rerun `socmap split`")
        rows = np.flatnonzero(test[0])
        fold = np.full(rows.size, -1)
        std = _std(predictions[:, rows])
    else:
        rows = np.flatnonzero(test.any(axis=0))
        fold = test[:, rows].argmax(axis=0)
        std = np.array([_std(np.delete(predictions[:, r], f)) for r, f in zip(rows, fold)])
    if rows.size == 0:
        raise SocmapError(f"{SPLIT}: no test rows; raise split.test_ratio")
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
    spread = np.array([_std(np.delete(predictions[:, r], k)) for k, r in zip(runs, rows)])
    return targets[rows], predictions[runs, rows], spread, None if variance is None else variance[runs, rows]


def bootstrap(observed: np.ndarray, predicted: np.ndarray, sites: np.ndarray, resamples: int, seed: int,
              others: dict[str, np.ndarray] | None = None) -> dict:
    """95 % percentile intervals of r2 and rmse, resampling whole sites (revisits are not independent).

    With `others` ({name: predictions of the same rows}), also the interval of the r2 gain over each,
    r2(predicted) − r2(other) on the same resamples (paired): above 0 means ahead beyond the test noise.
    """
    if resamples == 0:
        return {"resamples": 0}
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
    result = {"r2": np.nanpercentile(r2, [2.5, 97.5]).tolist(), "rmse": np.percentile(rmse, [2.5, 97.5]).tolist(),
              "resamples": resamples, "unit": "site"}
    if others:
        result["r2_gain"] = {name: np.nanpercentile(values, [2.5, 97.5]).tolist() for name, values in gain.items()}
    return result


def run_summary(targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray) -> dict:
    """Per run: test metrics and validation r2; the best run by validation r2; mean and std over runs."""
    runs = {}
    for k in range(len(predictions)):
        test, val = roles[k] == "test", roles[k] == "val"
        runs[f"run_{k}"] = {**regression_metrics(targets[test], predictions[k, test]),
                            "val_r2": r2_score(targets[val], predictions[k, val])}
    best = max(range(len(runs)), key=lambda k: np.nan_to_num(runs[f"run_{k}"]["val_r2"], nan=-np.inf))
    return {"runs": runs, "best_run": {"run": best, **runs[f"run_{best}"]}, **_mean_std(list(runs.values()))}


def evaluate(samples: pd.DataFrame, predictions: np.ndarray, roles: np.ndarray, baselines: dict[str, np.ndarray],
             mode: str, interval: float, resamples: int, seed: int,
             truth: pd.DataFrame | None = None, oracle: dict | None = None,
             kriging: Kriging | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """All figures of the stage from the runs' predictions of every row.

    Args:
        samples: samples.parquet; predictions: [K, N] g/kg per run (kriged, if kriging is on); roles: [K, N];
        baselines: {name: [K, N] predictions of each run's test rows}, in report order.
        kriging: what kriging added to `predictions` (`krige_runs`); None: no kriging.
    Returns:
        (metrics summary, predictions table of the test rows, interval calibration).
    """
    targets = samples["target"].to_numpy(np.float64)
    observed, predicted, spread, kappa = calibration_rows(targets, predictions, roles,
                                                          None if kriging is None else kriging.variance)
    calibration = fit_calibration(observed, predicted, spread, runs=len(predictions), interval=interval, kappa=kappa)
    rows, mean, std, fold = test_scores(predictions, roles, mode)
    ensemble = mode == "holdout"
    kappa = None if kriging is None else at_test_rows(kriging.variance, rows, fold)
    lower, upper = prediction_interval(mean, std, calibration, ensemble=ensemble, kappa=kappa)
    observed = targets[rows]
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
    for name in baselines:
        table[name] = np.nanmean(baselines[name][:, rows], axis=0)  # holdout: mean of the runs; kfold: the fold's
    summary = {**regression_metrics(observed, mean), **interval_metrics(observed, lower, upper),
               "interval": interval, "mode": mode, **run_summary(targets, predictions, roles),
               "bootstrap": bootstrap(observed, mean, table["site_id"].to_numpy(), resamples, seed,
                                      {name: table[name].to_numpy() for name in baselines}),
               "baselines": {}}
    for name, per_run in baselines.items():
        runs = [regression_metrics(targets[roles[k] == "test"], per_run[k, roles[k] == "test"])
                for k in range(len(per_run))]
        figures = regression_metrics(observed, table[name])
        summary["baselines"][name] = {**figures, **_mean_std(runs), "r2_gain": summary["r2"] - figures["r2"]}
    if truth is not None:
        for column in ("truth", "truth_covariates"):
            table[column] = truth[column].to_numpy()[rows]
        summary["ceiling"] = {
            "truth": regression_metrics(observed, table["truth"]),
            "truth_covariates": regression_metrics(observed, table["truth_covariates"]),
            "oracle_r2_full": (oracle or {}).get("r2_full"),
            "oracle_r2_covariates": (oracle or {}).get("r2_covariates"),
        }
    else:
        summary["ceiling"] = {"skipped": "no truth.parquet beside data.points.path: real data have no ceiling"}
    summary["kriging"] = {"space": "none"}
    if kriging is not None:  # the variogram of every run, and the ensemble without kriging: what kriging added
        fields = kriging.fields
        summary["kriging"] = {"space": fields[0].space, "neighbours": fields[0].neighbours,
                              "variograms": {f"run_{k}": field.summary() for k, field in enumerate(fields)},
                              "unkriged": regression_metrics(observed, table["unkriged"])}
    coverage = coverage_curve(observed, mean, std, calibration, ensemble, kappa)
    summary["coverage"] = coverage.set_index("nominal")["observed"].rename(lambda v: f"{v:g}").to_dict()
    return summary, table, calibration


def coverage_curve(observed: np.ndarray, mean: np.ndarray, std: np.ndarray, calibration: dict,
                   ensemble: bool, kappa: np.ndarray | None = None) -> pd.DataFrame:
    """Nominal against observed coverage (and mean width) at every calibrated level."""
    rows = []
    for level in sorted(float(k) for k in calibration["quantiles"]):
        lower, upper = prediction_interval(mean, std, calibration, level=level, ensemble=ensemble, kappa=kappa)
        figures = interval_metrics(observed, lower, upper)
        rows.append({"nominal": level, "observed": figures["picp"], "width": figures["interval_width"]})
    return pd.DataFrame(rows)


def error_by_year(table: pd.DataFrame) -> pd.DataFrame:
    """Test error of the ensemble per survey year."""
    rows = []
    for year, group in table.groupby("year"):
        figures = regression_metrics(group["observed"], group["ensemble"])
        rows.append({"year": int(year), **{k: figures[k] for k in ("n", "rmse", "mae", "bias", "r2")}})
    return pd.DataFrame(rows)


def _std(values: np.ndarray) -> np.ndarray | float:
    """Spread over runs (axis 0), ddof 1; NaN with fewer than two runs."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.full(values.shape[1:], np.nan) if values.ndim > 1 else float("nan")
    return values.std(axis=0, ddof=1)


def _mean_std(runs: list[dict]) -> dict:
    """runs_mean and runs_std (ddof 1; 0 with one run) of each regression metric over runs."""
    table = pd.DataFrame(runs)[list(REGRESSION_METRICS)]
    return {"runs_mean": table.mean().to_dict(),
            "runs_std": table.std(ddof=1).fillna(0.0).to_dict() if len(table) > 1 else dict.fromkeys(table, 0.0)}


# ------------------------------------------------------------------------------------ plots


def plot_scatter(table: pd.DataFrame, summary: dict, path: Path) -> None:
    """Predicted against observed test SOC with the interval of each row and the 1:1 line."""
    fig, ax = plt.subplots(figsize=(6, 6))
    limit = 1.05 * float(np.nanmax(table[["observed", "ensemble"]].to_numpy()))
    ax.vlines(table["observed"], table["lower"], table["upper"], color="0.6", alpha=0.3, lw=0.6,
              label=f"{summary['interval']:.0%} interval")
    ax.scatter(table["observed"], table["ensemble"], s=14, c="#1f5fa8", alpha=0.85, linewidths=0, zorder=3,
               label="test rows")
    ax.plot([0, limit], [0, limit], "k--", lw=1, label="1:1")
    ax.set(xlim=(0, limit), ylim=(0, limit), aspect="equal", xlabel="observed SOC (g/kg)",
           ylabel="predicted SOC (g/kg)", title="Predicted against observed, test rows")
    text = (f"R² {summary['r2']:.2f}   (Pearson² {summary['r2_pearson']:.2f})\nRMSE {summary['rmse']:.1f} g/kg   "
            f"bias {summary['bias']:+.1f} g/kg\nPICP {summary['picp']:.2f} (nominal {summary['interval']:.2f})   "
            f"n {summary['n']}")
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.8"})
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_residual_map(table: pd.DataFrame, samples: pd.DataFrame, outline: list, path: Path) -> None:
    """Test residuals (ensemble − observed) at their locations over the region, the other rows in grey."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    for xs, ys in outline:
        ax.plot(np.asarray(xs) / 1000, np.asarray(ys) / 1000, color="0.3", lw=1)
    ax.scatter(samples["x"] / 1000, samples["y"] / 1000, s=3, c="0.8", linewidths=0, label="other survey rows")
    limit = float(np.nanpercentile(np.abs(table["residual"]), 95)) or 1.0
    order = np.argsort(np.abs(table["residual"].to_numpy()))  # the largest errors drawn on top
    image = ax.scatter(table["x"].iloc[order] / 1000, table["y"].iloc[order] / 1000,
                       c=table["residual"].iloc[order], cmap="RdBu_r", vmin=-limit, vmax=limit, s=22,
                       edgecolors="0.2", linewidths=0.3, label="test rows")
    fig.colorbar(image, ax=ax, shrink=0.8, extend="both", label="predicted − observed SOC (g/kg)")
    ax.set(aspect="equal", xlabel="easting (km)", ylabel="northing (km)",
           title="Test residuals: red over-, blue under-predicted")
    ax.legend(loc="lower left", fontsize=8, markerscale=1.5)
    save_figure(fig, path, dpi=110)


def plot_variograms(fields: list[ResidualField], path: Path) -> None:
    """Each run's empirical variogram of its training residuals (points) and the fitted model (line)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for run, field in enumerate(fields):
        lags, gamma, pairs = empirical_variogram(field.xy, field.residuals)
        colour = plt.cm.tab10(run % 10)
        used = pairs > 0
        ax.scatter(lags[used], gamma[used], s=12, color=colour, alpha=0.7)
        h = np.linspace(0.0, MAX_LAG_KM, 200)
        v = field.variogram
        ax.plot(h, v(h), color=colour, lw=1.2,
                label=f"run {run}: nugget {v.nugget:.3g}, sill {v.sill:.3g}, range a {v.range_km:.1f} km")
    unit = "(log ratio)²" if fields[0].space == "log" else "(g/kg)²"
    ax.set(xlim=(0, MAX_LAG_KM), ylim=(0, None), xlabel="distance between training rows (km)",
           ylabel=f"semivariance {unit}",
           title="Variogram of the runs' training residuals (exponential: 95 % of the sill at 3a)")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------------- stage


def write_outputs(summary: dict, table: pd.DataFrame, calibration: dict, samples: pd.DataFrame,
                  outline: list, metrics_dir: str | Path = METRICS_DIR, plots_dir: str | Path = PLOTS_DIR,
                  calibration_path: str | Path = CALIBRATION, fields: list[ResidualField] = ()) -> None:
    """metrics.json through dvclive, plot data and PNGs (with kriging `fields`, their variograms), the
    calibration; each written atomically."""
    from dvclive import Live  # dvclive reads git and DVC state at import; only the stage needs it

    with atomic_path(plots_dir) as tmp:
        tmp.mkdir()
        table.to_csv(tmp / "predictions.csv", index=False)
        error_by_year(table).to_csv(tmp / "error_by_year.csv", index=False)
        coverage_curve(table["observed"], table["ensemble"], table["std"], calibration,
                       ensemble=summary["mode"] == "holdout",
                       kappa=table.get("kriging_variance")).to_csv(tmp / "coverage.csv", index=False)
        plot_scatter(table, summary, tmp / "predicted_vs_observed.png")
        plot_residual_map(table, samples, outline, tmp / "residual_map.png")
        if fields:
            plot_variograms(fields, tmp / "variogram.png")
    write_json(calibration_path, calibration)
    with atomic_path(metrics_dir) as tmp:
        live = Live(dir=str(tmp), dvcyaml=False, save_dvc_exp=False)
        live.summary = summary
        live.end()


def main(params) -> None:
    """Read patches, samples, split and models/run_*.pt; write metrics/evaluate/, plots/evaluate/, data/evaluate/
    (the interval calibration and the kriging fields)."""
    from socmap.predict import load_ensemble
    from socmap.region import Region

    cfg = params.evaluate
    grid_crs = json.loads(Path(REPORT).read_text())["grid"]["crs"]
    require_projected(grid_crs, cfg.kriging, REPORT)
    samples = pd.read_parquet(SAMPLES)
    patches = np.load(PATCHES, mmap_mode="r")
    predictors = load_ensemble(MODELS)
    roles = roles_matrix(pd.read_parquet(SPLIT), samples["row_id"].to_numpy(), len(predictors))
    targets, xy = samples["target"].to_numpy(np.float64), samples[["x", "y"]].to_numpy(np.float64)
    unkriged = np.stack([p.predict(patches, cfg.batch_size) for p in predictors])
    predictions, kriging = krige_runs(xy, targets, unkriged, roles, cfg.kriging, cfg.kriging_neighbours)
    fields = [] if kriging is None else kriging.fields
    static = np.isin(list(predictors[0].bands), params.data.static_bands)
    baselines, chosen = baseline_predictions(patches, static, targets, roles, cfg.rf_trees, cfg.rf_min_samples_leaf,
                                             cfg.seed, xy, cfg.kriging, cfg.kriging_neighbours)
    truth, oracle = load_truth(params.data.points.path, samples)
    if truth is None:
        log.info("no truth.parquet beside %s: real data, no ceiling", params.data.points.path)
    summary, table, calibration = evaluate(samples, predictions, roles, baselines, params.split.mode, cfg.interval,
                                           cfg.bootstrap, cfg.seed, truth, oracle, kriging)
    for name, choice in chosen.items():
        summary["baselines"][name].update(choice)
    save_fields(FIELDS, fields)
    write_outputs(summary, table, calibration, samples, Region.from_config(params.data.region).outline(grid_crs),
                  fields=fields)
    log.info("test (%s, n %d): r2 %.3f (unkriged %s), rmse %.2f g/kg, bias %+.2f, picp %.3f (nominal %.2f); "
             "baselines r2 %s", params.split.mode, summary["n"], summary["r2"],
             f"{summary['kriging']['unkriged']['r2']:.3f}" if fields else "-", summary["rmse"], summary["bias"],
             summary["picp"], cfg.interval, ", ".join(f"{k} {v['r2']:.3f}" for k, v in summary["baselines"].items()))
