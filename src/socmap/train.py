"""`socmap train`: one model per split run under accelerate, the best epoch of each kept, logged with dvclive.

holdout: runs 0..train.num_runs-1; kfold: every run of the split (train.num_runs for each of its
split.folds test folds). Each run trains as
`socmap.training` describes, on a CPU side by side with others in worker processes (`socmap.workers`,
train.parallel_runs); models/run_{k}.pt holds a copy of its best epoch's weights with what a
predictor needs (the model spec, the feature and target statistics of its training rows), and
models/best.pt the best run's; plots/train/curves.csv holds every run's epochs, one row each. Resume
states go to resume/train/run_{k}.pt while training runs, outside the stage's DVC outputs (an output
DVC must keep between runs, `persist`, would turn its run-cache off); they are deleted once training
completes. Under `accelerate launch` (train.num_processes > 1) only the main process logs and writes.
With train.monitor, dvclive also records the machine (CPU, memory, disk, GPU) and writes an HTML
report into monitor/train/, which neither git nor DVC tracks.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from dvclive import Live

from socmap import paths
from socmap.checkpoint import save_checkpoint
from socmap.config import Params, params_subset
from socmap.errors import SocmapError
from socmap.io import atomic_path
from socmap.launch import make_accelerator, relaunch
from socmap.models import ModelSpec
from socmap.patches import channel_names
from socmap.provenance import fingerprint
from socmap.training import LOGGED, EpochCallback, Resume, prepare_run
from socmap.workers import Job, run_workers, train_runs

log = logging.getLogger(__name__)

RUN_ROLES = ("train", "stop", "val")  # the roles of split.parquet a run trains, stops and validates on

# The params the train stage declares in dvc.yaml (tested): a checkpoint records these and no others (but
# WATCH_PARAMS), so that its bytes change only with what reruns the stage, and a fresh clone's `dvc repro`
# gives the same.
STAGE_PARAMS = ("data.bands", "sample.window_size", "sample.time_before", "sample.context", "train")
# Keys of train.* that only watch a training: declared, so that setting one reruns the stage, but recorded
# nowhere, so that the outputs come out byte for byte as without them.
WATCH_PARAMS = ("train.monitor",)


@dataclass(frozen=True)
class TrainInputs:
    """The stage's inputs, checked against each other."""

    patches: np.ndarray  # memory-mapped [N, C, W, W, T]
    samples: pd.DataFrame  # row_id, target, in patch order
    split: pd.DataFrame  # row_id, run, role


def read_inputs(patches_path: Path = paths.PATCHES, samples_path: Path = paths.SAMPLES,
                split_path: Path = paths.SPLIT) -> TrainInputs:
    """The memory-mapped patches, the sample table and the split, checked against each other."""
    for path in (patches_path, samples_path, split_path):
        if not Path(path).is_file():
            raise SocmapError(f"{path}: not found; run `socmap sample` and `socmap split` (or `dvc repro`) first")
    patches = np.load(patches_path, mmap_mode="r")
    samples = pd.read_parquet(samples_path, columns=["row_id", "target"])
    split = pd.read_parquet(split_path, columns=["row_id", "run", "role"])
    if patches.ndim != 5 or len(patches) != len(samples):
        raise SocmapError(f"{patches_path}: shape {patches.shape} does not match the {len(samples)} rows of "
                          f"{samples_path}; rerun `socmap sample`")
    if not np.all(np.isfinite(samples["target"])):
        raise SocmapError(f"{samples_path}: column target has missing or infinite values; rerun `socmap sample`")
    return TrainInputs(patches, samples, split)


def recorded_params(params: Params) -> dict:
    """The params at STAGE_PARAMS but WATCH_PARAMS, nested as in params.yaml: what a checkpoint records and
    a resume state's fingerprint hashes."""
    recorded = params_subset(params, STAGE_PARAMS)
    for key in WATCH_PARAMS:
        section, name = key.split(".")
        del recorded[section][name]
    return recorded


