"""`socmap evaluate`: test metrics in g/kg, baselines side by side, the ceiling, calibrated intervals, plots.

Every run's checkpoint predicts every row; with `evaluate.kriging` on, the predictions are
regression-kriged from residuals at rows the predicting model did not train on
(`socmap.kriging.krige_runs`) before anything is scored, and the fields go to the map stage. The
baselines' predictions come from the baselines stage (`socmap.baselines`), the figures from
`socmap.scoring.score` (every one in plots/evaluate/details.json, the `headline` to compare
experiments on in metrics.json), the pictures from `socmap.plots`. A simulated world's truth comes
from the sample stage (`socmap.truth`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from socmap import paths
from socmap.applicability import applicability_metrics, error_profile, fit_applicability, test_applicability
from socmap.baselines import load_baselines
from socmap.correlation import ErrorCorrelation
from socmap.errors import SocmapError
from socmap.io import atomic_path, read_json, write_json
from socmap.kriging import ResidualField, krige_runs, save_fields
from socmap.patches import is_static
from socmap.plots import plot_coverage_by, plot_residual_map, plot_scatter, plot_variograms
from socmap.scoring import Design, coverage_by, coverage_by_distance, coverage_curve, error_by_year, headline, score
from socmap.split import roles_matrix, test_groups
from socmap.truth import load_truth

log = logging.getLogger(__name__)


def read_design(split: pd.DataFrame, row_ids: np.ndarray, runs: int, mode: str) -> Design:
    """The roles [runs, N] of each sample row (in samples order) in each run, each row's test block and
    each run's test group; checks split.parquet covers them."""
    roles = roles_matrix(split, row_ids, runs)
    tested = split[split["role"] == "test"].drop_duplicates("row_id").set_index("row_id")["block"]
    blocks = tested.reindex(row_ids).fillna(-1).to_numpy(np.int64)
    return Design(mode, roles, blocks, test_groups(roles))


def write_outputs(summary: dict, table: pd.DataFrame, calibration: dict, samples: pd.DataFrame, outline: list,
                  fields: list[ResidualField] = (), root: Path = Path(".")) -> None:
    """metrics.json (the `headline` of `summary`) through dvclive; every figure (details.json), plot data and
    PNGs (with kriging `fields`, their variograms; with the test rows' DI, the error profiles), the
    calibration and the fields, under the project `root`; each written atomically."""
    from dvclive import Live  # dvclive reads git and DVC state at import; only the stage needs it

    with atomic_path(root / paths.EVALUATE_PLOTS) as tmp:
        tmp.mkdir()
        write_json(tmp / paths.EVALUATE_DETAILS.name, summary)
        table.to_csv(tmp / "predictions.csv", index=False)
        error_by_year(table).to_csv(tmp / "error_by_year.csv", index=False)
        coverage_curve(table, calibration).to_csv(tmp / "coverage.csv", index=False)
        by = coverage_by(table, calibration)
        by.to_csv(tmp / "coverage_by.csv", index=False)
        coverage_by_distance(by).to_csv(tmp / "coverage_by_distance.csv", index=False)
        plot_coverage_by(by, float(calibration["interval"]), tmp / "coverage_by_distance.png")
        plot_scatter(table, summary, tmp / "predicted_vs_observed.png")
        plot_residual_map(table, samples, outline, tmp / "residual_map.png")
        if "dissimilarity" in table:
            for column, name in (("dissimilarity", "error_by_dissimilarity"), ("distance_km", "error_by_distance")):
                error_profile(table, column, summary["interval"]).to_csv(tmp / f"{name}.csv", index=False)
        plot_variograms(list({id(f): f for f in fields}.values()), tmp / "variogram.png")
    save_fields(root / paths.KRIGING_FIELDS, fields)
    write_json(root / paths.CALIBRATION, calibration)
    with atomic_path(root / paths.EVALUATE_METRICS) as tmp:
        live = Live(dir=str(tmp), dvcyaml=False, save_dvc_exp=False)
        live.summary = headline(summary)
        live.end()


def main(params) -> None:
    """Read patches, samples (with their truth), split, the baselines and models/run_*.pt; write metrics/evaluate/,
    plots/evaluate/ (details.json, the plot data and pictures), data/evaluate/ (the interval calibration, the
    kriging fields, the DI's reference and the errors places and years share)."""
    from socmap.predict import load_ensemble
    from socmap.region import Region
    from socmap.stacked import StackedEnsemble

    cfg = params.evaluate
    report = read_json(paths.REPORT, "sample")
    working = report.get("working_crs")  # the CRS of the samples' x, y
    if working is None:
        raise SocmapError(f"{paths.REPORT}: no working_crs (written by an older socmap); rerun `socmap sample`")
    samples = pd.read_parquet(paths.SAMPLES)
    patches = np.load(paths.PATCHES, mmap_mode="r")
    predictors = load_ensemble(paths.MODELS)
    design = read_design(pd.read_parquet(paths.SPLIT), samples["row_id"].to_numpy(), len(predictors),
                         params.split.mode)
    targets, xy = samples["target"].to_numpy(np.float64), samples[["x", "y"]].to_numpy(np.float64)
    unkriged = StackedEnsemble(predictors).predict(patches, cfg.batch_size)  # [runs, N]
    predictions, kriging = krige_runs(xy, targets, unkriged, design.roles, design.groups, cfg,
                                      params.split.distance_threshold * 1000.0)
    static = np.array([is_static(name, params.data.static_bands) for name in predictors[0].spec.band_names])
    baselines = load_baselines(paths.BASELINES, samples["row_id"].to_numpy(), len(predictors))
    truth = load_truth(samples, report)
    if truth is None:
        log.info("%s has no rows: real data, no ceiling", paths.TRUTH)
    summary, table, calibration = score(samples, predictions, design, baselines, cfg, truth, kriging)
    for name, choice in baselines.chosen.items():
        summary["baselines"][name].update(choice)
    # where the map can be trusted: the DI's reference and threshold, the errors places and years share
    applicability, cv_di, features = fit_applicability(predictors, patches, targets, design.roles, static,
                                                       cfg.batch_size, cfg.seed)
    table = test_applicability(table, applicability, features, design.roles,
                               pd.Index(samples["row_id"]).get_indexer(table["row_id"]))
    summary.update(applicability_metrics(table, applicability, predictors[0].spec.band_names, cv_di, cfg.interval))
    correlation = ErrorCorrelation.fit(samples, predictions, design.roles, calibration, kriging)
    summary["error_correlation"] = correlation.to_dict()
    applicability.save(paths.APPLICABILITY)
    write_json(paths.ERROR_CORRELATION, correlation.to_dict())
    fields = [] if kriging is None else kriging.fields
    write_outputs(summary, table, calibration, samples, Region.from_config(params.data.region).outline(working["crs"]),
                  fields)
    log.info("validation r2 %.3f; test (%s, n %d): r2 %.3f (unkriged %s), rmse %.2f g/kg, bias %+.2f, picp %.3f "
             "(nominal %.2f); baselines r2 %s", headline(summary)["val_r2"], params.split.mode, summary["n"],
             summary["r2"],
             f"{summary['kriging']['unkriged']['r2']:.3f}" if fields else "-", summary["rmse"], summary["bias"],
             summary["picp"], cfg.interval, ", ".join(f"{k} {v['r2']:.3f}" for k, v in summary["baselines"].items()))
