"""Predictions in g/kg from trained checkpoints: one model (`Predictor`) or the run ensemble.

A `Predictor` takes raw patches ``[N, C, W, W, T]`` as the sample stage writes
them (or as the map stage reads them) and applies the normalisation and the
inverse target transform stored in the checkpoint, so callers never see the
transformed space.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from socmap import paths
from socmap.checkpoint import load_checkpoint
from socmap.errors import SocmapError
from socmap.models import ModelSpec
from socmap.transforms import FeatureNorm, TargetTransform, symmetric_mean


class Predictor:
    """A trained model with its normalisation statistics and target transform, in eval mode."""

    def __init__(self, checkpoint: dict, device: str | torch.device | None = None, source: str = "checkpoint"):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.spec = ModelSpec.from_dict(checkpoint["model"])
        self.run: int = int(checkpoint["run"])
        self.epoch: int = int(checkpoint["epoch"])
        self.val_metrics: dict = dict(checkpoint["val_metrics"])
        self.source = source
        self.model = self.spec.build()
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.to(self.device).eval()
        features = FeatureNorm.from_dict(checkpoint["features"])  # on the device once, not per batch
        self.features = FeatureNorm(features.mean.to(self.device), features.std.to(self.device))
        self.target = TargetTransform.from_dict(checkpoint["target"])

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "Predictor":
        """Load a checkpoint (``weights_only=True``) onto `device` (default: CUDA when present, else CPU)."""
        return cls(load_checkpoint(path, "cpu"), device, source=str(path))

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Raw patches ``[B, C, W, W, T]`` (any device) to SOC in g/kg ``[B]`` on this predictor's device."""
        expected = self.spec.input_shape
        if tuple(x.shape[1:]) != expected:
            raise SocmapError(f"{self.source}: patches of shape {tuple(x.shape[1:])} (bands, window, window, "
                              f"years) given, the model was trained on {expected} ({', '.join(self.spec.band_names)})")
        x = x.to(self.device, dtype=torch.float32, non_blocking=True)
        return self.target.inverse(symmetric_mean(self.model, self.features(x), self.spec.views))

    def predict(self, patches: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Raw patches ``[N, C, W, W, T]`` (an array or a memmap, read one batch at a time) to g/kg float64."""
        out = np.empty(len(patches), dtype=np.float64)
        for start in range(0, len(patches), batch_size):
            # a copy: a read-only memmap must not back a tensor
            batch = torch.from_numpy(np.array(patches[start:start + batch_size], dtype=np.float32))
            out[start:start + len(batch)] = self.predict_tensor(batch).double().cpu().numpy()
        return out


def load_ensemble(models_dir: str | os.PathLike = paths.MODELS, device: str | torch.device | None = None
                  ) -> list[Predictor]:
    """Every ``run_{k}.pt`` under `models_dir`, in run order."""
    runs = sorted((int(m.group(1)), p) for p in Path(models_dir).glob("run_*.pt")
                  if (m := re.fullmatch(r"run_(\d+)\.pt", p.name)))
    if not runs:
        raise SocmapError(f"{models_dir}: no run_{{k}}.pt checkpoints; run `socmap train` (or `dvc pull`) first")
    return [Predictor.load(path, device) for _, path in runs]
