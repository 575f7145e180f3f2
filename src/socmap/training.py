"""One run's training: its rows in memory, the epochs, early stopping on the stop rows' r2, the resume state.

The training, stop and validation rows' patches are read from the memory-mapped patches once, the
feature normalisation and target transform are fitted on the training rows, and the model trains for
`train.epochs` epochs (AdamW, a learning-rate schedule, gradient clipping; with `train.patience`, early
stopping after that many epochs without a better r2 on the stop rows). With `train.augment` every training
window is turned and mirrored at random (one of the square's 8 symmetries per row): the soil does not
care which way is north, and ~3000 rows overfit without it. The epoch with the best stop r2 (g/kg,
over every process's stop rows) is the one kept, as a copy of its weights, and scored once on the
validation rows, which chose nothing.

Every `train.checkpoint_every` epochs the whole training state goes to a resume file; a run that was
interrupted starts again from there when its fingerprint (params and inputs) is unchanged, replays
the epochs it had already logged, and carries on, drawing the same batches, dropout and symmetries
it would have drawn.

Under `accelerate launch` every process takes its share of each batch, DDP averages the gradients,
and only the main process logs and writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from dvclive import Live

from socmap.balance import balanced_indices
from socmap.checkpoint import load_checkpoint, save_checkpoint
from socmap.config import TrainConfig
from socmap.errors import SocmapError
from socmap.losses import RegressionLoss, row_sigma
from socmap.metrics import regression_metrics
from socmap.models import ModelSpec, views
from socmap.transforms import DIHEDRAL, GROUPS, FeatureNorm, TargetTransform, random_symmetry, symmetric_mean

log = logging.getLogger(__name__)

LOGGED = ("r2", "mae", "rmse", "rpiq", "bias")  # validation figures logged every epoch
EVAL_BATCH = 2048
PLATEAU_PATIENCE = 5  # epochs without a better stop r2 before train.scheduler = plateau halves the rate

EpochCallback = Callable[[int, dict], None]  # (run, the epoch's record), after its resume checkpoint


# ------------------------------------------------------------------------------- data


@dataclass
class Rows:
    """A set of a run's rows in memory: normalised patches and the target, transformed and in g/kg."""

    x: torch.Tensor  # [N, C, W, W, T], normalised
    y: torch.Tensor  # [N], transformed target
    sigma: torch.Tensor  # [N], σ'_i
    target: np.ndarray  # [N], g/kg

    def to(self, device: torch.device) -> "Rows":
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device), sigma=self.sigma.to(device))


@dataclass
class RunData:
    """One run's training, early-stopping and validation rows, with the transforms fitted on the training
    rows and the loss."""

    train: Rows
    stop: Rows  # choose the best epoch
    val: Rows  # the run's honest figures: chose nothing
    features: FeatureNorm
    target: TargetTransform
    loss: RegressionLoss

    def to(self, device: torch.device) -> "RunData":
        """The rows moved to `device` once per run (a GPU then indexes its batches without host copies)."""
        return dataclasses.replace(self, train=self.train.to(device), stop=self.stop.to(device),
                                   val=self.val.to(device))


def prepare_run(patches: np.ndarray, targets: np.ndarray, positions: dict[str, np.ndarray],
                cfg: TrainConfig) -> RunData:
    """Read a run's rows (`positions`: train, stop, val) from the (memory-mapped) patches once and fit
    everything on the training rows."""
    raw = {role: np.asarray(patches[pos], dtype=np.float32) for role, pos in positions.items()}  # one read each
    target = {role: targets[pos].astype(np.float64) for role, pos in positions.items()}
    sigma = {}
    features = FeatureNorm.fit(raw["train"])
    transform = TargetTransform.fit(cfg.target_transform, target["train"])

    def rows(role: str) -> Rows:
        sigma[role] = row_sigma(target[role], cfg.loss_sigma, cfg.loss_sigma_relative, transform)
        return Rows(features(torch.from_numpy(raw[role])), tensor(transform.forward(target[role])),
                    tensor(sigma[role]), target[role])

    train, stop, val = rows("train"), rows("stop"), rows("val")
    return RunData(train, stop, val, features, transform, RegressionLoss(cfg.loss_type, cfg.loss_alpha, sigma["train"]))


