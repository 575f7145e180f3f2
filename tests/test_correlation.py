"""The errors places and years share: the kriging errors' covariance against a simulation of it, the variance of a
polygon mean by hand, the floor, the correlation between years, and the change interval of two identical years."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from socmap.correlation import (ErrorCorrelation, HonestErrors, SharedError, YearError, kriging_error_pairs,
                                normal_quantile, residual_pairs, shared_scale)
from socmap.ensemble import Ensemble
from socmap.intervals import fit_calibration
from socmap.kriging import ResidualField, Variogram


def toy_field(rng: np.random.Generator, rows: int = 25, neighbours: int = 6) -> ResidualField:
    xy = rng.uniform(0, 20_000, (rows, 2))
    return ResidualField(xy, rng.normal(size=rows), Variogram(nugget=0.2, sill=1.0, range_km=6.0), "log", neighbours)


def test_kriging_error_pairs_match_the_simulated_covariance_of_kriging_errors():
    rng = np.random.default_rng(0)
    field = toy_field(rng)
    places = rng.uniform(2_000, 18_000, (8, 2))
    sigma = rng.uniform(1.0, 3.0, 8)
    # draw the field at the data rows and the places, measure the data with the nugget, krige, and collect the errors
    points = np.concatenate([field.xy, places]) / 1000.0
    v = field.variogram
    covariance = v.covariance(cdist(points, points)) + 1e-9 * np.eye(len(points))
    draws = rng.multivariate_normal(np.zeros(len(points)), covariance, size=40_000)  # [draws, rows + places]
    data = draws[:, :25] + rng.normal(0, np.sqrt(v.nugget), (40_000, 25))
    value = draws[:, 25:] + rng.normal(0, np.sqrt(v.nugget), (40_000, 8))  # a place's own value has the nugget too
    index, weights, target = field.weights(places)
    errors = value - np.einsum("pk,dpk->dp", weights, data[:, index])
    variance = v.nugget + v.sill - np.einsum("pk,pk->p", weights, target)
    np.testing.assert_allclose(errors.var(axis=0), variance, rtol=0.05)  # the kriging variance
    b = sigma / np.sqrt(variance)
    simulated = b @ np.cov(errors.T) @ b - np.sum(b**2 * errors.var(axis=0, ddof=1))
    assert kriging_error_pairs(field, places / 1000.0, sigma) == pytest.approx(simulated, rel=0.08)


def test_residual_pairs_by_hand():
    variogram = Variogram(nugget=1.0, sill=3.0, range_km=2.0)
    km = np.array([[0.0, 0.0], [2.0, 0.0]])
    # two places 2 km apart: correlation 3·e⁻¹ / 4, counted both ways
    assert residual_pairs(variogram, km, np.array([2.0, 5.0])) == pytest.approx(2 * 2 * 5 * 0.75 * np.exp(-1))


def test_the_variance_of_a_mean_over_every_pixel_is_the_double_sum_and_does_not_shrink_like_one_over_n():
    rng = np.random.default_rng(1)
    field = toy_field(rng)
    x, y = np.meshgrid(np.arange(5_000, 15_000, 1000.0), np.arange(5_000, 12_000, 1000.0))
    x, y = x.ravel(), y.ravel()
    sigma = rng.uniform(2.0, 4.0, x.size)
    shared = SharedError(floor=0.1, bias=0.3, rows=50)
    variance = shared.mean_variance(x, y, sigma, x.size, [field])
    km = np.stack([x, y], axis=1) / 1000.0
    index, weights, target = field.weights(km * 1000.0)
    kriged = field.variogram.nugget + field.variogram.sill - np.einsum("mk,mk->m", weights, target)
    pairs = kriging_error_pairs(field, km, np.sqrt(kriged))  # Σ over distinct pairs of the errors' covariance
    n = x.size
    correlation_sum = kriging_error_pairs(field, km, sigma)
    expected = (np.sum(sigma**2) + 0.1 * (sigma.sum() ** 2 - np.sum(sigma**2)) + 0.9 * correlation_sum) / n**2
    assert variance == pytest.approx(expected)
    assert pairs > 0 and variance > 3 * np.mean(sigma**2) / n  # errors shared between pixels: no 1/n
    # wholly shared (floor 1): the mean's error is the mean σ
    assert SharedError(1.0, 0.0, 50).mean_variance(x, y, sigma, n, [field]) == pytest.approx(sigma.mean() ** 2)
    # an even sample of the pixels stands in for all of them
    sample = (np.arange(n) % 2) == 0
    sampled = shared.mean_variance(x[sample], y[sample], sigma[sample], n, [field])
    assert sampled == pytest.approx(variance, rel=0.15)


def test_without_kriging_the_residual_variograms_correlate_the_places():
    x, y, sigma = np.array([0.0, 1000.0]), np.array([0.0, 0.0]), np.array([2.0, 2.0])
    shared = SharedError(floor=0.0, bias=0.0, rows=10, variograms=((1.0, 1.0, 1.0),))
    # ρ = 1·e⁻¹ / 2 between the two: (4 + 4 + 2·4·ρ) / 4
    assert shared.mean_variance(x, y, sigma, 2) == pytest.approx((8 + 8 * 0.5 * np.exp(-1)) / 4)


def test_the_floor_is_the_bias_share_and_the_scale_the_rms_of_the_standardised_validation_errors():
    honest = HonestErrors(row=np.arange(4), run=np.zeros(4, int), error=np.array([1.0, 3.0, -1.0, 1.0]),
                          sigma=np.array([1.0, 1.0, 1.0, 2.0]))
    shared = SharedError.fit(honest)
    square = (1 + 9 + 1 + 0.25) / 4  # the mean of (e / σ)²
    assert shared.bias == pytest.approx((1 + 3 - 1 + 0.5) / 4) and shared.floor == pytest.approx(0.875**2 / square)
    assert shared.scale == pytest.approx(np.sqrt(square))
    x, y = np.array([0.0, 5000.0]), np.zeros(2)
    unit = SharedError(shared.floor, shared.bias, shared.rows)  # σ as the error's scale
    assert shared.mean_variance(x, y, np.ones(2), 2) == pytest.approx(square * unit.mean_variance(x, y, np.ones(2), 2))


def calibration(runs: int = 3) -> dict:
    rng = np.random.default_rng(0)
    predicted = rng.uniform(10, 40, 300)
    return fit_calibration(predicted * np.exp(rng.normal(0, 0.3, 300)), predicted, rng.uniform(1, 3, 300), runs, 0.9)


def revisits(rho: float, pairs: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Samples of `pairs` sites seen in 2015 and 2018, whose shared errors correlate by `rho`, and their
    predictions (3 runs, the same in every run) and roles (each site validation in run 0)."""
    level = rng.uniform(10, 40, pairs)
    e1, z = rng.standard_normal(pairs), rng.standard_normal(pairs)
    e2 = rho * e1 + np.sqrt(1 - rho**2) * z
    cal = calibration()
    sigma = shared_scale(level, cal)
    samples = pd.DataFrame({"site_id": np.tile(np.arange(pairs), 2), "year": np.repeat([2015, 2018], pairs),
                            "x": 0.0, "y": 0.0, "target": np.concatenate([level + sigma * e1, level + sigma * e2])})
    predictions = np.tile(np.concatenate([level, level]), (3, 1))
    roles = np.array([np.full(2 * pairs, "val")] + [np.full(2 * pairs, "train")] * 2)
    return samples, predictions, roles


