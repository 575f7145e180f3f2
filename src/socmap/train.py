"""`socmap train`: one model per split run under accelerate, the best epoch of each kept, logged with dvclive.

For every run of data/splits/split.parquet the training and validation rows'
patches are read from the memory-mapped data/processed/patches.npy once, the
feature normalisation and target transform are fitted on the training rows, and
the model trains for up to `train.epochs` epochs (AdamW, a learning-rate
schedule, gradient clipping, early stopping after `train.patience` epochs
without a better validation r2). With `train.augment` every training window is
turned and mirrored at random (one of the square's 8 symmetries per row): the
soil does not care which way is north, and ~3000 rows overfit without it.
holdout: runs 0..train.num_runs-1; kfold: one model per fold of the split. The epoch with the best validation r2 (g/kg,
over every process's validation rows) is the one saved: models/run_{k}.pt
holds a copy of that epoch's weights, models/best.pt the best run's.

Every `train.checkpoint_every` epochs the whole training state goes to
resume/train/run_{k}.pt; a `socmap train` that was interrupted starts again from
there (when its params and inputs are unchanged), replays the epochs it had
already logged, and carries on. The folder is emptied once training completes.

Under `accelerate launch` (train.num_processes > 1) every process takes its share
of each batch, DDP averages the gradients, and only the main process logs and writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from dvclive import Live

from socmap import paths
from socmap.balance import balanced_indices
from socmap.checkpoint import load_checkpoint, save_checkpoint
from socmap.config import Params, TrainConfig, params_to_dict
from socmap.errors import SocmapError
from socmap.io import atomic_path
from socmap.launch import relaunch
from socmap.losses import RegressionLoss, row_sigma
from socmap.metrics import regression_metrics
from socmap.models import build_model
from socmap.transforms import DIHEDRAL, FeatureNorm, TargetTransform, random_dihedral, symmetric_mean

log = logging.getLogger(__name__)

LOGGED = ("r2", "mae", "rmse", "rpiq", "bias")  # validation figures logged every epoch
EVAL_BATCH = 2048
# The params the train stage declares in dvc.yaml (tested): a checkpoint records these and no others, so
# that its bytes change only with what reruns the stage, and a fresh clone's `dvc repro` gives the same.
STAGE_PARAMS = ("data.bands", "sample.window_size", "sample.time_before", "train")

EpochCallback = Callable[[int, dict], None]  # (run, the epoch's record), after its resume checkpoint


# ------------------------------------------------------------------------------- data


def read_inputs(patches_path: Path, samples_path: Path, split_path: Path
                ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
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
    return patches, samples, split


def run_rows(samples: pd.DataFrame, split: pd.DataFrame, run: int, split_path: Path = paths.SPLIT
             ) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the patches) of run `run`'s training and validation rows, ascending."""
    roles = split[split["run"] == run]
    position = pd.Series(np.arange(len(samples)), index=samples["row_id"].to_numpy())
    unknown = ~roles["row_id"].isin(position.index)
    if unknown.any():
        raise SocmapError(f"{split_path}: row_id {int(roles['row_id'][unknown].iloc[0])} of run {run} is not in "
                          "the sample table; rerun `socmap split`")
    rows = {role: np.sort(position[roles.loc[roles["role"] == role, "row_id"]].to_numpy())
            for role in ("train", "val")}
    for role, found in rows.items():
        if found.size == 0:
            raise SocmapError(f"{split_path}: run {run} has no {role} rows; runs present: "
                              f"{sorted(split['run'].unique().tolist())} (train.num_runs must not exceed them)")
    return rows["train"], rows["val"]


@dataclass
class RunData:
    """One run's rows in memory, normalised, with the fitted transforms and the loss."""

    x_train: torch.Tensor  # [N, C, W, W, T], normalised
    y_train: torch.Tensor  # [N], transformed target
    sigma_train: torch.Tensor  # [N], σ'_i
    target_train: np.ndarray  # [N], g/kg
    x_val: torch.Tensor
    y_val: torch.Tensor
    sigma_val: torch.Tensor
    target_val: np.ndarray
    features: FeatureNorm
    target: TargetTransform
    loss: RegressionLoss

    def to(self, device: torch.device) -> "RunData":
        """The tensors moved to `device` once per run (a GPU then indexes its batches without host copies)."""
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return dataclasses.replace(self, **moved)


