"""What a soil scientist would use instead of the network, fitted on the same training rows.

- ``training_mean``: the mean target of the training rows (the floor: r2 ≈ 0).
- ``rf_survey_year``: a random forest on the centre pixel of every band in the survey year, the
  usual digital-soil-mapping set-up.
- ``rf_features``: a random forest on hand-made context and history features: the centre pixel and
  the window mean of every band in every year of the window, and the centre minus the window mean in
  the survey year (the terrain-position idea behind TPI); static bands once, not once per year.
- ``rf_survey_year_kriged``, ``rf_features_kriged`` (with `evaluate.kriging` on): each forest with
  regression kriging of its out-of-bag residuals at the training rows (its in-bag residuals are
  close to 0 and would hide the spatial error), as the network is kriged from residuals of rows its
  runs did not train on.
- ``qrf``: a quantile regression forest (Meinshausen 2006; the model of SoilGrids and of the
  quantile-forest SOC maps of Bavaria and Europe) on the ``rf_features`` features, with its own
  interval at `evaluate.interval`, as those products publish it.

Every forest trains on each run's training rows and takes its leaf size from the run's stop rows
(as the network takes its epoch): the validation and test rows choose nothing.

`socmap baselines` is a stage of its own: it reads the patches and the split only, so an experiment
that changes the network (`train.*`) reuses its forests from DVC's cache, and evaluate reads
data/baselines/baselines.npz.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from socmap import paths
from socmap.applicability import history_features
from socmap.config import EvaluateConfig
from socmap.cores import usable_cores
from socmap.errors import SocmapError
from socmap.io import write_npz
from socmap.kriging import ResidualField
from socmap.metrics import r2_score
from socmap.patches import channel_names, is_static
from socmap.split import roles_matrix

if TYPE_CHECKING:  # the forests' libraries load when a forest is fitted: evaluate reads baselines.npz only
    from quantile_forest import RandomForestQuantileRegressor
    from sklearn.ensemble import RandomForestRegressor

log = logging.getLogger(__name__)

FORESTS = ("rf_survey_year", "rf_features")
TUNING_TREES = 50  # enough trees to rank leaf sizes; the chosen one is refitted with evaluate.rf_trees


def survey_year_features(patches: np.ndarray) -> np.ndarray:
    """[N, C]: every band's centre pixel in the survey year (the last time step)."""
    centre = patches.shape[2] // 2
    return np.asarray(patches[:, :, centre, centre, -1], dtype=np.float32)


def fit_forest(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, trees: int,
               leaf_sizes: tuple[int, ...], seed: int, quantiles: bool = False,
               threads: int = -1) -> tuple[RandomForestRegressor, int]:
    """A random forest with the leaf size that gives the best r2 on (`x_val`, `y_val`), the rows that
    choose it (a run's stop rows), refitted with `trees` trees (with its out-of-bag predictions of the
    training rows, ``oob_prediction_``).

    With `quantiles` the refit is a quantile regression forest: its trees are those of sklearn's forest
    of the same settings and seed, and `forest_mean` predicts from them as that forest does, so one fit
    serves the forest and the ``qrf`` baseline. `threads` fit the trees (-1: every core); the trees
    are the same for any number.
    """
    from quantile_forest import RandomForestQuantileRegressor
    from sklearn.ensemble import RandomForestRegressor

    def forest(n_trees: int, leaf: int) -> RandomForestRegressor:
        # max_features 1/3: the regression default of Breiman's forests (and of R's randomForest).
        # Predicting on one thread: threads add up the trees in any order, and the last bits of the
        # metrics would change from run to run (and dvc.lock with them).
        kind = RandomForestQuantileRegressor if quantiles and n_trees == trees else RandomForestRegressor
        return kind(n_estimators=n_trees, min_samples_leaf=leaf, max_features=1 / 3, oob_score=n_trees == trees,
                    n_jobs=threads, random_state=seed).fit(x_train, y_train).set_params(n_jobs=1)

    if len(leaf_sizes) > 1:
        scores = [r2_score(y_val, forest(min(trees, TUNING_TREES), leaf).predict(x_val)) for leaf in leaf_sizes]
        leaf = leaf_sizes[int(np.nanargmax(scores))]
    else:
        leaf = leaf_sizes[0]
    return forest(trees, leaf), leaf


