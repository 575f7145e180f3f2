"""Regression and interval metrics in the target's original units (g/kg), and the ensemble spread.

The one place these figures are computed: training, evaluation and benchmarks all call it.
"""

from __future__ import annotations

import numpy as np

REGRESSION_METRICS = ("r2", "r2_pearson", "mae", "rmse", "bias", "rpiq", "ccc")
UNIT = "g/kg"  # SOC everywhere outside the training loop: metrics, maps, figures


def r2_score(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination, 1 − SS_res / SS_tot (negative when worse than the mean)."""
    observed, predicted = _as_pair(observed, predicted)
    ss_tot = np.sum((observed - observed.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((observed - predicted) ** 2) / ss_tot)


def regression_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """r2, r2_pearson (squared Pearson correlation), mae, rmse, bias (mean of predicted − observed),
    rpiq (interquartile range of the observations / rmse), ccc (Lin's concordance) and n."""
    observed, predicted = _as_pair(observed, predicted)
    error = predicted - observed
    rmse = float(np.sqrt(np.mean(error**2)))
    q1, q3 = np.percentile(observed, [25, 75])
    so, sp = observed.std(), predicted.std()
    pearson = float(np.corrcoef(observed, predicted)[0, 1]) if so > 0 and sp > 0 else float("nan")
    covariance = np.mean((observed - observed.mean()) * (predicted - predicted.mean()))
    ccc = 2 * covariance / (so**2 + sp**2 + (observed.mean() - predicted.mean()) ** 2)
    return {
        "r2": r2_score(observed, predicted),
        "r2_pearson": pearson**2,
        "mae": float(np.mean(np.abs(error))),
        "rmse": rmse,
        "bias": float(np.mean(error)),
        "rpiq": float((q3 - q1) / rmse) if rmse > 0 else float("inf"),
        "ccc": float(ccc),
        "n": int(observed.size),
    }


def spread(values: np.ndarray) -> np.ndarray | float:
    """The ensemble spread: standard deviation over the runs (axis 0), ddof 1; NaN with fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.full(values.shape[1:], np.nan) if values.ndim > 1 else float("nan")
    return values.std(axis=0, ddof=1)


def interval_metrics(observed: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                     level: float | None = None) -> dict[str, float]:
    """picp (share of observations inside [lower, upper]), the mean interval width and, given the nominal
    `level`, the interval score (Winkler; Gneiting and Raftery 2007): the width plus 2/α times how far an
    observation falls outside, α = 1 − level; lower is better, and no interval wins by being wide or
    narrow alone."""
    observed = np.asarray(observed, dtype=np.float64)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    figures = {
        "picp": float(np.mean((observed >= lower) & (observed <= upper))),
        "interval_width": float(np.mean(upper - lower)),
    }
    if level is not None:
        miss = np.maximum(lower - observed, 0.0) + np.maximum(observed - upper, 0.0)
        figures["interval_score"] = float(np.mean(upper - lower + 2.0 / (1.0 - level) * miss))
    return figures


def _as_pair(observed: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    observed = np.asarray(observed, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if observed.shape != predicted.shape or observed.size == 0:
        raise ValueError(f"need two arrays of the same non-zero length, got {observed.size} and {predicted.size}")
    return observed, predicted