def prepare_run(patches: np.ndarray, targets: np.ndarray, train_pos: np.ndarray, val_pos: np.ndarray,
                cfg: TrainConfig) -> RunData:
    """Read a run's rows from the (memory-mapped) patches once and fit everything on the training rows."""
    raw_train = np.asarray(patches[train_pos], dtype=np.float32)  # one fancy-indexed read per run
    raw_val = np.asarray(patches[val_pos], dtype=np.float32)
    features = FeatureNorm.fit(raw_train)
    target_train, target_val = targets[train_pos].astype(np.float64), targets[val_pos].astype(np.float64)
    transform = TargetTransform.fit(cfg.target_transform, target_train)
    sigma_train = row_sigma(target_train, cfg.loss_sigma, cfg.loss_sigma_relative, transform)
    sigma_val = row_sigma(target_val, cfg.loss_sigma, cfg.loss_sigma_relative, transform)

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float32))

    return RunData(
        x_train=features(torch.from_numpy(raw_train)), y_train=tensor(transform.forward(target_train)),
        sigma_train=tensor(sigma_train), target_train=target_train,
        x_val=features(torch.from_numpy(raw_val)), y_val=tensor(transform.forward(target_val)),
        sigma_val=tensor(sigma_val), target_val=target_val,
        features=features, target=transform,
        loss=RegressionLoss(cfg.loss_type, cfg.loss_alpha, sigma_train),
    )


def epoch_order(targets: np.ndarray, cfg: TrainConfig, run: int, epoch: int) -> np.ndarray:
    """This epoch's training rows in order: balanced (upsampled) or each row once, shuffled.
    The generator is seeded by (seed, run, epoch), so a resumed run draws what it would have."""
    rng = np.random.default_rng([cfg.seed, run, epoch])
    if cfg.balanced:
        return balanced_indices(targets, cfg.balance_bins, cfg.balance_fraction, rng)
    return rng.permutation(len(targets))


# ------------------------------------------------------------------------------ steps


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: RunData, order: np.ndarray,
                cfg: TrainConfig, accelerator: Accelerator, augment: torch.Generator | None = None) -> float:
    """One pass over `order`; every process takes its share. Returns the mean training loss over all rows.

    With a generator `augment`, every row of a batch is turned by one of the window's 8 symmetries
    (rotations and mirrors) drawn from it.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    shard = np.resize(order, math.ceil(len(order) / world) * world)[rank::world]  # equal shares: same step count
    shard = torch.from_numpy(shard).to(data.x_train.device)
    per_process = max(1, cfg.batch_size // world)
    model.train()
    loss_sum, rows = torch.zeros((), dtype=torch.float64, device=accelerator.device), 0
    for start in range(0, len(shard), per_process):
        idx = shard[start:start + per_process]
        x, y, sigma = data.x_train[idx], data.y_train[idx], data.sigma_train[idx]  # [b, C, W, W, T], [b], [b]
        if augment is not None:
            x = random_dihedral(x, augment)
        loss = train_step(model, optimizer, data, x, y, sigma, cfg, accelerator)
        loss_sum += loss.detach().double() * len(idx)  # no .item(): a GPU need not wait for every step
        rows += len(idx)
    total = accelerator.reduce(torch.stack([loss_sum, torch.full_like(loss_sum, rows)]), reduction="sum")
    return float(total[0] / total[1])


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: RunData, x: torch.Tensor,
               y: torch.Tensor, sigma: torch.Tensor, cfg: TrainConfig, accelerator: Accelerator) -> torch.Tensor:
    """One optimiser step on one batch (forward, loss, backward, clipping); the batch's loss."""
    loss = data.loss(model(x).float(), y, sigma)
    accelerator.backward(loss)
    if cfg.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