def tensor(values: np.ndarray) -> torch.Tensor:
    """float32 tensor of an array."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


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

    With a generator `augment`, every row of a batch is turned by one of train.augment's window symmetries
    (rotations and mirrors) drawn from it.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    shard = np.resize(order, math.ceil(len(order) / world) * world)[rank::world]  # equal shares: same step count
    shard = torch.from_numpy(shard).to(data.train.x.device)
    per_process = max(1, cfg.batch_size // world)
    model.train()
    loss_sum, rows = torch.zeros((), dtype=torch.float64, device=accelerator.device), 0
    for start in range(0, len(shard), per_process):
        idx = shard[start:start + per_process]
        x, y, sigma = data.train.x[idx], data.train.y[idx], data.train.sigma[idx]  # [b, C, W, W, T], [b], [b]
        if augment is not None:
            x = random_symmetry(x, augment, GROUPS[cfg.augment])
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
def validate(model: torch.nn.Module, rows: Rows, data: RunData, accelerator: Accelerator,
             views: tuple[int, ...]) -> tuple[float, dict]:
    """Loss (transformed space) and metrics (g/kg) over `rows`, every process's share predicted (as the
    mean over `views` window symmetries, as a Predictor does) and gathered."""
    world, rank = accelerator.num_processes, accelerator.process_index
    n = len(rows.x)
    per = math.ceil(n / world)
    mine = torch.arange(rank * per, (rank + 1) * per, device=rows.x.device) % n  # padded by wrapping
    net = accelerator.unwrap_model(model)
    net.eval()
    predicted = torch.cat([symmetric_mean(net, rows.x[chunk], views).float() for chunk in mine.split(EVAL_BATCH)])
    predicted = accelerator.gather(predicted)[:n]  # [n], in row order
    loss = float(data.loss(predicted, rows.y, rows.sigma))
    grams = data.target.inverse(predicted.double().cpu()).numpy()
    return loss, regression_metrics(rows.target, grams)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The learning-rate schedule (train.scheduler), stepped once per epoch; None for a constant rate."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=PLATEAU_PATIENCE)
    return None


# ------------------------------------------------------------------------------- runs


def seed_for(*keys: int) -> int:
    """A torch seed derived from (train.seed, run, epoch, …): every run and epoch draws its own numbers,
    the same ones whether the training ran through or was resumed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def augmenter(cfg: TrainConfig, run: int, epoch: int, rank: int) -> torch.Generator | None:
    """The generator of an epoch's window symmetries (train.augment), seeded like its dropout but apart
    from it; None when augmentation is off."""
    if cfg.augment == "none":
        return None
    return torch.Generator().manual_seed(seed_for(cfg.seed, run, epoch, rank, DIHEDRAL))


@dataclass(frozen=True)
class Resume:
    """Where a run's training state is saved, and the fingerprint of the params and inputs it belongs to."""

    path: Path
    fingerprint: str

    def read(self) -> dict | None:
        """The saved training state, if there is one from the same params and inputs."""
        if not self.path.is_file():
            return None
        try:
            saved = load_checkpoint(self.path)
        except SocmapError as exc:  # left by another socmap version, or cut short by a crash
            log.info("%s; starting afresh", exc)
            return None
        if saved.get("fingerprint") != self.fingerprint:
            log.info("%s: from other params or inputs; starting afresh", self.path)
            return None
        return saved

    def write(self, model: torch.nn.Module, optimizer, scheduler, state: dict) -> None:
        """Save the model, optimiser and schedule with the run's `state` (epochs done, best epoch, history)."""
        save_checkpoint(self.path, {
            "fingerprint": self.fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, **state,
        })


