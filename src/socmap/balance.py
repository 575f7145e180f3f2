"""The balanced training sampler: the original's target-quantile upsampling, one epoch at a time.

The training targets are cut into `bins` quantile bins (equal edges merged,
as ``pandas.qcut(..., duplicates="drop")`` does, so ties can leave fewer
and unequal bins). Every bin holding fewer than ``fraction`` × the largest
bin's rows is topped up, by drawing its own rows with replacement, to
``floor(fraction × largest)`` rows; bigger bins are left as they are. Each
epoch draws afresh, so the repeats differ between epochs.
"""

from __future__ import annotations

import numpy as np


def quantile_bins(targets: np.ndarray, bins: int) -> np.ndarray:
    """Bin of every target among `bins` quantile bins, right-closed intervals, equal edges merged."""
    edges = np.unique(np.quantile(targets, np.linspace(0.0, 1.0, bins + 1)))
    return np.searchsorted(edges[1:-1], targets, side="left")


def balanced_indices(targets: np.ndarray, bins: int, fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """One epoch's row indices into `targets`: every row once plus the upsampled extras, shuffled.

    Args:
        targets: the training rows' targets (g/kg), finite.
        bins: number of quantile bins (train.balance_bins).
        fraction: bins below this share of the largest bin are upsampled to it (train.balance_fraction).
        rng: the generator that draws the extras and the order.
    """
    targets = np.asarray(targets, dtype=float)
    if targets.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.all(np.isfinite(targets)):
        raise ValueError("balanced_indices: targets must be finite")
    if bins < 1 or not 0 < fraction <= 1:
        raise ValueError(f"balanced_indices: bins = {bins} must be >= 1 and fraction = {fraction} in (0, 1]")
    labels = quantile_bins(targets, bins)
    counts = np.bincount(labels)
    level = int(np.floor(fraction * counts.max()))
    extras = [rng.choice(np.flatnonzero(labels == b), size=level - n, replace=True)
              for b, n in enumerate(counts) if 0 < n < level]
    epoch = np.concatenate([np.arange(targets.size), *extras]).astype(np.int64)
    return rng.permutation(epoch)