@torch.no_grad()
def validate(model: torch.nn.Module, data: RunData, accelerator: Accelerator, views: int) -> tuple[float, dict]:
    """Validation loss (transformed space) and metrics (g/kg) over all validation rows, every process's
    share predicted (as the mean over `views` window symmetries, as a Predictor does) and gathered."""
    world, rank = accelerator.num_processes, accelerator.process_index
    n = len(data.x_val)
    per = math.ceil(n / world)
    mine = torch.arange(rank * per, (rank + 1) * per, device=data.x_val.device) % n  # padded by wrapping
    net = accelerator.unwrap_model(model)
    net.eval()
    predicted = torch.cat([symmetric_mean(net, data.x_val[chunk], views).float()
                           for chunk in mine.split(EVAL_BATCH)])
    predicted = accelerator.gather(predicted)[:n]  # [n], in validation row order
    loss = float(data.loss(predicted, data.y_val, data.sigma_val))
    grams = data.target.inverse(predicted.double().cpu()).numpy()
    return loss, regression_metrics(data.target_val, grams)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The learning-rate schedule (train.scheduler), stepped once per epoch; None for a constant rate."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=max(1, cfg.patience // 3))
    return None


# ------------------------------------------------------------------------------- runs


def model_spec(cfg: TrainConfig, bands: list[str], window_size: int, time_before: int) -> dict:
    """build_model's arguments plus what a predictor checks its input against."""
    return {"name": cfg.model, "bands": len(bands), "window_size": window_size, "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers, "dropout": cfg.dropout, "band_names": list(bands),
            "time_before": time_before, "tta": cfg.tta}


def seed_for(*keys: int) -> int:
    """A torch seed derived from (train.seed, run, epoch, …): every run and epoch draws its own numbers,
    the same ones whether the training ran through or was resumed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def augmenter(cfg: TrainConfig, run: int, epoch: int, rank: int) -> torch.Generator | None:
    """The generator of an epoch's window symmetries (train.augment), seeded like its dropout but apart
    from it; None when augmentation is off."""
    if not cfg.augment:
        return None
    return torch.Generator().manual_seed(seed_for(cfg.seed, run, epoch, rank, DIHEDRAL))


def start_run(run: int, cfg: TrainConfig, spec: dict, resume_path: Path, fingerprint: str):
    """The model, optimiser, schedule and training state of a run: fresh, or as saved in `resume_path`."""
    torch.manual_seed(seed_for(cfg.seed, run))
    model = build_model(spec["name"], spec["bands"], spec["window_size"], spec["hidden_size"],
                        spec["num_layers"], spec["dropout"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    state = {"next_epoch": 0, "best": None, "stale": 0, "history": [], "done": False}
    saved = read_resume(resume_path, fingerprint)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = {key: saved[key] for key in state}
        log.info("run %d: resuming after epoch %d from %s", run, state["next_epoch"], resume_path)
    return model, optimizer, scheduler, state


def train_run(run: int, data: RunData, cfg: TrainConfig, spec: dict, accelerator: Accelerator,
              resume_path: Path, fingerprint: str, live: Live | None = None,
              callback: EpochCallback | None = None) -> dict:
    """Train one run; returns its best epoch as {"state_dict", "epoch", "val_metrics", "history"}."""
    model, optimizer, scheduler, state = start_run(run, cfg, spec, resume_path, fingerprint)
    if live is not None:
        for record in state["history"]:  # the epochs before an interruption, logged again
            log_epoch(live, run, record)
    model, optimizer = accelerator.prepare(model, optimizer)
    while not state["done"]:
        epoch = state["next_epoch"]
        torch.manual_seed(seed_for(cfg.seed, run, epoch, accelerator.process_index))  # dropout
        train_loss = train_epoch(model, optimizer, data, epoch_order(data.target_train, cfg, run, epoch),
                                 cfg, accelerator, augmenter(cfg, run, epoch, accelerator.process_index))
        val_loss, metrics = validate(model, data, accelerator, cfg.tta)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "lr": optimizer.param_groups[0]["lr"], **{f"val_{k}": metrics[k] for k in LOGGED}}
        if state["best"] is None or metrics["r2"] > state["best"]["val_metrics"]["r2"]:
            weights = accelerator.unwrap_model(model).state_dict()
            # a copy, not references to the live tensors: the original's "best" was really the last epoch
            state["best"] = {"state_dict": {k: v.detach().to("cpu", copy=True) for k, v in weights.items()},
                             "epoch": epoch, "val_metrics": metrics}
            state["stale"] = 0
        else:
            state["stale"] += 1
        if cfg.scheduler == "plateau":
            scheduler.step(metrics["r2"])
        elif scheduler is not None:
            scheduler.step()
        stop_early = cfg.patience > 0 and state["stale"] >= cfg.patience
        state.update(next_epoch=epoch + 1, done=epoch + 1 == cfg.epochs or stop_early)
        state["history"].append(record)
        log.info("run %d epoch %d/%d: train_loss %.4f val_loss %.4f val_r2 %.3f rmse %.2f mae %.2f "
                 "(best r2 %.3f at epoch %d)%s", run, epoch + 1, cfg.epochs, train_loss, val_loss, metrics["r2"],
                 metrics["rmse"], metrics["mae"], state["best"]["val_metrics"]["r2"], state["best"]["epoch"] + 1,
                 "; stopping early" if stop_early else "")
        if live is not None:
            log_epoch(live, run, record)
        if state["done"] or (epoch + 1) % cfg.checkpoint_every == 0:
            if accelerator.is_main_process:
                write_resume(resume_path, fingerprint, accelerator.unwrap_model(model), optimizer, scheduler,
                             state)
            accelerator.wait_for_everyone()
        if callback is not None:
            callback(run, record)
    accelerator.free_memory()
    return {**state["best"], "history": state["history"]}


def log_epoch(live: Live, run: int, record: dict) -> None:
    """One epoch's figures as run{k}/… step series, so every run gets its own curves."""
    live.step = record["epoch"]
    for key, value in record.items():
        if key != "epoch":
            live.log_metric(f"run{run}/{key}", float(value))