def start_run(run: int, cfg: TrainConfig, spec: ModelSpec, resume: Resume):
    """The model, optimiser, schedule and training state of a run: fresh, or as saved in `resume`."""
    torch.manual_seed(seed_for(cfg.seed, run))
    model = spec.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    state = {"next_epoch": 0, "best": None, "stale": 0, "history": [], "done": False}
    saved = resume.read()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = {key: saved[key] for key in state}
        log.info("run %d: resuming after epoch %d from %s", run, state["next_epoch"], resume.path)
    return model, optimizer, scheduler, state


def train_run(run: int, data: RunData, cfg: TrainConfig, spec: ModelSpec, accelerator: Accelerator,
              resume: Resume, live: Live | None = None, callback: EpochCallback | None = None) -> dict:
    """Train one run; returns its best epoch, chosen on the stop rows, as {"state_dict", "epoch",
    "stop_metrics", "val_metrics" (that epoch's figures on the validation rows), "history"}."""
    model, optimizer, scheduler, state = start_run(run, cfg, spec, resume)
    if live is not None:
        for record in state["history"]:  # the epochs before an interruption, logged again
            log_epoch(live, run, record)
    model, optimizer = accelerator.prepare(model, optimizer)
    while not state["done"]:
        record = run_epoch(run, model, optimizer, scheduler, data, cfg, accelerator, state)
        if live is not None:
            log_epoch(live, run, record)
        if state["done"] or (record["epoch"] + 1) % cfg.checkpoint_every == 0:
            if accelerator.is_main_process:
                resume.write(accelerator.unwrap_model(model), optimizer, scheduler, state)
            accelerator.wait_for_everyone()
        if callback is not None:
            callback(run, record)
    accelerator.unwrap_model(model).load_state_dict(state["best"]["state_dict"])
    _, val_metrics = validate(model, data.val, data, accelerator, views(cfg))
    accelerator.free_memory()
    return {**state["best"], "val_metrics": val_metrics, "history": state["history"]}


def run_epoch(run: int, model: torch.nn.Module, optimizer, scheduler, data: RunData, cfg: TrainConfig,
              accelerator: Accelerator, state: dict) -> dict:
    """One epoch: train, score the stop rows, keep the best epoch, step the schedule, decide whether to
    stop; updates `state` and returns the epoch's record."""
    epoch = state["next_epoch"]
    torch.manual_seed(seed_for(cfg.seed, run, epoch, accelerator.process_index))  # dropout
    train_loss = train_epoch(model, optimizer, data, epoch_order(data.train.target, cfg, run, epoch), cfg,
                             accelerator, augmenter(cfg, run, epoch, accelerator.process_index))
    stop_loss, metrics = validate(model, data.stop, data, accelerator, views(cfg))
    record = {"epoch": epoch, "train_loss": train_loss, "stop_loss": stop_loss,
              "lr": optimizer.param_groups[0]["lr"], **{f"stop_{k}": metrics[k] for k in LOGGED}}
    if state["best"] is None or metrics["r2"] > state["best"]["stop_metrics"]["r2"]:
        weights = accelerator.unwrap_model(model).state_dict()
        # a copy, not references to the live tensors: the original's "best" was really the last epoch
        state["best"] = {"state_dict": {k: v.detach().to("cpu", copy=True) for k, v in weights.items()},
                         "epoch": epoch, "stop_metrics": metrics}
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
    log.info("run %d epoch %d/%d: train_loss %.4f stop_loss %.4f stop_r2 %.3f rmse %.2f mae %.2f "
             "(best r2 %.3f at epoch %d)%s", run, epoch + 1, cfg.epochs, train_loss, stop_loss, metrics["r2"],
             metrics["rmse"], metrics["mae"], state["best"]["stop_metrics"]["r2"], state["best"]["epoch"] + 1,
             "; stopping early" if stop_early else "")
    return record


def log_epoch(live: Live, run: int, record: dict) -> None:
    """One epoch's figures as run{k}/… step series, so every run gets its own curves."""
    live.step = record["epoch"]
    for key, value in record.items():
        if key != "epoch":
            live.log_metric(f"run{run}/{key}", float(value))
