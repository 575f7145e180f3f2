"""Figures recomputed without socmap, and a small hand-made world of predictions to score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from socmap.baselines import Baselines, baseline_names
from socmap.scoring import Design
from socmap.split import test_groups

RUNS = 3  # runs of a test group: holdout's, and kfold's of each fold
FOLDS = 3  # kfold's test folds
BASELINES = baseline_names("log")


def sklearn_figures(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """The regression figures as socmap.metrics defines them, computed with scikit-learn, scipy and numpy instead."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    rmse = np.sqrt(mean_squared_error(observed, predicted))
    q1, q3 = np.percentile(observed, [25, 75])
    ccc = (2 * np.cov(observed, predicted, bias=True)[0, 1]
           / (observed.var() + predicted.var() + (observed.mean() - predicted.mean()) ** 2))
    pearson = pearsonr(observed, predicted)[0] if np.ptp(predicted) > 0 else np.nan
    return {"r2": r2_score(observed, predicted), "r2_pearson": pearson**2,
            "mae": mean_absolute_error(observed, predicted), "rmse": rmse,
            "bias": np.mean(predicted - observed), "rpiq": (q3 - q1) / rmse, "ccc": ccc, "n": observed.size}


def assert_figures(stored: dict, expected: dict, skip: tuple[str, ...] = ()) -> None:
    """Every figure of `expected` (but `skip`) equals the stored one."""
    for key, value in expected.items():
        if key in skip:
            continue
        assert stored[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


def hand_made(mode: str, rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, Design, np.ndarray, Baselines]:
    """Samples, the split's design, predictions [K, N] and baselines for a small world with revisited sites:
    test blocks, validation folds (every row outside test and buffer validated by one run of its test
    group); holdout: RUNS runs, kfold: RUNS runs for each of FOLDS test folds, fold f's runs f·RUNS + k."""
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(rows // 2), 2)[:rows]
    target = rng.lognormal(3.0, 0.5, rows)
    samples = pd.DataFrame({"row_id": np.arange(rows) * 3 + 7, "site_id": site, "x": rng.uniform(0, 5e4, rows),
                            "y": rng.uniform(0, 5e4, rows), "year": 2015 + site % 4, "target": target})
    runs = RUNS if mode == "holdout" else FOLDS * RUNS
    roles = np.full((runs, rows), "train", dtype=object)
    if mode == "holdout":
        test = site < 20
        blocks = np.where(test, site // 4, -1)
        for k in range(RUNS):
            roles[k, test] = "test"
            roles[k, (site >= 20) & (site < 25)] = "buffer"
            roles[k, (site >= 25) & (site % RUNS == k)] = "val"
            roles[k, (site >= 25) & (site % RUNS == (k + 1) % RUNS) & (site % 7 == 0)] = "stop"
    else:
        fold, inner = site % FOLDS, (site // FOLDS) % RUNS
        blocks = site // 10
        for f in range(FOLDS):
            for k in range(RUNS):
                run = f * RUNS + k
                roles[run, fold == f] = "test"
                roles[run, (fold != f) & (inner == k)] = "val"
                roles[run, (fold != f) & (inner == (k + 1) % RUNS) & (site % 7 == 0)] = "stop"
    predictions = target + rng.normal(0, 0.25 * target, (runs, rows)) + rng.normal(0, 1.0, (runs, rows))
    test = roles == "test"
    baselines = {name: np.where(test, target.mean() + i * rng.normal(0, 4, (runs, rows)), np.nan)
                 for i, name in enumerate(BASELINES)}
    centre = np.where(test, baselines["qrf"], np.nan)
    bounds = {"qrf": (centre - 0.6 * target.mean(), centre + 0.6 * target.mean())}
    roles = roles.astype(str)
    return samples, Design(mode, roles, blocks, test_groups(roles)), predictions, Baselines(baselines, bounds, {})
