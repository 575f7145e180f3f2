"""Split-conformal intervals: coverage on fresh draws, the ensemble correction, bounds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from socmap.errors import SocmapError
from socmap.intervals import LEVELS, fit_calibration, prediction_interval


def draw_world(rng: np.random.Generator, n: int, runs: int, run_sd: float = 0.4):
    """Skewed SOC with noise growing with SOC; run k predicts mu + v_k with v_k ~ N(0, (run_sd·sigma)²)."""
    mu = rng.lognormal(3.0, 0.5, n)
    sigma = 0.25 * mu
    observed = mu + sigma * rng.standard_normal(n)
    predictions = mu + run_sd * sigma * rng.standard_normal((runs, n))
    return observed, predictions


def honest_calibration(observed, predictions, interval=0.9):
    """Score run 0 with the spread of the others, as evaluate does on validation rows."""
    spread = predictions[1:].std(axis=0, ddof=1)
    return fit_calibration(observed, predictions[0], spread, runs=len(predictions), interval=interval)


def test_ensemble_coverage_matches_every_nominal_level():
    rng = np.random.default_rng(0)
    calibration = honest_calibration(*draw_world(rng, 3000, runs=3))
    observed, predictions = draw_world(rng, 40000, runs=3)
    mean, std = predictions.mean(axis=0), predictions.std(axis=0, ddof=1)
    for level in LEVELS:
        lower, upper = prediction_interval(mean, std, calibration, level=level)
        coverage = np.mean((observed >= lower) & (observed <= upper))
        assert abs(coverage - level) < 0.025, (level, coverage)


def test_the_ensemble_mean_gets_narrower_intervals_than_one_run():
    rng = np.random.default_rng(1)
    calibration = honest_calibration(*draw_world(rng, 3000, runs=5, run_sd=0.5))
    assert calibration["spread_weight"] == 1.0 and calibration["runs"] == 5
    observed, predictions = draw_world(rng, 40000, runs=5, run_sd=0.5)
    mean, std = predictions.mean(axis=0), predictions.std(axis=0, ddof=1)
    covered = {}
    for runs in (5, 1):  # the mean of 5 runs, as calibrated; as if it were one run's prediction
        lower, upper = prediction_interval(mean, std, {**calibration, "runs": runs})
        covered[runs] = np.mean((observed >= lower) & (observed <= upper))
    assert abs(covered[5] - 0.9) < 0.02
    assert covered[1] > covered[5] + 0.015  # the run-specific error counted in full: too wide


def test_bounds_are_ordered_non_negative_and_grow_with_spread():
    rng = np.random.default_rng(2)
    calibration = honest_calibration(*draw_world(rng, 500, runs=4))
    mean = np.array([0.5, 20.0, 20.0, 20.0])
    lower, upper = prediction_interval(mean, np.array([1.0, 0.0, 2.0, 8.0]), calibration)
    assert lower[0] == 0.0 and (lower >= 0).all() and (upper > lower).all()
    assert np.all(np.diff((upper - lower)[1:]) > 0)
    assert lower[1] < 20.0 < upper[1]  # no spread still leaves s0 of width
    low, high = prediction_interval(np.array([10.0, 80.0]), np.ones(2), calibration)
    assert (high - low)[1] > 3 * (high - low)[0]  # the noise of this world grows with SOC, and so do the intervals


def test_two_runs_leave_the_spread_out():
    rng = np.random.default_rng(3)
    observed, predictions = draw_world(rng, 2000, runs=2)
    calibration = fit_calibration(observed, predictions[0], np.full(2000, np.nan), runs=2, interval=0.8)
    assert calibration["spread_weight"] == 0.0
    assert calibration["relative"] == pytest.approx(0.25 * np.sqrt(1 + 0.4**2), rel=0.15)  # the world's error sd / SOC
    lower, upper = prediction_interval(np.full(3, 50.0), np.array([0.0, 5.0, 50.0]), calibration)
    assert np.allclose(upper - lower, (upper - lower)[0])
    observed, predictions = draw_world(rng, 40000, runs=2)
    lower, upper = prediction_interval(predictions[0], np.zeros(40000), calibration)
    assert np.mean((observed >= lower) & (observed <= upper)) == pytest.approx(0.8, abs=0.02)


def test_calibration_levels_and_errors():
    rng = np.random.default_rng(4)
    observed, predictions = draw_world(rng, 300, runs=3)
    calibration = honest_calibration(observed, predictions, interval=0.85)
    assert set(calibration["quantiles"]) == {"0.5", "0.6", "0.7", "0.8", "0.85", "0.9", "0.95"}
    low, high = calibration["quantiles"]["0.85"]
    assert low < 0 < high
    with pytest.raises(SocmapError, match="no interval calibrated at level 0.99"):
        prediction_interval(np.ones(2), np.ones(2), calibration, level=0.99)
    with pytest.raises(SocmapError, match="only 10 validation rows"):
        fit_calibration(observed[:10], predictions[0, :10], np.ones(10), runs=3, interval=0.9)


def test_kriging_variance_carries_the_calibration_from_near_rows_to_far_ones():
    """Errors whose shared part grows with the relative kriging variance κ: calibrated where κ is low
    (validation rows next to training sites), the intervals still cover where κ is high (test rows, pixels)."""
    rng = np.random.default_rng(4)

    def draw(n, kappa):
        mu = rng.lognormal(3.0, 0.5, n)
        observed = mu + np.sqrt(kappa) * 0.25 * mu * rng.standard_normal(n)
        return observed, mu + 0.1 * mu * rng.standard_normal((3, n))

    near, far = rng.uniform(0.3, 0.6, 3000), rng.uniform(0.8, 1.0, 40000)
    observed, predictions = draw(3000, near)
    spread = predictions[1:].std(axis=0, ddof=1)
    scaled = fit_calibration(observed, predictions[0], spread, runs=3, interval=0.9, kappa=near)
    plain = fit_calibration(observed, predictions[0], spread, runs=3, interval=0.9)
    observed, predictions = draw(40000, far)
    mean, std = predictions.mean(axis=0), predictions.std(axis=0, ddof=1)
    lower, upper = prediction_interval(mean, std, scaled, kappa=far)
    assert abs(np.mean((observed >= lower) & (observed <= upper)) - 0.9) < 0.02
    lower, upper = prediction_interval(mean, std, plain)
    assert np.mean((observed >= lower) & (observed <= upper)) < 0.85  # without κ: too narrow far away
