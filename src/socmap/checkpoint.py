"""Checkpoints as plain data: tensors, numbers, strings, lists and dicts, written atomically.

Checkpoints reach users through `dvc pull` from shared remotes; unpickling
arbitrary objects from them would run code, so they hold no classes and load
with ``torch.load(weights_only=True)`` only.

A model checkpoint (models/run_{k}.pt, models/best.pt) is a dict with
``format`` (FORMAT), ``model`` (build_model's arguments: name, bands, window_size,
hidden_size, num_layers, dropout, plus band_names, time_before and views),
``state_dict``, ``features`` (FeatureNorm.to_dict), ``target`` (TargetTransform.to_dict),
``params`` (the train stage's params, `socmap.train.STAGE_PARAMS`), ``run``, ``epoch`` and
``val_metrics``. Resume checkpoints add the optimiser and scheduler states.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from socmap.errors import SocmapError
from socmap.io import atomic_path

FORMAT = "socmap-checkpoint/3"  # 3: the model spec holds the symmetries predictions average (views)


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` to `path` atomically (a half-written file never takes the name)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **checkpoint}, tmp)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a `SocmapError` when missing or not a socmap checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SocmapError(f"{path}: checkpoint not found; run `socmap train` (or `dvc pull`) first")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # one carrying pickled objects, a corrupt or cut-short file, or an unreadable one
        # torch's own message tells how to load the file unsafely: socmap names what it found instead
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if pickled:
            raise SocmapError(f"{path}: not a loadable checkpoint: it holds a pickled {pickled.group(1)}, which "
                              "socmap never writes, and unpickling it could run code; use a checkpoint that "
                              "`socmap train` wrote (or `dvc pull` one)") from None
        raise SocmapError(f"{path}: not a loadable checkpoint ({type(exc).__name__}; corrupt or cut short?); "
                          "rerun `socmap train` (or `dvc pull` it again)") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        raise SocmapError(f"{path}: not a {FORMAT} file ({found or 'no format'}: another socmap version or another "
                          "program wrote it); retrain with `socmap train`")
    return checkpoint
