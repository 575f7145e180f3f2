"""What the training budget costs and buys: validation r2 against epochs, patience, batch size and runs,
across worlds of the simulated family; prints one JSON object on the last line.

Each world (the default and family worlds, `WORLDS`) is simulated, sampled and split in-process as the
stages do it, at the repository's params. Every run of the split trains once per (batch size, epochs)
through `socmap.training.train_run` with early stopping off; after every epoch the stage scores the
run's stop rows (its stop r2, as logged) and the study's model predicts the run's validation rows
(g/kg, the `train.tta` views, as the stage validates). Early stopping with each patience is then read
off the stop-row r2 curve exactly as `train_run` decides: it stops where the stage would stop and keeps
the epoch of the best stop r2. Validation rows choose nothing, and test rows are never predicted.

Figures per world and budget (means over the runs):

- val_r2: the kept epoch's r2 on the run's validation rows, the figure the train stage logs; unbiased,
  since the epoch was chosen on the stop rows;
- stop_r2: the kept epoch's r2 on the stop rows (the best of the curve up to the stop);
- epochs: epochs trained (the stop), kept_epoch: the one kept (1-based), seconds: the epochs' wall time
  (the stage's stop-row scoring included, the study's validation predictions excluded; a shared
  machine's load inflates it, so `epochs` is the figure to compare costs by).

`forests` (with --forest-trees): the baselines' random forests of the evaluate stage fitted with each
number of trees (`evaluate.rf_trees`) on each run's training rows (leaf size chosen on its stop rows,
as the stage chooses it), their r2 on its validation rows and the seconds of a fit.

`ensemble` (with --ensemble-worlds): members trained on run 0's training rows with train.seed 0..K-1
(one budget per entry of --ensemble-budgets), each keeping the epoch its stop-row curve chooses; their
mean's r2 on run 0's validation rows for 1..K members: what `train.num_runs` buys in accuracy (it also
sets the spread the intervals are calibrated on, which no r2 shows).

    python benchmarks/training_budget.py [--worlds default context_15km ...] [--runs 3] [--budgets 256:40 ...]

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
from socmap.models import ModelSpec, views
from socmap.patches import channel_names
from socmap.sample import sample
from socmap.simulate import simulate
from socmap.split import assign_roles, read_samples
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
    """A ModelSpec that keeps the model it last built, so that the epoch callback can predict with it."""

    last: torch.nn.Module | None = None

    def build(self) -> torch.nn.Module:
        RecordingSpec.last = super().build()
        return RecordingSpec.last


@dataclasses.dataclass
class Curve:
    """One training: per epoch, the stop rows' r2 (as `train_run` scored them), the validation predictions
    (g/kg) and the seconds it trained."""

    stop_r2: list[float]
    predictions: list[np.ndarray]
    seconds: list[float]


def world_inputs(params: Params, world: dict, folder: Path) -> tuple[Params, train.TrainInputs]:
    """Simulate, sample and split one world under `folder`, as the stages do; the params that read it."""
    simulate(dataclasses.replace(params.simulate, **world), folder / "world")
    params = replace(params, **{"data.rasters.dir": str(folder / "world" / paths.WORLD_RASTERS),
                                "data.points.path": str(folder / "world" / paths.WORLD_POINTS)})
    processed = folder / paths.PROCESSED
    sample(params.data, params.sample, processed)
    prediction = pd.read_parquet(processed / paths.PREDICTION_POINTS.name)[["x", "y"]].to_numpy(float)
    split, _ = assign_roles(read_samples(processed / paths.SAMPLES.name), params.split, params.train.num_runs,
                            prediction)
    split_path = folder / paths.SPLIT
    split_path.parent.mkdir(parents=True)
    split.to_parquet(split_path, index=False)
    return params, train.read_inputs(processed / paths.PATCHES.name, processed / paths.SAMPLES.name, split_path)


def train_curve(data: training.RunData, params: Params, run: int, folder: Path) -> Curve:
    """Train `run` for train.epochs epochs without early stopping through `training.train_run`."""
    cfg = dataclasses.replace(params.train, patience=0)
    spec = RecordingSpec(**vars(ModelSpec.from_params(cfg, channel_names(params.data.bands, params.sample.context),
                                                      params.sample.window_size, params.sample.time_before)))
    curve, clock = Curve([], [], []), [time.perf_counter()]

    def after_epoch(_run: int, record: dict) -> None:
        curve.seconds.append(time.perf_counter() - clock[0])
        curve.stop_r2.append(record["stop_r2"])
        net = RecordingSpec.last
        net.eval()  # train_epoch puts it back in training mode; eval draws no random numbers
        with torch.no_grad():
            z = symmetric_mean(net, data.val.x, views(cfg)).float()
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


def read_budget(curve: Curve, observed: np.ndarray, patience: int) -> dict:
    """The stage's figures for one curve under `patience`: the kept epoch's val and stop r2, the cost."""
    kept, trained = kept_epoch(np.array(curve.stop_r2), patience)
    return {"val_r2": r2_score(observed, curve.predictions[kept]), "stop_r2": float(curve.stop_r2[kept]),
            "epochs": trained, "kept_epoch": kept + 1, "seconds": float(np.sum(curve.seconds[:trained]))}


def ensemble_r2(curves: list[Curve], observed: np.ndarray, patience: int) -> list[float]:
    """Validation r2 of the mean of the first 1..K members, each keeping the epoch its stop rows choose."""
    kept = [c.predictions[kept_epoch(np.array(c.stop_r2), patience)[0]] for c in curves]
    return [round(r2_score(observed, np.mean(kept[:size], axis=0)), 4) for size in range(1, len(kept) + 1)]


def forest_budget(params: Params, inputs: train.TrainInputs, runs: int, tree_counts: list[int]) -> dict:
    """The baselines' forests (`socmap.baselines.fit_forest`, leaf size chosen on the stop rows as evaluate
    chooses it) with each number of trees: r2 on the runs' validation rows and the seconds of a fit."""
    patches, targets = inputs.patches, inputs.samples["target"].to_numpy(np.float64)
    static = np.isin(list(params.data.bands), params.data.static_bands)
    features = {"rf_survey_year": baselines.survey_year_features(patches),
                "rf_features": baselines.history_features(patches, static)}
    out: dict[str, dict] = {}
    for trees in tree_counts:
        scores, seconds = {name: [] for name in features}, []
        for run in range(runs):
            pos = train.run_rows(inputs.samples, inputs.split, run)
            for name, x in features.items():
                started = time.perf_counter()
                model, _ = baselines.fit_forest(x[pos["train"]], targets[pos["train"]], x[pos["stop"]],
                                                targets[pos["stop"]], trees, params.evaluate.rf_min_samples_leaf,
                                                params.evaluate.seed + run)
                seconds.append(time.perf_counter() - started)
                scores[name].append(round(r2_score(targets[pos["val"]], model.predict(x[pos["val"]])), 4))
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
        forests = forest_budget(params, inputs, args.runs, args.forest_trees) if args.forest_trees else None
        budgets: dict[str, list[dict]] = {}
        for batch_size, epochs in args.budgets:
            cfg = replace(params, **{"train.batch_size": batch_size, "train.epochs": epochs})
            for run in range(args.runs):
                data = training.prepare_run(inputs.patches, targets, train.run_rows(inputs.samples, inputs.split, run),
                                            cfg.train)
                curve = train_curve(data, cfg, run, folder)
                for patience in PATIENCES:
                    key = f"batch{batch_size}_epochs{epochs}_patience{patience}"
                    budgets.setdefault(key, []).append(read_budget(curve, data.val.target, patience))
        result = {"rows": len(targets), **({"forests": forests} if forests else {}), "budgets": {
            key: {"batch_size": int(key.split("_")[0][5:]), "epochs_max": int(key.split("_")[1][6:]),
                  "patience": int(key.split("_")[2][8:]),
                  **{name: round(float(np.mean([r[name] for r in runs])), 4) for name in runs[0]},
                  **{f"{name}_runs": [round(r[name], 4) for r in runs] for name in ("val_r2", "stop_r2", "epochs",
                                                                                     "kept_epoch")}}
            for key, runs in budgets.items()}}
        if ensemble:
            positions = train.run_rows(inputs.samples, inputs.split, 0)
            result["ensemble"] = {}
            for batch_size, epochs, patience in args.ensemble_budgets:
                cfg = replace(params, **{"train.batch_size": batch_size, "train.epochs": epochs})
                data = training.prepare_run(inputs.patches, targets, positions, cfg.train)
                curves = [train_curve(data, replace(cfg, **{"train.seed": seed}), 0, folder)
                          for seed in range(args.members)]
                result["ensemble"][f"batch{batch_size}_epochs{epochs}_patience{patience}"] = {
                    "members_1_to_k_val_r2": ensemble_r2(curves, data.val.target, patience)}
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