def forest_mean(forest: RandomForestRegressor, x: np.ndarray) -> np.ndarray:
    """The random forest's prediction, the mean over the trees of their leaf means, for a quantile
    forest too (whose own ``predict`` gives quantiles)."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor.predict(forest, x)


def baseline_names(kriging: str) -> list[str]:
    """The baselines evaluated with `evaluate.kriging` = `kriging`, in report order."""
    return ["training_mean", *FORESTS, *([f"{name}_kriged" for name in FORESTS] if kriging != "none" else []),
            "qrf"]


@dataclass(frozen=True)
class Baselines:
    """Each baseline's predictions of each run's test rows ([K, N], NaN where a row is not test in that
    run), the bounds of those with an interval, and the leaf sizes chosen."""

    predictions: dict[str, np.ndarray]
    bounds: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (lower, upper), each [K, N]
    chosen: dict[str, dict]  # forest -> {"min_samples_leaf": [per run]}


def quantile_forest(forest: RandomForestQuantileRegressor, x_test: np.ndarray, interval: float) -> np.ndarray:
    """[3, M] the mean and the bounds of the `interval` interval of a quantile regression forest."""
    tail = (1.0 - interval) / 2.0
    return np.vstack([forest.predict(x_test, quantiles="mean"),
                      forest.predict(x_test, quantiles=[tail, 1.0 - tail]).T])


@dataclass(frozen=True)
class ForestJob:
    """One forest of one run: its features at the run's training, stop and test rows, and what it reports."""

    run: int
    name: str  # one of FORESTS
    x: dict[str, np.ndarray]  # role (train, stop, test) -> features of those rows
    y: dict[str, np.ndarray]  # role (train, stop) -> targets, g/kg
    xy: dict[str, np.ndarray]  # role (train, test) -> positions, metres
    cfg: EvaluateConfig


def fit_run_forest(job: ForestJob, threads: int = -1) -> dict[str, np.ndarray | int]:
    """`job`'s forest fitted on its run's training rows: its leaf size and its predictions of the run's
    test rows, kriged (with `evaluate.kriging` on) and, for ``rf_features``, the quantile forest's mean
    and bounds (``qrf``, ``qrf_lower``, ``qrf_upper``)."""
    cfg, name = job.cfg, job.name
    model, leaf = fit_forest(job.x["train"], job.y["train"], job.x["stop"], job.y["stop"], cfg.rf_trees,
                             cfg.rf_min_samples_leaf, cfg.seed + job.run, quantiles=name == "rf_features",
                             threads=threads)
    fitted: dict[str, np.ndarray | int] = {"leaf": leaf, name: forest_mean(model, job.x["test"])}
    if cfg.kriging != "none":
        field = ResidualField.fit(job.xy["train"], job.y["train"], model.oob_prediction_, cfg.kriging,
                                  cfg.kriging_neighbours)
        fitted[f"{name}_kriged"] = field.correct(fitted[name], *field.krige(job.xy["test"]))
    if name == "rf_features":
        fitted["qrf"], fitted["qrf_lower"], fitted["qrf_upper"] = quantile_forest(model, job.x["test"], cfg.interval)
    return fitted


def fit_in_worker(job: ForestJob) -> dict[str, np.ndarray | int]:
    """`fit_run_forest` in a worker process: one thread each, the workers side by side."""
    return fit_run_forest(job, threads=1)


def baseline_predictions(patches: np.ndarray, static: np.ndarray, targets: np.ndarray, roles: np.ndarray,
                         cfg: EvaluateConfig, xy: np.ndarray, workers: int = 1) -> Baselines:
    """Each baseline's prediction of each run's test rows, fitted on that run's training rows.

    Args:
        patches: [N, C, W, W, T]; static: [C] bool; targets: [N] g/kg.
        roles: [K, N] role of every row in every run (train, stop, val, test, buffer).
        cfg: evaluate.* (rf_trees, rf_min_samples_leaf, seed, interval, kriging, kriging_neighbours).
        xy: [N, 2] row positions (metres).
        workers: processes that fit the forests side by side, one thread each (1: here, on every
            core); the forests, and so the predictions, are the same for any number.
    """
    if not cfg.rf_min_samples_leaf:
        raise SocmapError("evaluate.rf_min_samples_leaf = []: give at least one leaf size, e.g. [5]")
    features = {"rf_survey_year": survey_year_features(patches), "rf_features": history_features(patches, static)}
    runs, rows = roles.shape
    predictions = {name: np.full((runs, rows), np.nan) for name in baseline_names(cfg.kriging)}
    bounds = {"qrf": (np.full((runs, rows), np.nan), np.full((runs, rows), np.nan))}
    chosen: dict[str, dict] = {name: {"min_samples_leaf": []} for name in features}
    jobs = []
    for run in range(runs):
        where = {role: roles[run] == role for role in ("train", "stop", "test")}
        predictions["training_mean"][run, where["test"]] = targets[where["train"]].mean()
        for name, x in features.items():
            jobs.append(ForestJob(run, name, {role: x[rows_] for role, rows_ in where.items()},
                                  {role: targets[where[role]] for role in ("train", "stop")},
                                  {role: xy[where[role]] for role in ("train", "test")}, cfg))
    # the quantile forests take longest: they go first, so that no worker is left with one at the end
    # (a stable sort: each forest's runs stay in run order)
    jobs.sort(key=lambda job: job.name != "rf_features")
    if workers > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            fitted = list(pool.map(fit_in_worker, jobs))
    else:
        fitted = [fit_run_forest(job) for job in jobs]

    for job, result in zip(jobs, fitted):
        test = roles[job.run] == "test"
        chosen[job.name]["min_samples_leaf"].append(result.pop("leaf"))
        if "qrf" in result:
            bounds["qrf"][0][job.run, test] = result.pop("qrf_lower")
            bounds["qrf"][1][job.run, test] = result.pop("qrf_upper")
        for name, values in result.items():
            predictions[name][job.run, test] = values
    return Baselines(predictions, bounds, chosen)


