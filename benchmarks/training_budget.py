"""What the training budget costs and buys: validation r2 against epochs, patience, batch size and runs,
across worlds of the simulated family; prints one JSON object on the last line.

Each world (the default and family worlds, `WORLDS`) is simulated, sampled and split in-process as the
stages do it, at the repository's params. Every run of the split trains once per (batch size, epochs)
through `socmap.training.train_run` with early stopping off, and after every epoch its model predicts
the run's validation rows (g/kg, `train.tta` views, as the stage validates). Early stopping with each
patience is then read off those curves: it stops where the stage would stop, and keeps the epoch the
stage would keep. Only validation rows are ever predicted; test rows choose nothing.

Figures per world and budget (means over the runs):

- val_r2: the kept epoch's r2 on the run's validation rows, the figure the train stage logs. The
  epoch is chosen on those same rows, so it flatters long budgets (more epochs to pick from);
- val_r2_crossfit: the epoch chosen (and the stop decided) on one half of the validation sites and
  scored on the other half, both ways round, averaged: the same figure without the selection's bias;
- epochs: epochs trained (the stop), seconds: their wall time (predictions excluded; a shared
  machine's load inflates it, so `epochs` is the figure to compare costs by).

`forests` (with --forest-trees): the baselines' random forests of the evaluate stage fitted with each
number of trees (`evaluate.rf_trees`) on each run's training rows, their r2 on its validation rows and
the seconds of a fit (leaf size tuned as the stage tunes it).

`ensemble` (with --ensemble-worlds): members trained on run 0's training rows with train.seed 0..K-1
(one budget per entry of --ensemble-budgets), their mean's crossfitted r2 on run 0's validation rows for
1..K members: what `train.num_runs` buys in accuracy (it also sets the spread the intervals are
calibrated on, which no r2 shows).

    python benchmarks/training_budget.py [--worlds default context_15km ...] [--runs 3]

Training runs at `train.threads` (1) threads; a default world takes about 10 minutes of one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from socmap import baselines, paths, train, training
from socmap.config import Params, load_params, replace
from socmap.launch import make_accelerator
from socmap.metrics import r2_score
from socmap.models import ModelSpec
from socmap.sample import sample
from socmap.simulate import simulate
from socmap.split import assign_roles
from socmap.transforms import symmetric_mean

from machine import cpu_note

ROOT = Path(__file__).resolve().parents[1]
# the default world and the family's suggested settings (README, "A family of worlds")
WORLDS = {
    "default": {},
    "context_15km": {"context_km": 15.0},
    "history_3_recent": {"history_years": 3, "history_weighting": "recent"},
    "aspect_0.2": {"aspect_effect": 0.2},
    "interaction_0.25": {"interaction": 0.25},
    "nonstationary_0.6": {"nonstationary": 0.6},
    "latent_classes_4": {"latent_classes": 4},
}
PATIENCES = (15, 10, 5, 0)  # 0: off


class RecordingSpec(ModelSpec):
    """A ModelSpec that keeps the model it builds, so that the epoch callback can predict with it."""

    built: list = []

    def build(self) -> torch.nn.Module:
        model = super().build()
        RecordingSpec.built.append(model)
        return model


@dataclasses.dataclass
class Curve:
    """One training: per epoch, the validation predictions (g/kg) and the seconds it trained."""

    predictions: list[np.ndarray]
    seconds: list[float]


def world_inputs(params: Params, world: dict, folder: Path) -> tuple[Params, train.TrainInputs]:
    """Simulate, sample and split one world under `folder`, as the stages do; the params that read it."""
    simulate(dataclasses.replace(params.simulate, **world), folder / "world")
    params = replace(params, **{"data.rasters.dir": str(folder / "world" / paths.WORLD_RASTERS),
                                "data.points.path": str(folder / "world" / paths.WORLD_POINTS)})
    processed = folder / paths.PROCESSED
    sample(params.data, params.sample, processed)
    samples = pd.read_parquet(processed / paths.SAMPLES.name)
    split_path = folder / paths.SPLIT
    split_path.parent.mkdir(parents=True)
    assign_roles(samples, params.split, params.train.num_runs).to_parquet(split_path, index=False)
    return params, train.read_inputs(processed / paths.PATCHES.name, processed / paths.SAMPLES.name, split_path)


def train_curve(data: training.RunData, params: Params, run: int, folder: Path) -> Curve:
    """Train `run` for train.epochs epochs without early stopping through `training.train_run`."""
    cfg = dataclasses.replace(params.train, patience=0)
    spec = RecordingSpec(**vars(ModelSpec.from_params(cfg, list(params.data.bands), params.sample.window_size,
                                                      params.sample.time_before)))
    curve, clock = Curve([], []), [time.perf_counter()]

    def after_epoch(_run: int, _record: dict) -> None:
        curve.seconds.append(time.perf_counter() - clock[0])
        net = RecordingSpec.built[-1]
        net.eval()  # train_epoch puts it back in training mode; eval draws no random numbers
        with torch.no_grad():
            z = symmetric_mean(net, data.x_val, cfg.tta)
        curve.predictions.append(data.target.inverse(z.double()).numpy())
        clock[0] = time.perf_counter()

    resume = training.Resume(folder / f"resume_{time.monotonic_ns()}.pt", "study")
    training.train_run(run, data, cfg, spec, make_accelerator(cfg), resume, callback=after_epoch)
    return curve


def kept_epoch(scores: np.ndarray, patience: int) -> tuple[int, int]:
    """(kept epoch, epochs trained) under early stopping on per-epoch `scores`, as `train_run` decides."""
    best, stale = 0, 0
    for epoch in range(1, len(scores)):
        if scores[epoch] > scores[best]:
            best, stale = epoch, 0
        else:
            stale += 1
        if patience and stale >= patience:
            return best, epoch + 1
    return best, len(scores)


def site_halves(samples: pd.DataFrame, val_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation rows split in two by site (a site's revisits stay together), as boolean masks."""
    sites = samples["site_id"].to_numpy()[val_pos]
    unique = np.unique(sites)
    first = np.isin(sites, np.random.default_rng(0).permutation(unique)[: len(unique) // 2])
    return first, ~first


def read_budget(curve: Curve, observed: np.ndarray, halves: tuple[np.ndarray, np.ndarray],
                patience: int) -> dict:
    """The stage's figures for one curve under `patience`: kept epoch's val r2, crossfitted r2, cost."""
    full = np.array([r2_score(observed, p) for p in curve.predictions])
    kept, trained = kept_epoch(full, patience)
    crossfit = []
    for choose, score in (halves, halves[::-1]):
        chosen, _ = kept_epoch(np.array([r2_score(observed[choose], p[choose]) for p in curve.predictions]),
                               patience)
        crossfit.append(r2_score(observed[score], curve.predictions[chosen][score]))
    return {"val_r2": float(full[kept]), "val_r2_crossfit": float(np.mean(crossfit)), "epochs": trained,
            "kept_epoch": kept + 1, "seconds": float(np.sum(curve.seconds[:trained]))}


def ensemble_r2(curves: list[Curve], observed: np.ndarray, halves: tuple[np.ndarray, np.ndarray],
                patience: int) -> list[float]:
    """Crossfitted r2 of the mean of the first 1..K members, each keeping its epoch chosen on one half."""
    out = []
    for size in range(1, len(curves) + 1):
        scores = []
        for choose, score in (halves, halves[::-1]):
            kept = [c.predictions[kept_epoch(np.array([r2_score(observed[choose], p[choose])
                                                       for p in c.predictions]), patience)[0]]
                    for c in curves[:size]]
            scores.append(r2_score(observed[score], np.mean(kept, axis=0)[score]))
        out.append(round(float(np.mean(scores)), 4))
    return out


def forest_budget(params: Params, inputs: train.TrainInputs, runs: int, tree_counts: list[int]) -> dict:
    """The baselines' forests (`socmap.baselines.fit_forest`, leaf size tuned as evaluate tunes it) with
    each number of trees: r2 on the runs' validation rows and the seconds of a fit."""
    patches, targets = inputs.patches, inputs.samples["target"].to_numpy(np.float64)
    static = np.isin(list(params.data.bands), params.data.static_bands)
    features = {"rf_survey_year": baselines.survey_year_features(patches),
                "rf_features": baselines.history_features(patches, static)}
    out: dict[str, dict] = {}
    for trees in tree_counts:
        scores, seconds = {name: [] for name in features}, []
        for run in range(runs):
            train_pos, val_pos = train.run_rows(inputs.samples, inputs.split, run)
            for name, x in features.items():
                started = time.perf_counter()
                model, _ = baselines.fit_forest(x[train_pos], targets[train_pos], x[val_pos], targets[val_pos], trees,
                                                params.evaluate.rf_min_samples_leaf, params.evaluate.seed + run)
                seconds.append(time.perf_counter() - started)
                scores[name].append(round(r2_score(targets[val_pos], model.predict(x[val_pos])), 4))
        out[f"trees{trees}"] = {**{f"{name}_val_r2_runs": values for name, values in scores.items()},
                                **{f"{name}_val_r2": round(float(np.mean(v)), 4) for name, v in scores.items()},
                                "seconds_per_fit": round(float(np.mean(seconds)), 2)}
    return out


def study_world(params: Params, world: dict, args, ensemble: bool) -> dict:
    """Every budget of `args` on one world."""
    with tempfile.TemporaryDirectory(prefix="socmap-budget-") as tmp:
        folder = Path(tmp)
        params, inputs = world_inputs(params, world, folder)
        targets = inputs.samples["target"].to_numpy(np.float64)
        samples = pd.read_parquet(folder / paths.SAMPLES)
        forests = forest_budget(params, inputs, args.runs, args.forest_trees) if args.forest_trees else None
        budgets: dict[str, list[dict]] = {}
        for batch_size, epochs in args.budgets:
            cfg = replace(params, **{"train.batch_size": batch_size, "train.epochs": epochs})
            for run in range(args.runs):
                train_pos, val_pos = train.run_rows(inputs.samples, inputs.split, run)
                data = training.prepare_run(inputs.patches, targets, train_pos, val_pos, cfg.train)
                curve = train_curve(data, cfg, run, folder)
                halves = site_halves(samples, val_pos)
                for patience in PATIENCES:
                    key = f"batch{batch_size}_epochs{epochs}_patience{patience}"
                    budgets.setdefault(key, []).append(read_budget(curve, data.target_val, halves, patience))
        result = {"rows": len(targets), **({"forests": forests} if forests else {}), "budgets": {
            key: {"batch_size": int(key.split("_")[0][5:]), "epochs_max": int(key.split("_")[1][6:]),
                  "patience": int(key.split("_")[2][8:]),
                  **{name: round(float(np.mean([r[name] for r in runs])), 4) for name in runs[0]},
                  **{f"{name}_runs": [round(r[name], 4) for r in runs] for name in ("val_r2", "val_r2_crossfit",
                                                                                     "epochs", "kept_epoch")}}
            for key, runs in budgets.items()}}
        if ensemble:
            train_pos, val_pos = train.run_rows(inputs.samples, inputs.split, 0)
            halves = site_halves(samples, val_pos)
            result["ensemble"] = {}
            for batch_size, epochs, patience in args.ensemble_budgets:
                cfg = replace(params, **{"train.batch_size": batch_size, "train.epochs": epochs})
                data = training.prepare_run(inputs.patches, targets, train_pos, val_pos, cfg.train)
                curves = [train_curve(data, replace(cfg, **{"train.seed": seed}), 0, folder)
                          for seed in range(args.members)]
                result["ensemble"][f"batch{batch_size}_epochs{epochs}_patience{patience}"] = {
                    "members_1_to_k_val_r2_crossfit": ensemble_r2(curves, data.target_val, halves, patience)}
    return result


def budget(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["default", "context_15km", "history_3_recent",
                                                         "latent_classes_4"], choices=list(WORLDS))
    parser.add_argument("--runs", type=int, default=3, help="split runs trained per budget")
    parser.add_argument("--budgets", nargs="*", type=budget,
                        default=[(256, 60), (256, 40), (256, 30), (256, 20), (512, 60), (512, 30)],
                        help="batch_size:epochs pairs; patience is read off each curve")
    parser.add_argument("--ensemble-worlds", nargs="*", default=["default"], choices=list(WORLDS))
    parser.add_argument("--ensemble-budgets", nargs="+", type=budget, default=[(256, 60, 15)],
                        help="batch_size:epochs:patience of the ensemble members")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--forest-trees", nargs="*", type=int, default=[300, 100],
                        help="evaluate.rf_trees values to compare (the baselines' forests); none: skip")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    worlds = {name: study_world(params, WORLDS[name], args, name in args.ensemble_worlds) for name in args.worlds}
    print(json.dumps({"cpu": cpu_note(), "worlds": worlds, "runs": args.runs, "threads": torch.get_num_threads(),
                      "wall_s": round(time.perf_counter() - started, 1),
                      "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}))


if __name__ == "__main__":
    main()