# ----------------------------------------------------------------------------- resume


def stage_params(params: Params) -> dict:
    """The values of STAGE_PARAMS, nested as in params.yaml."""
    settings, picked = params_to_dict(params), {}
    for key in STAGE_PARAMS:
        *path, last = key.split(".")
        source, target = settings, picked
        for part in path:
            source, target = source[part], target.setdefault(part, {})
        target[last] = source[last]
    return picked


def fingerprint_inputs(params: Params, paths: list[Path]) -> str:
    """A hash of the stage's params and of its input tables (which carry what the data and split
    params did): a resume state from anything else is not resumed."""
    digest = hashlib.sha256(json.dumps(stage_params(params), sort_keys=True).encode())
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def read_resume(path: Path, fingerprint: str) -> dict | None:
    """The saved training state of a run, if there is one from the same params and inputs."""
    if not path.is_file():
        return None
    try:
        saved = load_checkpoint(path)
    except SocmapError as exc:  # left by another socmap version, or cut short by a crash
        log.info("%s; starting afresh", exc)
        return None
    if saved.get("fingerprint") != fingerprint:
        log.info("%s: from other params or inputs; starting afresh", path)
        return None
    return saved


def write_resume(path: Path, fingerprint: str, model: torch.nn.Module, optimizer, scheduler, state: dict) -> None:
    save_checkpoint(path, {
        "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None, **state,
    })


# ------------------------------------------------------------------------------ stage


def split_runs(split: pd.DataFrame, params: Params) -> list[int]:
    """The runs to train: holdout, the first train.num_runs; kfold, every fold in the split (one model each)."""
    if params.split.mode == "kfold":
        return sorted(int(run) for run in split["run"].unique())
    return list(range(params.train.num_runs))


def summarise(best: dict[int, dict]) -> dict:
    """metrics.json: means over the runs' best epochs, the best run, and each run's best epoch."""
    r2 = np.array([b["val_metrics"]["r2"] for b in best.values()])
    summary = {
        "val_r2_mean": float(r2.mean()), "val_r2_std": float(r2.std()),
        **{f"val_{k}_mean": float(np.mean([b["val_metrics"][k] for b in best.values()]))
           for k in ("rmse", "mae", "rpiq", "bias")},
        "best_run": int(max(best, key=lambda k: best[k]["val_metrics"]["r2"])),
    }
    for run, b in best.items():
        summary[f"run{run}"] = {"best_epoch": b["epoch"], **{f"val_{k}": b["val_metrics"][k] for k in LOGGED}}
    return summary


