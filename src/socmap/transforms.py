"""Target transforms and feature normalisation, fitted on training rows only and stored as plain values;
the window's symmetries, for augmentation in training and averaging in prediction.

The transforms travel inside checkpoints as tensors, numbers and strings (no
pickled objects), so a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from socmap.config import TrainConfig, choices
from socmap.errors import SocmapError

TRANSFORMS = choices(TrainConfig, "target_transform")
LOG_OFFSET = 1e-10  # as the original: log(y + 1e-10), so y = 0 stays finite


@dataclass(frozen=True)
class TargetTransform:
    """y (g/kg) ↔ the space the model learns in: ``none`` y, ``log`` log(y + 1e-10),
    ``normalize`` (y − mean) / std."""

    kind: str = "none"
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, kind: str, targets: np.ndarray) -> "TargetTransform":
        """Fit on the training rows' targets (g/kg)."""
        if kind not in TRANSFORMS:
            raise SocmapError(f"train.target_transform = {kind!r}: must be one of {', '.join(TRANSFORMS)}")
        if kind != "normalize":
            return cls(kind)
        targets = np.asarray(targets, dtype=np.float64)
        return cls(kind, float(targets.mean()), float(targets.std()) or 1.0)

    def forward(self, y):
        """g/kg to the transformed space (numpy arrays or tensors)."""
        if self.kind == "log":
            return np.log(y + LOG_OFFSET) if isinstance(y, np.ndarray) else torch.log(y + LOG_OFFSET)
        return (y - self.mean) / self.std

    def inverse(self, z):
        """The transformed space back to g/kg (numpy arrays or tensors)."""
        if self.kind == "log":
            return (np.exp(z) if isinstance(z, np.ndarray) else torch.exp(z)) - LOG_OFFSET
        return z * self.std + self.mean

    def derivative(self, y: np.ndarray) -> np.ndarray:
        """d forward / dy at y: how a g/kg interval at y scales into the transformed space."""
        if self.kind == "log":
            return 1.0 / (np.asarray(y, dtype=np.float64) + LOG_OFFSET)
        return np.full(np.shape(y), 1.0 / self.std)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, values: dict) -> "TargetTransform":
        return cls(str(values["kind"]), float(values["mean"]), float(values["std"]))


@dataclass(frozen=True)
class FeatureNorm:
    """Per band and per time step z-scores: ``(x − mean[c, t]) / std[c, t]``, statistics over the
    training rows' pixels only (the original used every row, validation included)."""

    mean: torch.Tensor  # [C, T]
    std: torch.Tensor  # [C, T]

    @classmethod
    def fit(cls, patches: np.ndarray) -> "FeatureNorm":
        """Fit on the training rows' patches ``[N, C, W, W, T]``."""
        x = np.asarray(patches, dtype=np.float64)
        mean = x.mean(axis=(0, 2, 3))  # [C, T]
        std = x.std(axis=(0, 2, 3))
        std[std == 0] = 1.0  # a constant band (or year) carries no information; keep it finite
        return cls(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw patches ``[B, C, W, W, T]`` on their own device."""
        mean = self.mean.to(x.device)[None, :, None, None, :]
        std = self.std.to(x.device)[None, :, None, None, :]
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureNorm":
        return cls(values["mean"].float(), values["std"].float())


DIHEDRAL = 8  # the symmetries of a square window: 4 rotations, each with or without a mirror


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry `k` (0–7, 0 the identity) of the square window of patches ``[B, C, H, W, T]``:
    rotation by (k mod 4) quarter turns over (H, W), mirrored over W when k ≥ 4."""
    if k >= 4:
        x = x.flip(3)
    return torch.rot90(x, k % 4, dims=(2, 3))


# train.augment: the groups of window symmetries a training window is drawn from (a prediction averages the
# largest of them inside it with at most train.tta views): none; the east-west mirror, which keeps north up
# (a direction effect such as more carbon on north-facing slopes survives it); the four quarter turns; all eight
GROUPS = dict(zip(choices(TrainConfig, "augment"), ((0,), (0, 4), (0, 1, 2, 3), tuple(range(DIHEDRAL))), strict=True))


def symmetric_mean(model: torch.nn.Module, x: torch.Tensor, views: tuple[int, ...]) -> torch.Tensor:
    """`model`'s output for normalised patches ``[B, C, H, W, T]`` averaged over the window symmetries
    `views` (test-time augmentation): ``[B]``, one forward pass per symmetry."""
    if tuple(views) == (0,):
        return model(x)
    return torch.stack([model(dihedral(x, k)) for k in views]).mean(0)


def random_symmetry(x: torch.Tensor, generator: torch.Generator, group: tuple[int, ...]) -> torch.Tensor:
    """Each row of ``[B, C, H, W, T]`` under one of the window symmetries `group`, drawn from `generator` (CPU).

    Label-preserving where the process does not care about the directions the group mixes. One
    indexed copy per symmetry, not per row; the draw depends only on the generator's state and B.
    """
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"the window of patches {tuple(x.shape)} is not square")
    draw = torch.tensor(group)[torch.randint(len(group), (x.shape[0],), generator=generator)].to(x.device)
    out = torch.empty_like(x)
    for k in group:
        rows = (draw == k).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = dihedral(x[rows], k)
    return out