def run_rows(samples: pd.DataFrame, split: pd.DataFrame, run: int, split_path: Path = paths.SPLIT
             ) -> dict[str, np.ndarray]:
    """Positions (into the patches) of run `run`'s train, stop and val rows, each ascending."""
    roles = split[split["run"] == run]
    position = pd.Series(np.arange(len(samples)), index=samples["row_id"].to_numpy())
    unknown = ~roles["row_id"].isin(position.index)
    if unknown.any():
        raise SocmapError(f"{split_path}: row_id {int(roles['row_id'][unknown].iloc[0])} of run {run} is not in "
                          "the sample table; rerun `socmap split`")
    rows = {role: np.sort(position[roles.loc[roles["role"] == role, "row_id"]].to_numpy())
            for role in RUN_ROLES}
    for role, found in rows.items():
        if found.size == 0:
            raise SocmapError(f"{split_path}: run {run} has no {role} rows; runs present: "
                              f"{sorted(split['run'].unique().tolist())} (train.num_runs must not exceed them)")
    return rows


def split_runs(split: pd.DataFrame, params: Params) -> list[int]:
    """The runs to train: holdout, the first train.num_runs; kfold, every run in the split (train.num_runs
    for each test fold)."""
    if params.split.mode == "kfold":
        return sorted(int(run) for run in split["run"].unique())
    return list(range(params.train.num_runs))


def summarise(best: dict[int, dict]) -> dict:
    """metrics.json: means over the runs' best epochs on the validation rows (before kriging) and the stop
    rows, the best run (by validation r2), and each run's best epoch."""
    r2 = np.array([b["val_metrics"]["r2"] for b in best.values()])
    summary = {
        "val_r2_mean": float(r2.mean()), "val_r2_std": float(r2.std()),
        **{f"val_{k}_mean": float(np.mean([b["val_metrics"][k] for b in best.values()]))
           for k in ("rmse", "mae", "rpiq", "bias")},
        "stop_r2_mean": float(np.mean([b["stop_metrics"]["r2"] for b in best.values()])),
        "best_run": int(max(best, key=lambda k: best[k]["val_metrics"]["r2"])),
    }
    for run, b in best.items():
        summary[f"run{run}"] = {"best_epoch": b["epoch"], **{f"val_{k}": b["val_metrics"][k] for k in LOGGED},
                                "stop_r2": b["stop_metrics"]["r2"]}
    return summary


def train_all(inputs: TrainInputs, params: Params, accelerator: Accelerator, root: Path = Path("."),
              inputs_fingerprint: str = "", callback: EpochCallback | None = None) -> dict:
    """Train every run, write models/run_{k}.pt, models/best.pt and the dvclive logs under the project
    `root`; return the summary. A resume state is taken up only if it carries `inputs_fingerprint`."""
    cfg, patches, samples, split = params.train, inputs.patches, inputs.samples, inputs.split
    channels = channel_names(params.data.bands, params.sample.context)
    expected = (len(channels), params.sample.window_size, params.sample.window_size, params.sample.time_before)
    if tuple(patches.shape[1:]) != expected:
        raise SocmapError(f"patches of shape {tuple(patches.shape[1:])} (bands, window, window, years) do not "
                          f"match {expected} from data.bands, sample.context, sample.window_size and "
                          "sample.time_before; "
                          "rerun `socmap sample`")
    spec = ModelSpec.from_params(cfg, channels, params.sample.window_size, params.sample.time_before)
    targets = samples["target"].to_numpy(dtype=np.float64)
    live = Live(dir=str(root / paths.TRAIN_METRICS), dvcyaml=False, save_dvc_exp=False) if accelerator.is_main_process else None
    watch = None
    if cfg.monitor and accelerator.is_main_process:
        watch, callback = monitor(root / paths.TRAIN_MONITOR, callback)
    best: dict[int, dict] = {}
    runs = split_runs(split, params)
    workers = run_workers(cfg, len(runs), accelerator, callback)

    def job(run: int) -> Job:
        positions = run_rows(samples, split, run)
        data = prepare_run(patches, targets, positions, cfg)
        log.info("run %d: %s rows, %s on %s%s", run, ", ".join(f"{len(p)} {role}" for role, p in positions.items()),
                 cfg.model, accelerator.device, f" (runs side by side in {workers} processes)" if workers > 1 else "")
        return run, data, Resume(root / paths.RESUME / f"run_{run}.pt", inputs_fingerprint)

    for run, data, result in train_runs(map(job, runs), cfg, spec, accelerator, live, callback, workers):
        best[run] = result
        if accelerator.is_main_process:
            save_checkpoint(root / paths.MODELS / f"run_{run}.pt", {
                "model": spec.to_dict(), "state_dict": best[run]["state_dict"], "features": data.features.to_dict(),
                "target": data.target.to_dict(), "params": recorded_params(params), "run": run,
                "epoch": best[run]["epoch"], "stop_metrics": best[run]["stop_metrics"],
                "val_metrics": best[run]["val_metrics"]})
    summary = summarise(best)
    if accelerator.is_main_process:
        finish(summary, best, root, live)
    if watch is not None:
        end_monitor(watch)
    accelerator.wait_for_everyone()
    log.info("train: val r2 %.3f ± %.3f, rmse %.2f g/kg over %d runs; best run %d", summary["val_r2_mean"],
             summary["val_r2_std"], summary["val_rmse_mean"], len(runs), summary["best_run"])
    return summary


