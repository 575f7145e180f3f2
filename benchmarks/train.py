"""Training speed: samples per second, and the data pipeline's overhead.

The overhead is the ratio of a real epoch's time (balanced sampling, batches
gathered from the run's rows, their random window symmetries when train.augment
is on, forward, backward, clipping, optimiser step) to
the time of the same number of forward/backward steps on one batch that is
already in place. Target: ≤ 1.15 on CPU, ≤ 1.3 on CUDA. Random patches of the
default shape (6 bands, 5×5 pixels, 5 years) stand in for the sample stage's,
memory-mapped from a temporary .npy as the stage reads them.

    python benchmarks/train.py [--batches 12] [--repeats 5] [--threads N] [--set train.model=attention ...]

`--set` measures a model option (train.model, train.augment, sample.context as extra channels) the
same way.

The last line printed is one JSON object; `cpu` names the machine (`machine.cpu_note`).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from socmap import training
from socmap.launch import make_accelerator
from socmap.config import Params, replace
from socmap.models import ModelSpec, views
from socmap.patches import channel_names

from machine import cpu_note


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls (seconds): the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12, help="training rows = batches × train.batch_size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=Params().train.threads,
                        help="torch CPU threads (default: train.threads; 0: one per core)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params to change from the defaults (values read as YAML)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = replace(Params(), **{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
    channels = channel_names(params.data.bands, params.sample.context)
    cfg = params.train
    # continuous random targets fill every balance bin alike: an epoch is exactly the training rows,
    # in whole batches, so that the real epoch and the fixed-batch loop do the same work
    rows = args.batches * cfg.batch_size * 10 // 9
    shape = (rows, len(channels), params.sample.window_size, params.sample.window_size,
             params.sample.time_before)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patches.npy"
        np.save(path, rng.normal(100.0, 20.0, size=shape).astype(np.float32))
        patches = np.load(path, mmap_mode="r")
        targets = rng.lognormal(3.0, 0.6, rows)
        train_rows, val = np.arange(args.batches * cfg.batch_size), np.arange(args.batches * cfg.batch_size, rows)
        start = time.perf_counter()
        data = training.prepare_run(patches, targets, {"train": train_rows, "stop": val, "val": val}, cfg)
        prepare_s = time.perf_counter() - start

    accelerator = make_accelerator(cfg)
    data = data.to(accelerator.device)
    torch.manual_seed(0)
    model = ModelSpec.from_params(cfg, channels, shape[2], shape[-1]).build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    order = training.epoch_order(data.train.target, cfg, run=0, epoch=0)
    steps = math.ceil(len(order) / cfg.batch_size)
    x, y, sigma = data.train.x[:cfg.batch_size], data.train.y[:cfg.batch_size], data.train.sigma[:cfg.batch_size]

    def fixed_batch_steps() -> None:
        model.train()
        for _ in range(steps):
            loss = training.train_step(model, optimizer, data, x, y, sigma, cfg, accelerator)
        loss.item()  # wait for the last step

    def real_epoch() -> None:
        order = training.epoch_order(data.train.target, cfg, run=0, epoch=1)
        training.train_epoch(model, optimizer, data, order, cfg, accelerator, training.augmenter(cfg, 0, 1, 0))

    fixed_batch_steps()  # warm-up: allocator, kernels
    epoch_s = best_time(real_epoch, args.repeats)
    fixed_s = best_time(fixed_batch_steps, args.repeats)
    validate_s = best_time(lambda: training.validate(model, data.stop, data, accelerator, views(cfg)), args.repeats)
    result = {
        "cpu": cpu_note(),
        "device": str(accelerator.device),
        "cuda": "ran on CUDA" if torch.cuda.is_available() else "skipped: no CUDA device on this machine",
        "threads": torch.get_num_threads(),
        "model": cfg.model,
        "augment": cfg.augment,
        "channels": len(channels),
        "rows_per_epoch": len(order),
        "batch_size": cfg.batch_size,
        "steps": steps,
        "epoch_s": round(epoch_s, 4),
        "fixed_batch_s": round(fixed_s, 4),
        "overhead_ratio": round(epoch_s / fixed_s, 3),
        "samples_per_s": round(len(order) / epoch_s, 1),
        "validate_s": round(validate_s, 4),
        "prepare_run_s": round(prepare_s, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
