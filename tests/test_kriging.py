"""Regression kriging: the variogram fit, the kriging system, the residual spaces, the fields file."""

from __future__ import annotations

import numpy as np
import pytest

from figures import hand_made
from socmap.config import EvaluateConfig
from socmap.errors import SocmapError
from socmap.kriging import (ResidualField, Variogram, empirical_variogram, fit_variogram, krige_runs, load_fields,
                            save_fields, to_residuals)


def exponential_field(n: int, nugget: float, sill: float, range_km: float, seed: int = 0):
    """Points (metres) on a 100 km square and residuals drawn from an exponential covariance plus nugget."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100_000, (n, 2))
    distance = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) / 1000
    covariance = sill * np.exp(-distance / range_km) + nugget * np.eye(n)
    return xy, np.linalg.cholesky(covariance) @ rng.normal(size=n)


def test_variogram_fit_recovers_a_known_field():
    xy, residuals = exponential_field(1500, nugget=0.3, sill=1.0, range_km=8.0)
    fitted = fit_variogram(xy, residuals)
    assert fitted.nugget == pytest.approx(0.3, abs=0.15)
    assert fitted.sill == pytest.approx(1.0, abs=0.35)
    assert 4.0 < fitted.range_km < 16.0
    lags, gamma, pairs = empirical_variogram(xy, residuals)
    assert lags[0] == 1.0 and pairs.sum() > 100_000 and gamma[-1] > gamma[0]


def test_without_spatial_structure_kriging_adds_only_the_mean():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1e6, (6, 2))  # six rows hundreds of km apart: no pairs within the variogram's lags
    field = ResidualField.fit(xy, np.full(6, 20.0), np.full(6, 20.0) - np.arange(6), "linear", 4)
    assert field.variogram.sill == 0.0
    estimate, variance = field.krige(rng.uniform(0, 1e6, (9, 2)))
    assert np.allclose(estimate, np.arange(6).mean()) and np.array_equal(variance, np.ones(9))


def test_kriging_equals_the_full_simple_kriging_system():
    xy, residuals = exponential_field(40, nugget=0.2, sill=1.0, range_km=10.0, seed=3)
    variogram = Variogram(nugget=0.2, sill=1.0, range_km=10.0)
    field = ResidualField(xy, residuals, variogram, "linear", neighbours=40)
    new = np.array([[50_000.0, 50_000.0], [10_000.0, 90_000.0], [xy[0, 0], xy[0, 1]]])
    km = xy / 1000
    system = variogram.covariance(np.hypot(*(km[:, None] - km[None]).transpose(2, 0, 1))) + 0.2 * np.eye(40)
    target = variogram.covariance(np.hypot(*(km[:, None] - new[None] / 1000).transpose(2, 0, 1)))  # [40, 3]
    mean = residuals.mean()
    weights = np.linalg.solve(system, target)  # [40, 3]
    estimate, variance = field.krige(new)
    assert np.allclose(estimate, mean + weights.T @ (residuals - mean))
    assert np.allclose(variance, 1 - (weights * target).sum(axis=0) / 1.2)  # over nugget + sill
    assert variance[2] < variance[0] < 1  # on a training row kriging explains the most
    # with few neighbours the estimate is local: far from every row it falls back to the mean
    local = ResidualField(xy, residuals, variogram, "linear", neighbours=8)
    estimate, variance = local.krige(np.array([[5e6, 5e6]]))
    assert estimate[0] == pytest.approx(mean) and variance[0] == pytest.approx(1.0)


def test_revisited_sites_keep_the_system_solvable():
    xy = np.repeat(np.random.default_rng(1).uniform(0, 50_000, (30, 2)), 3, axis=0)  # every site three times
    residuals = np.repeat(np.random.default_rng(2).normal(size=30), 3)
    field = ResidualField(xy, residuals, Variogram(nugget=0.05, sill=1.0, range_km=10.0), "linear", 16)
    kriged, _ = field.krige(xy[:3])
    assert kriged.tolist() == pytest.approx([kriged[0]] * 3, abs=1e-9)  # one site, one estimate
    assert kriged[0] == pytest.approx(residuals[0], abs=0.2)


def test_spaces_multiply_or_add():
    observed, predicted = np.array([20.0, 10.0, 0.0]), np.array([10.0, 20.0, 5.0])
    assert np.allclose(to_residuals(observed, predicted, "log"), [np.log(2), -np.log(2), np.log(0.1 / 5)])
    assert np.allclose(to_residuals(observed, predicted, "linear"), [10, -10, -5])
    xy = np.random.default_rng(0).uniform(0, 1e5, (50, 2))
    log_field = ResidualField.fit(xy, np.full(50, 20.0), np.full(50, 10.0), "log", 8)
    assert np.allclose(log_field.correct(np.array([5.0]), *log_field.krige(xy[:1])), 10.0)  # 5 · exp(log 2)
    linear_field = ResidualField.fit(xy, np.full(50, 20.0), np.full(50, 10.0), "linear", 8)
    assert np.allclose(linear_field.correct(np.array([5.0]), *linear_field.krige(xy[:1])), 15.0)
    # log space: the mean of a log-normal error, exp(r + σ²/2), not its median exp(r)
    noisy = ResidualField(xy, np.zeros(50), Variogram(nugget=0.2, sill=0.0, range_km=2.0), "log", 8)
    assert noisy.correct(np.array([10.0]), *noisy.krige(xy[:1]))[0] == pytest.approx(10.0 * np.exp(0.1))
    rng = np.random.default_rng(5)
    draws = 10.0 * np.exp(rng.normal(0, np.sqrt(0.2), 200_000))
    assert draws.mean() == pytest.approx(10.0 * np.exp(0.1), rel=0.01)
    with pytest.raises(SocmapError, match="evaluate.kriging = 'cubic': must be one of log, linear, none"):
        ResidualField.fit(xy, np.ones(50), np.ones(50), "cubic", 8)


def test_rows_without_a_residual_are_left_out():
    xy = np.random.default_rng(0).uniform(0, 1e5, (50, 2))
    predicted = np.where(np.arange(50) < 5, np.nan, 10.0)  # forest rows no tree left out of its bag
    field = ResidualField.fit(xy, np.full(50, 12.0), predicted, "linear", 8)
    assert len(field.residuals) == 45 and np.allclose(field.krige(xy[:3])[0], 2.0)


def test_fields_file_round_trip_and_errors(tmp_path):
    xy, residuals = exponential_field(200, nugget=0.3, sill=1.0, range_km=8.0)
    fields = [ResidualField.fit(xy, np.exp(residuals) * 10, np.full(200, 10.0), "log", 12),
              ResidualField.fit(xy[:150], np.exp(residuals[:150]) * 10, np.full(150, 10.0), "log", 12)]
    path = tmp_path / "kriging.npz"
    save_fields(path, fields)
    loaded = load_fields(path)
    assert len(loaded) == 2 and loaded[1].variogram == fields[1].variogram and loaded[0].neighbours == 12
    assert np.array_equal(np.stack(loaded[1].krige(xy[:20])), np.stack(fields[1].krige(xy[:20])))
    save_fields(path, [])
    assert load_fields(path) == []
    with pytest.raises(SocmapError, match="missing.npz: residual kriging fields not found; run `socmap evaluate`"):
        load_fields(tmp_path / "missing.npz")
    path.write_bytes(b"not an npz")
    with pytest.raises(SocmapError, match="kriging.npz: not a socmap kriging file"):
        load_fields(path)


@pytest.mark.parametrize("mode", ["holdout", "kfold"])
def test_kriging_is_cross_fitted_and_sees_no_test_target(mode):
    samples, design, predictions, _ = hand_made(mode)
    roles, cfg = design.roles, EvaluateConfig(kriging="log", kriging_neighbours=16)
    xy, targets = samples[["x", "y"]].to_numpy(), samples["target"].to_numpy()
    groups = design.groups
    kriged, added = krige_runs(xy, targets, predictions, roles, groups, cfg, 1200.0)
    for run in range(len(roles)):  # a run's test targets tell its kriging nothing
        test = roles[run] == "test"
        again, _ = krige_runs(xy, np.where(test, 3.0 * targets, targets), predictions, roles, groups, cfg, 1200.0)
        assert np.array_equal(again[run, test], kriged[run, test])
    test = roles[0] == "test"
    # the residuals kriged are the validation rows', each by the run that held it out
    runs, rows = np.nonzero(roles == "val")
    field = added.fields[0]
    if mode == "holdout":
        assert all(f is field for f in added.fields) and len(field.residuals) == len(rows)
        expected = np.log(targets[rows]) - np.log(predictions[runs, rows])
        assert np.allclose(np.sort(field.residuals), np.sort(expected))
    else:  # fold 0's field: the rows its runs validate, each by the run that held it out
        first = groups[runs] == 0
        assert all(added.fields[k] is field for k in np.flatnonzero(groups == 0)) and field is not added.fields[-1]
        expected = np.log(targets[rows[first]]) - np.log(predictions[runs[first], rows[first]])
        assert len(field.residuals) == first.sum() and np.allclose(np.sort(field.residuals), np.sort(expected))
    # a validation row is kriged without its own residual: doubling its target moves its kriged value only
    # through the variogram, fitted to all residuals (a hundredth of what kriging itself would)
    row, run = rows[0], runs[0]
    nudged = targets.copy()
    nudged[row] *= 2.0
    moved, _ = krige_runs(xy, nudged, predictions, roles, groups, cfg, 1200.0)
    assert abs(np.log(moved[run, row] / kriged[run, row])) < 0.01 * np.log(2.0)
    tested = roles[run] == "test"
    assert not np.array_equal(moved[run, tested], kriged[run, tested])  # its run's test rows are kriged from it
    assert np.array_equal(added.unkriged, predictions)
    assert krige_runs(xy, targets, predictions, roles, groups, EvaluateConfig(kriging="none"), 0.0) == (predictions, None)