def finish(summary: dict, best: dict[int, dict], root: Path, live: Live) -> None:
    """Main process, all runs trained: models/best.pt, metrics.json, curves.csv, and no state left to resume."""
    models, resume = root / paths.MODELS, root / paths.RESUME
    with atomic_path(models / "best.pt") as tmp:
        shutil.copyfile(models / f"run_{summary['best_run']}.pt", tmp)
    for path in models.glob("run_*.pt"):  # from an earlier train with other runs
        if re.fullmatch(r"run_\d+", path.stem) and int(path.stem[4:]) not in best:
            path.unlink()
    live.summary = summary
    live.make_summary()
    live.end()
    with atomic_path(root / paths.TRAIN_CURVES) as tmp:
        curves(best).to_csv(tmp, index=False)
    for state in resume.glob("run_*.pt"):
        state.unlink()


def curves(best: dict[int, dict]) -> pd.DataFrame:
    """Every run's epochs, one row each (run, epoch, the logged figures): one file for any number of runs,
    which the training-curves plot of dvc.yaml draws a line per run from."""
    return pd.DataFrame([{"run": run, **record} for run, b in best.items() for record in b["history"]])


def monitor(folder: Path, callback: EpochCallback | None) -> tuple[Live, EpochCallback]:
    """train.monitor: a dvclive log of the machine (CPU, memory, disk, GPU) and of every epoch in `folder`,
    with an HTML report rewritten each epoch; and the epoch callback that feeds it, then `callback`."""
    import dvclive.monitor_system

    # dvclive asks NVML whenever pynvml imports; with no NVIDIA driver every sample fails, CPU and memory too
    dvclive.monitor_system.GPU_AVAILABLE = dvclive.monitor_system.GPU_AVAILABLE and nvml_answers()
    watch = Live(dir=str(folder), report="html", dvcyaml=False, save_dvc_exp=False)
    watch.monitor_system(interval=0.05, num_samples=10)  # the machine's mean every half second

    def logged(run: int, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch":
                watch.log_metric(f"run{run}/{key}", float(value))
        watch.next_step()  # one step per epoch of the whole training; writes the summary and the report
        if callback is not None:
            callback(run, record)

    return watch, logged


def end_monitor(watch: Live, wait_s: float = 5.0) -> None:
    """Close the monitor's log, waiting up to `wait_s` for its first sample of the machine when the training
    was shorter than one sampling period, so that every report shows the machine."""
    deadline = time.monotonic() + wait_s
    while "system" not in watch.summary and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.end()


def nvml_answers() -> bool:
    """Whether NVIDIA's management library is there to report on GPUs."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def main(params: Params) -> None:
    """`socmap train`: data/processed + data/splits → models/, metrics/train/ (resume state in resume/train/)."""
    if relaunch("train", params.train.num_processes, params.train.launch_args, params):
        return
    if params.train.threads:
        # a small model's ops are too short to share: two threads on two busy cores wait on each other
        torch.set_num_threads(params.train.threads)
    inputs = read_inputs()
    accelerator = make_accelerator(params.train)
    if not accelerator.is_main_process:
        logging.getLogger("socmap").setLevel(logging.WARNING)  # one line per epoch, not one per process
    train_all(inputs, params, accelerator,
              inputs_fingerprint=fingerprint(recorded_params(params), [paths.PATCHES, paths.SAMPLES, paths.SPLIT]))
