"""A small learnable data set, written in the sample and split stages' file formats, and training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from conftest import tiny_params
from socmap import paths, train
from socmap.launch import make_accelerator

ROWS, BANDS, WINDOW, YEARS = 600, 6, 5, 3
FAST = {"train.epochs": 8, "train.lr": 3e-3, "train.scheduler": "none", "train.batch_size": 64,
        "train.patience": 0, "train.num_runs": 2, "train.parallel_runs": 1}


def write_inputs(root: Path, seed: int = 0) -> None:
    """patches.npy, samples.parquet and split.parquet as the sample and split stages write them, with a
    target (g/kg) that depends on a neighbourhood mean in the survey year and on a centre-pixel trend."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=(ROWS, BANDS, 1, 1, YEARS))  # smooth in space, as rasters are
    z = (level + 0.3 * rng.normal(size=(ROWS, BANDS, WINDOW, WINDOW, YEARS))).astype(np.float32)
    scale = np.array([300.0, 1.0, 5.0, 100.0, 40.0, 60.0], dtype=np.float32)  # raw units, unlike each other
    offset = np.array([500.0, 3.0, 10.0, 600.0, 150.0, 550.0], dtype=np.float32)
    patches = z * scale[None, :, None, None, None] + offset[None, :, None, None, None]
    log_soc = 3.0 + 0.4 * level[:, 1, 0, 0, -1] + 0.3 * level[:, 3, 0, 0, 0]
    target = np.exp(log_soc + 0.05 * rng.normal(size=ROWS))
    (root / "data/processed").mkdir(parents=True)
    (root / "data/splits").mkdir(parents=True)
    np.save(root / "data/processed/patches.npy", patches)
    row_id = np.arange(ROWS, dtype=np.int64) * 2 + 7  # not the positions: row_id must be looked up
    pd.DataFrame({"row_id": row_id, "site_id": np.arange(ROWS), "x": rng.uniform(0, 2e4, ROWS),
                  "y": rng.uniform(0, 2e4, ROWS), "year": 2018, "target": target}
                 ).to_parquet(root / "data/processed/samples.parquet")
    test = rng.random(ROWS) < 0.1
    fold = rng.integers(0, 3, ROWS)  # the validation folds of three runs
    frames = []
    for run in range(3):
        val = (fold == run) & ~test
        stop = (np.random.default_rng(run).random(ROWS) < 0.12) & ~test & ~val
        roles = np.where(test, "test", np.where(val, "val", np.where(stop, "stop", "train")))
        roles[np.flatnonzero(roles == "train")[:5]] = "buffer"
        frames.append(pd.DataFrame({"row_id": row_id, "run": run, "role": roles,
                                    "block": np.where(test, row_id % 7, -1)}))
    pd.concat(frames).to_parquet(root / "data/splits/split.parquet")


def params_for(project: Path, **overrides):
    """The tiny params with fast training, `overrides` applied."""
    return tiny_params(project / "world", **{**FAST, **overrides})


def run_train(project: Path, out: Path, params, callback=None, fingerprint: str = "same") -> dict:
    """`train.train_all` on the data set under `project`, writing under `out`."""
    inputs = train.read_inputs(project / paths.PATCHES, project / paths.SAMPLES, project / paths.SPLIT)
    return train.train_all(inputs, params, make_accelerator(params.train), out, fingerprint, callback)


def val_rows(project: Path, run: int, role: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """The validation (or another role's) rows of a run: patches and targets (g/kg)."""
    patches = np.load(project / paths.PATCHES, mmap_mode="r")
    samples = pd.read_parquet(project / paths.SAMPLES)
    rows = train.run_rows(samples, pd.read_parquet(project / paths.SPLIT), run)[role]
    return patches[rows], samples["target"].to_numpy()[rows]