def test_the_correlation_between_years_is_recovered_from_revisits_and_its_quantile_covers():
    rng = np.random.default_rng(3)
    cal = calibration()
    for rho in (0.2, 0.7):
        samples, predictions, roles = revisits(rho, 600, rng)
        years = ErrorCorrelation.fit(samples, predictions, roles, cal, None).years
        assert years.pairs == 600 and years.rho == pytest.approx(rho, abs=0.1)
        assert years.quantile == pytest.approx(normal_quantile(0.9), rel=0.12)  # the change errors are normal
    few = ErrorCorrelation.fit(*revisits(0.7, 10, rng), cal, None).years
    assert (few.rho, few.quantile, few.pairs) == (0.0, normal_quantile(0.9), 10)  # too few pairs: independent years


def test_the_change_interval_of_two_identical_years_is_centred_on_zero_and_nothing_is_detectable():
    cal = calibration()
    correlation = ErrorCorrelation(SharedError(0.0, 0.0, 10), YearError(rho=0.6, quantile=1.7, level=0.9, pairs=50))
    ensemble = Ensemble([], cal, correlation=correlation)
    rng = np.random.default_rng(4)
    members = rng.uniform(10, 40, (3, 4, 5)).astype(np.float32)
    members[:, 0, 0] = np.nan  # unpredicted
    kappa = rng.uniform(0.3, 1.0, (4, 5))
    bands = ensemble.bands({2018: members, 2020: members.copy()}, (2018, 2020), kappa)["soc_change_2018_2020"]
    assert bands.shape == (5, 4, 5) and (bands[:, 0, 0] == -9999.0).all()
    mean, std, lower, upper, detectable = bands[:, 1:].reshape(5, -1)
    assert (mean == 0).all() and (std == 0).all()
    np.testing.assert_allclose(lower, -upper)
    sigma = shared_scale(members.mean(axis=0), cal, kappa)[1:].ravel()
    np.testing.assert_allclose(upper, 1.7 * np.sqrt(2 * (1 - 0.6)) * sigma, rtol=1e-5)
    assert (upper > 0).all() and (detectable == 0).all()
    # a change far beyond the interval is detectable
    moved = ensemble.bands({2018: members, 2020: members + 50}, (2018, 2020), kappa)["soc_change_2018_2020"]
    assert (moved[4, 1:] == 1).all() and (moved[2, 1:] > 0).all()


def test_error_correlation_round_trips_through_json():
    correlation = ErrorCorrelation(SharedError(0.02, 0.14, 480, ((0.1, 0.5, 12.0),)), YearError(0.7, 1.6, 0.9, 169))
    import json

    assert ErrorCorrelation.from_dict(json.loads(json.dumps(correlation.to_dict()))) == correlation
