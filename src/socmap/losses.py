"""Training losses (train.loss_type): l1, mse, and composite losses whose χ² term changes the gradient.

With e_i = ŷ_i − T(y_i) the error in the transformed target space (T the
target transform) and a per-row measurement uncertainty in g/kg carried into
that space,

    σ_i  = loss_sigma + loss_sigma_relative · y_i                 (g/kg)
    σ'_i = σ_i · |T'(y_i)|                                        (transformed space)

the composite losses are

    composite_l2 = α · mean(e_i²)  + (1 − α) · s₂ · mean(e_i² / σ'_i²)
    composite_l1 = α · mean(|e_i|) + (1 − α) · s₁ · mean(|e_i| / σ'_i)

with α = loss_alpha and the constants s₂ = 1 / mean_train(1/σ'_i²) and
s₁ = 1 / mean_train(1/σ'_i), fixed once from the training rows so that both
terms have the same scale. The χ² term weighs each row by its inverse
uncertainty: rows whose OC is high (and uncertain) pull less. The original
rescaled its χ² term by base / χ² computed from the current errors, which
turns the composite loss back into the plain one, in value and in gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from socmap.config import TrainConfig, choices
from socmap.errors import SocmapError
from socmap.transforms import TargetTransform

LOSSES = choices(TrainConfig, "loss_type")


def row_sigma(targets: np.ndarray, sigma: float, sigma_relative: float,
              transform: TargetTransform) -> np.ndarray:
    """σ'_i: each row's measurement uncertainty (σ + relative·y g/kg) in the transformed space."""
    targets = np.asarray(targets, dtype=np.float64)
    return (sigma + sigma_relative * targets) * np.abs(transform.derivative(targets))


class RegressionLoss(nn.Module):
    """``loss(predicted, target, sigma)`` over one batch, all in the transformed space, sigma = σ'_i."""

    def __init__(self, loss_type: str, alpha: float = 0.5, train_sigma: np.ndarray | None = None):
        super().__init__()
        if loss_type not in LOSSES:
            raise SocmapError(f"train.loss_type = {loss_type!r}: must be one of {', '.join(LOSSES)}")
        self.loss_type = loss_type
        self.alpha = alpha
        self.power = 1 if loss_type.endswith("l1") else 2
        self.scale = 1.0
        if loss_type.startswith("composite"):
            if train_sigma is None:
                raise ValueError("a composite loss needs the training rows' sigma for its scale")
            self.scale = float(1.0 / np.mean(np.asarray(train_sigma, dtype=np.float64) ** -self.power))

    def forward(self, predicted: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        error = (predicted - target).abs() ** self.power  # [B]: |e| or e²
        base = error.mean()
        if not self.loss_type.startswith("composite"):
            return base
        chi2 = (error / sigma**self.power).mean()
        return self.alpha * base + (1.0 - self.alpha) * self.scale * chi2