def train_all(patches: np.ndarray, samples: pd.DataFrame, split: pd.DataFrame, params: Params,
              accelerator: Accelerator, models_dir: Path = paths.MODELS,
              metrics_dir: Path = paths.TRAIN_METRICS, resume_dir: Path = paths.RESUME, fingerprint: str = "", callback: EpochCallback | None = None) -> dict:
    """Train every run, write models/run_{k}.pt, models/best.pt and the dvclive logs; return the summary."""
    cfg = params.train
    expected = (len(params.data.bands), params.sample.window_size, params.sample.window_size,
                params.sample.time_before)
    if tuple(patches.shape[1:]) != expected:
        raise SocmapError(f"patches of shape {tuple(patches.shape[1:])} (bands, window, window, years) do not "
                          f"match {expected} from data.bands, sample.window_size and sample.time_before; "
                          "rerun `socmap sample`")
    spec = model_spec(cfg, list(params.data.bands), params.sample.window_size, params.sample.time_before)
    targets = samples["target"].to_numpy(dtype=np.float64)
    live = Live(dir=str(metrics_dir), dvcyaml=False, save_dvc_exp=False) if accelerator.is_main_process else None
    best: dict[int, dict] = {}
    runs = split_runs(split, params)
    for run in runs:
        train_pos, val_pos = run_rows(samples, split, run)
        data = prepare_run(patches, targets, train_pos, val_pos, cfg)
        log.info("run %d: %d training rows, %d validation rows, %s on %s", run, len(train_pos), len(val_pos),
                 cfg.model, accelerator.device)
        best[run] = train_run(run, data.to(accelerator.device), cfg, spec, accelerator,
                              resume_dir / f"run_{run}.pt", fingerprint, live, callback)
        if accelerator.is_main_process:
            save_checkpoint(models_dir / f"run_{run}.pt", {
                "model": spec, "state_dict": best[run]["state_dict"], "features": data.features.to_dict(),
                "target": data.target.to_dict(), "params": stage_params(params), "run": run,
                "epoch": best[run]["epoch"], "val_metrics": best[run]["val_metrics"]})
    summary = summarise(best)
    if accelerator.is_main_process:
        finish(summary, runs, models_dir, resume_dir, live)
    accelerator.wait_for_everyone()
    log.info("train: val r2 %.3f ± %.3f, rmse %.2f g/kg over %d runs; best run %d", summary["val_r2_mean"],
             summary["val_r2_std"], summary["val_rmse_mean"], len(runs), summary["best_run"])
    return summary


def finish(summary: dict, runs: list[int], models_dir: Path, resume_dir: Path, live: Live) -> None:
    """Main process, all runs trained: models/best.pt, metrics.json, and no state left to resume."""
    with atomic_path(models_dir / "best.pt") as tmp:
        shutil.copyfile(models_dir / f"run_{summary['best_run']}.pt", tmp)
    for path in models_dir.glob("run_*.pt"):  # from an earlier train with other runs
        if re.fullmatch(r"run_\d+", path.stem) and int(path.stem[4:]) not in runs:
            path.unlink()
    live.summary = summary
    live.make_summary()
    live.end()
    for state in resume_dir.glob("run_*.pt"):
        state.unlink()
    resume_dir.mkdir(parents=True, exist_ok=True)  # the folder stays: dvc.yaml declares it (persist: true)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """CPU unless CUDA is there; mixed precision (train.mixed_precision) on GPU only."""
    cuda = torch.cuda.is_available()
    if cfg.mixed_precision != "fp32" and not cuda:
        log.warning("train.mixed_precision = %s is ignored on CPU", cfg.mixed_precision)
    mixed = cfg.mixed_precision if cuda and cfg.mixed_precision != "fp32" else "no"
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def main(params: Params) -> None:
    """`socmap train`: data/processed + data/splits → models/, metrics/train/ (resume state in resume/train/)."""
    if relaunch("train", params.train.num_processes, params.train.launch_args, params):
        return
    if params.train.threads:
        # a small model's ops are too short to share: two threads on two busy cores wait on each other
        torch.set_num_threads(params.train.threads)
    patches, samples, split = read_inputs(paths.PATCHES, paths.SAMPLES, paths.SPLIT)
    accelerator = make_accelerator(params.train)
    if not accelerator.is_main_process:
        logging.getLogger("socmap").setLevel(logging.WARNING)  # one line per epoch, not one per process
    train_all(patches, samples, split, params, accelerator,
              fingerprint=fingerprint_inputs(params, [paths.PATCHES, paths.SAMPLES, paths.SPLIT]))
