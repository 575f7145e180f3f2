"""Losses and target transforms: the composite losses must change the gradient, unlike the original's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from socmap.errors import SocmapError
from socmap.losses import RegressionLoss, row_sigma
from socmap.transforms import FeatureNorm, TargetTransform


def original_composite(predicted, target, loss_type: str, alpha: float, sigma: float = 3.0):
    """The original's composite loss: the χ² term rescaled by base / χ² from the current errors."""
    error = predicted - target
    base = error.abs().mean() if loss_type == "composite_l1" else (error**2).mean()
    chi2 = (error.abs() / sigma).mean() if loss_type == "composite_l1" else ((error / sigma) ** 2).mean()
    return alpha * base + (1 - alpha) * chi2 * (base / chi2)


def value_and_grad(fn, predicted):
    predicted = predicted.clone().requires_grad_(True)
    value = fn(predicted)
    value.backward()
    return value.detach(), predicted.grad


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    target_gkg = torch.exp(torch.randn(64, generator=gen, dtype=torch.float64) * 0.6 + 3.0)
    transform = TargetTransform.fit("normalize", target_gkg.numpy())
    target = transform.forward(target_gkg)
    predicted = target + torch.randn(64, generator=gen, dtype=torch.float64) * 0.5
    sigma = torch.as_tensor(row_sigma(target_gkg.numpy(), 3.0, 0.1, transform))
    return predicted, target, sigma


@pytest.mark.parametrize("loss_type, plain", [("composite_l2", "mse"), ("composite_l1", "l1")])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_original_composite_is_the_plain_loss_in_value_and_gradient(batch, loss_type, plain, alpha):
    predicted, target, sigma = batch
    plain_loss = RegressionLoss(plain)
    v0, g0 = value_and_grad(lambda p: plain_loss(p, target, sigma), predicted)
    v1, g1 = value_and_grad(lambda p: original_composite(p, target, loss_type, alpha, sigma=7.0), predicted)
    torch.testing.assert_close(v1, v0)
    torch.testing.assert_close(g1, g0)


@pytest.mark.parametrize("loss_type, plain", [("composite_l2", "mse"), ("composite_l1", "l1")])
def test_socmap_composite_changes_the_gradient(batch, loss_type, plain):
    predicted, target, sigma = batch
    plain_loss, composite = RegressionLoss(plain), RegressionLoss(loss_type, 0.3, sigma.numpy())
    _, g0 = value_and_grad(lambda p: plain_loss(p, target, sigma), predicted)
    _, g1 = value_and_grad(lambda p: composite(p, target, sigma), predicted)
    # the gradient is no longer a multiple of the plain one: rows are weighed by their uncertainty
    ratio = g1 / g0
    assert ratio.std() > 0.05 * ratio.abs().mean()
    # high-OC rows (large σ') get a smaller share than in the plain loss
    big, small = sigma.argmax(), sigma.argmin()
    assert ratio[big] < ratio[small]


def test_composite_formula(batch):
    predicted, target, sigma = batch
    s = sigma.numpy()
    error = (predicted - target).numpy()
    l2 = RegressionLoss("composite_l2", 0.3, s)(predicted, target, sigma).item()
    scale2 = 1 / np.mean(1 / s**2)
    assert l2 == pytest.approx(0.3 * np.mean(error**2) + 0.7 * scale2 * np.mean(error**2 / s**2), rel=1e-12)
    l1 = RegressionLoss("composite_l1", 0.3, s)(predicted, target, sigma).item()
    scale1 = 1 / np.mean(1 / s)
    assert l1 == pytest.approx(0.3 * np.mean(np.abs(error)) + 0.7 * scale1 * np.mean(np.abs(error) / s), rel=1e-12)


def test_composite_with_constant_sigma_is_the_plain_loss(batch):
    """The scale is a constant that only evens out magnitudes: with one σ for all rows nothing changes."""
    predicted, target, _ = batch
    sigma = torch.full_like(target, 0.2)
    composite = RegressionLoss("composite_l2", 0.4, sigma.numpy())
    assert composite(predicted, target, sigma).item() == pytest.approx(((predicted - target) ** 2).mean().item())


def test_unknown_loss_is_a_params_error():
    with pytest.raises(SocmapError, match="train.loss_type = 'huber'.*composite_l2"):
        RegressionLoss("huber")


@pytest.mark.parametrize("kind", ["none", "log", "normalize"])
def test_transform_round_trip_and_derivative(kind):
    y = np.array([2.0, 9.5, 20.0, 55.0, 140.0])
    t = TargetTransform.fit(kind, y)
    np.testing.assert_allclose(t.inverse(t.forward(y)), y, rtol=1e-12)
    torch.testing.assert_close(t.inverse(t.forward(torch.as_tensor(y))), torch.as_tensor(y))
    h = 1e-6
    numeric = (t.forward(y + h) - t.forward(y - h)) / (2 * h)
    np.testing.assert_allclose(t.derivative(y), numeric, rtol=1e-5)
    assert TargetTransform.from_dict(t.to_dict()) == t


def test_sigma_is_carried_into_the_transformed_space():
    y = np.array([10.0, 50.0])
    t = TargetTransform.fit("normalize", np.array([10.0, 30.0, 50.0]))
    np.testing.assert_allclose(row_sigma(y, 3.0, 0.1, t), (3.0 + 0.1 * y) / t.std)
    log = TargetTransform.fit("log", y)
    np.testing.assert_allclose(row_sigma(y, 3.0, 0.1, log), (3.0 + 0.1 * y) / y)


def test_feature_norm_is_per_band_and_year():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 5, 5, 4)).astype(np.float32)
    x = x * np.arange(1, 4)[None, :, None, None, None] + np.arange(4)[None, None, None, None, :] * 10
    x[:, 2] = 7.0  # a constant band stays finite
    norm = FeatureNorm.fit(x)
    assert norm.mean.shape == (3, 4)
    z = norm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z[:, :2].mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert np.all(z[:, 2] == 0.0)