def save_baselines(path: str | Path, baselines: Baselines, row_ids: np.ndarray) -> None:
    """`baselines` in one ``.npz`` (atomically), with the row_id of every column, for the evaluate stage."""
    arrays = {"row_id": np.asarray(row_ids, dtype=np.int64)}
    arrays.update({f"prediction__{name}": values for name, values in baselines.predictions.items()})
    for name, (lower, upper) in baselines.bounds.items():
        arrays[f"lower__{name}"], arrays[f"upper__{name}"] = lower, upper
    for name, choice in baselines.chosen.items():
        arrays[f"leaf__{name}"] = np.asarray(choice["min_samples_leaf"], dtype=np.int64)
    write_npz(path, arrays)


def load_baselines(path: str | Path, row_ids: np.ndarray, runs: int) -> Baselines:
    """The `Baselines` that `save_baselines` wrote, checked against the sample rows and the number of runs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise SocmapError(f"{path}: not found; run `socmap baselines` (or `dvc repro`) first") from None
    except (ValueError, OSError) as error:
        raise SocmapError(f"{path}: not a socmap baselines file ({error}); rerun `socmap baselines`") from None
    kinds: dict[str, dict[str, np.ndarray]] = {"prediction": {}, "lower": {}, "upper": {}, "leaf": {}}
    for key, values in arrays.items():
        kind, _, name = key.partition("__")
        if kind in kinds:
            kinds[kind][name] = values
    if "row_id" not in arrays or not kinds["prediction"]:
        raise SocmapError(f"{path}: not a socmap baselines file; rerun `socmap baselines`")
    if not np.array_equal(arrays["row_id"], row_ids):
        raise SocmapError(f"{path}: its rows differ from those of {paths.SAMPLES}; rerun `socmap baselines`")
    made = {len(values) for values in kinds["prediction"].values()}
    if made != {runs}:
        raise SocmapError(f"{path}: its runs ({', '.join(map(str, sorted(made)))}) differ from the {runs} runs in "
                          f"{paths.MODELS}; rerun `socmap baselines`")
    bounds = {name: (lower, kinds["upper"][name]) for name, lower in kinds["lower"].items()}
    return Baselines(kinds["prediction"], bounds,
                     {name: {"min_samples_leaf": [int(v) for v in leaf]} for name, leaf in kinds["leaf"].items()})


def main(params) -> None:
    """`socmap baselines`: patches, samples and split -> data/baselines/baselines.npz (every forest's
    predictions of each run's test rows, the quantile forest's bounds, the leaf sizes chosen)."""
    samples = pd.read_parquet(paths.SAMPLES, columns=["row_id", "x", "y", "target"])
    patches = np.load(paths.PATCHES, mmap_mode="r")
    split = pd.read_parquet(paths.SPLIT, columns=["row_id", "run", "role"])
    row_ids = samples["row_id"].to_numpy()
    channels = channel_names(params.data.bands, params.sample.context)
    if patches.ndim != 5 or patches.shape[1] != len(channels) or len(patches) != len(samples):
        raise SocmapError(f"{paths.PATCHES}: shape {patches.shape} does not match the {len(samples)} rows of "
                          f"{paths.SAMPLES} and the {len(channels)} channels of data.bands and sample.context; "
                          "rerun `socmap sample`")
    static = np.array([is_static(channel, params.data.static_bands) for channel in channels])
    roles = roles_matrix(split, row_ids, split["run"].nunique())
    baselines = baseline_predictions(patches, static, samples["target"].to_numpy(np.float64), roles,
                                     params.evaluate, samples[["x", "y"]].to_numpy(np.float64),
                                     workers=usable_cores())
    save_baselines(paths.BASELINES, baselines, row_ids)
    log.info("%s: %s over %d runs; leaf sizes %s", paths.BASELINES, ", ".join(baselines.predictions), len(roles),
             {name: choice["min_samples_leaf"] for name, choice in baselines.chosen.items()})
