"""Prediction intervals from the ensemble spread, calibrated by split conformal prediction.

A row's interval is ``mean + q·u`` for the lower and upper split-conformal quantiles ``q`` of the
signed scores ``(observed − prediction) / u`` on the calibration rows, where ``u`` comes from a
variance model of the error: each run's error is ``ε + v_k``, a part that all runs share (the
noise and what no run can learn, of variance ``κ·(s0² + (relative·mean)²)``: SOC errors grow with
SOC) and a run-specific part of variance std² (the ensemble spread). One run's error then has
variance ``κ·(s0² + (relative·mean)²) + std²``, the K-run mean's ``κ·(s0² + (relative·mean)²) + std²/K``:

- calibration rows are validation rows, each scored with the one run that did not train on it
  (the run in which it is validation); the other runs may have trained on it;
- their `std` is the spread of those *other* runs: fitting the row moves them together towards the
  observation but leaves their disagreement about the same, whereas a spread that includes the
  honest run would swell exactly where its error is large;
- s0² and relative² are fitted (non-negative least squares) to the squared validation errors less
  the spread²; only the shape of ``u`` rests on this fit, the coverage rests on the quantiles;
- signed quantiles keep the intervals skewed like SOC itself; the lower bound is clipped at 0;
- κ is the relative kriging variance (`socmap.kriging`; 1 without kriging): kriged residuals explain
  more of the error next to the training sites than far from them, and validation rows lie closer
  to them than test rows or most map pixels do. Scaling by κ carries the calibration over.

With fewer than three runs there is no spread beside the honest run, and std is left out of ``u``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls

from socmap.errors import SocmapError

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # nominal coverages calibrated besides evaluate.interval


def fit_calibration(observed: np.ndarray, predicted: np.ndarray, spread: np.ndarray, runs: int,
                    interval: float, levels: tuple[float, ...] = LEVELS, kappa: np.ndarray | None = None) -> dict:
    """Calibrate intervals on honest (observed, single-run prediction, spread of the other runs) rows.

    Args:
        observed: targets of the calibration rows, g/kg.
        predicted: each row's prediction by the run in which it is a validation row, g/kg.
        spread: std (ddof 1) of the other runs' predictions there; NaN when fewer than two.
        kappa: that run's relative kriging variance there; None: no kriging (1).
        runs: number of runs K whose mean the intervals will surround.
        interval: the nominal coverage that `prediction_interval` gives by default.
        levels: further nominal coverages to calibrate (for the calibration plot).
    Returns:
        A JSON-ready dict, the argument `calibration` of `prediction_interval`.
    """
    observed, predicted, spread = (np.asarray(a, dtype=np.float64).ravel() for a in (observed, predicted, spread))
    kappa = np.ones_like(predicted) if kappa is None else np.asarray(kappa, dtype=np.float64).ravel()
    if observed.size < 20:
        raise SocmapError(f"only {observed.size} validation rows to calibrate the intervals on; need at least 20 "
                          f"(raise train.num_runs or use more rows)")
    error = observed - predicted
    weight = 1.0 if runs >= 3 and bool(np.all(np.isfinite(spread))) else 0.0
    spread = weight * np.nan_to_num(spread)
    mse = float(np.mean(error**2))
    shared = np.maximum(error**2 - spread**2, 0.0)  # what is left of each squared error for ε
    (s0_sq, relative_sq), _ = nnls(np.stack([kappa, kappa * predicted**2], axis=1), shared)
    s0 = math.sqrt(max(s0_sq, 0.01 * mse))  # a floor, so that no row gets an empty interval
    relative = math.sqrt(relative_sq)
    scores = np.sort(error / np.sqrt(kappa * (s0**2 + (relative * predicted) ** 2) + spread**2))
    quantiles = {_key(level): list(_conformal_bounds(scores, level)) for level in sorted({*levels, interval})}
    return {
        "method": "split conformal: signed (observed - prediction) / sqrt(kriging_variance * (s0^2 + "
                  "(relative * mean)^2) + spread_weight * std^2 / runs) on validation rows, each scored by the "
                  "run that held it out, std of the other runs",
        "interval": interval,
        "s0": s0,
        "relative": relative,
        "spread_weight": weight,
        "runs": runs,
        "quantiles": quantiles,
        "n": int(observed.size),
        "validation_rmse": math.sqrt(mse),
        "validation_spread_rms": float(np.sqrt(np.mean(spread**2))),
    }


def prediction_interval(mean: np.ndarray, std: np.ndarray, calibration: dict, level: float | None = None,
                        kappa: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (g/kg, lower ≥ 0) around `mean` with `std` the spread of the runs.

    Args:
        mean: the mean of the runs' predictions (``calibration["runs"]`` of them), g/kg.
        std: the spread (ddof 1) of the runs' predictions, g/kg.
        kappa: the relative kriging variance (the mean of the runs'); None: no kriging (1).
        calibration: what `fit_calibration` returned (data/evaluate/calibration.json).
        level: nominal coverage; one of the calibrated levels, default ``calibration["interval"]``.
    """
    level = calibration["interval"] if level is None else level
    try:
        low, high = calibration["quantiles"][_key(level)]
    except KeyError:
        raise SocmapError(f"no interval calibrated at level {level:g}; calibrated: "
                          f"{', '.join(calibration['quantiles'])}") from None
    mean = np.asarray(mean, dtype=np.float64)
    spread_var = (calibration["spread_weight"] * np.nan_to_num(np.asarray(std, dtype=np.float64)) ** 2
                  / calibration["runs"])
    kappa = 1.0 if kappa is None else np.asarray(kappa, dtype=np.float64)
    scale = np.sqrt(kappa * (calibration["s0"] ** 2 + (calibration["relative"] * mean) ** 2) + spread_var)
    return np.maximum(mean + low * scale, 0.0), mean + high * scale


def _conformal_bounds(sorted_scores: np.ndarray, level: float) -> tuple[float, float]:
    """Split-conformal lower and upper score quantiles, each tail holding (1 − level)/2."""
    n = sorted_scores.size
    tail = (1.0 - level) / 2.0
    # the finite-sample correction: the ⌈(n+1)(1−tail)⌉-th smallest of n scores covers a new one
    upper = min(n, math.ceil((n + 1) * (1.0 - tail))) - 1
    lower = max(1, math.floor((n + 1) * tail)) - 1
    return float(sorted_scores[lower]), float(sorted_scores[upper])


def _key(level: float) -> str:
    return f"{level:g}"
