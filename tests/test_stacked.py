"""The batched ensemble: every member and view in one forward gives each member's own predictions, for every
architecture, window and number of views; members of different architectures are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from socmap.errors import SocmapError
from socmap.models import ModelSpec
from socmap.predict import Predictor
from socmap.stacked import StackedEnsemble
from socmap.transforms import GROUPS

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS, YEARS = 4, 3
TARGETS = ({"kind": "normalize", "mean": 25.0, "std": 10.0}, {"kind": "log", "mean": 0.0, "std": 1.0},
           {"kind": "none", "mean": 0.0, "std": 1.0})


def members(name: str, window_size: int, augment: str, count: int = 3, hidden_size: int = 16) -> list[Predictor]:
    """`count` members of one architecture with their own random weights, normalisation and target transform."""
    spec = ModelSpec(name, BANDS, window_size, hidden_size, 2, 0.25, tuple(f"b{i}" for i in range(BANDS)), YEARS,
                     GROUPS[augment])
    out = []
    for run in range(count):
        torch.manual_seed(run)
        model = spec.build()
        rng = np.random.default_rng(run)
        target = TARGETS[run % len(TARGETS)]
        last = model.head[-1]
        with torch.no_grad():  # outputs that vary by g/kg from patch to patch, around tens of g/kg
            last.weight *= 200.0 if target["kind"] == "none" else 20.0
            last.bias += 3.0 if target["kind"] == "log" else 0.0 if target["kind"] == "normalize" else 25.0
        checkpoint = {"model": spec.to_dict(), "state_dict": model.state_dict(),
                      "features": {"mean": torch.as_tensor(rng.normal(100, 10, (BANDS, YEARS)), dtype=torch.float32),
                                   "std": torch.as_tensor(rng.uniform(5, 30, (BANDS, YEARS)), dtype=torch.float32)},
                      "target": target, "run": run, "epoch": 0, "val_metrics": {}}
        out.append(Predictor(checkpoint, device="cpu", source=f"models/run_{run}.pt"))
    return out


def patches(window_size: int, rows: int = 300) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(7).normal(100, 20, (rows, BANDS, window_size, window_size, YEARS)),
                           dtype=torch.float32)


@pytest.mark.parametrize("name, window_size, augment", [
    ("refitted_cov_lstm", 5, "turns"),  # the default: the second convolution as a dense matrix
    ("refitted_cov_lstm", 7, "dihedral"),  # a 3×3 input of the second convolution: still dense
    ("refitted_cov_lstm", 9, "mirror"),  # a 4×4 input: both convolutions grouped
    ("refitted_cov_lstm", 5, "none"),
    ("cnn", 5, "turns"),
    ("cnn", 11, "dihedral"),
    ("lstm", 5, "turns"),  # one view: the centre pixel does not move
    ("lstm", 3, "dihedral"),
    ("attention", 5, "dihedral"),  # the transformer one member after the other
    ("attention", 7, "none"),
    ("skip_cov_lstm", 5, "dihedral"),  # the covariates around the CNN
    ("skip_cov_lstm", 9, "turns"),
])
def test_batched_forward_gives_each_members_own_predictions(name, window_size, augment):
    ensemble = members(name, window_size, augment)
    x = patches(window_size)  # more pixels than one chunk of the batched forward
    expected = torch.stack([member.predict_tensor(x) for member in ensemble])  # [M, B]
    got = StackedEnsemble(ensemble).predict_tensor(x)
    assert got.shape == (len(ensemble), len(x))
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-4)
    assert expected.std(dim=1).min() > 0.1  # the members' outputs vary with the patch: the check has teeth
    batches = StackedEnsemble(ensemble).predict(x.numpy(), batch_size=64)  # numpy in batches, float64 out
    np.testing.assert_allclose(batches, expected.double().numpy(), rtol=2e-5, atol=1e-4)


def test_batched_forward_follows_the_views_and_the_members_order():
    ensemble = members("refitted_cov_lstm", 5, "turns")
    x = patches(5, rows=20)
    stacked = StackedEnsemble(ensemble)
    turned = torch.rot90(x, 1, dims=(2, 3))  # a quarter turn of every window: the same 4 views
    torch.testing.assert_close(stacked.predict_tensor(turned), stacked.predict_tensor(x), rtol=2e-5, atol=1e-4)
    reordered = StackedEnsemble(ensemble[::-1]).predict_tensor(x)
    torch.testing.assert_close(reordered, stacked.predict_tensor(x).flip(0))


def test_chunks_on_several_threads_give_the_same_bits_as_on_one():
    stacked = StackedEnsemble(members("refitted_cov_lstm", 5, "turns"))
    x = patches(5)
    one = stacked.predict_tensor(x)  # one_thread: the chunks one after the other
    torch.set_num_threads(2)
    assert torch.equal(stacked.predict_tensor(x), one)


def test_members_of_another_architecture_or_patches_of_another_shape_are_refused():
    ensemble = members("refitted_cov_lstm", 5, "turns", count=2)
    other = members("refitted_cov_lstm", 5, "mirror", count=1)[0]
    with pytest.raises(SocmapError, match=r"models/run_0.pt: trained as .*views=\(0, 4\).*, but models/run_0.pt as .*views=\(0, 1, 2, 3\)"):
        StackedEnsemble([ensemble[0], other])
    with pytest.raises(SocmapError, match=r"run_0.pt: patches of shape \(4, 5, 5, 4\) .* trained on \(4, 5, 5, 3\)"):
        StackedEnsemble(ensemble).predict_tensor(torch.zeros(2, BANDS, 5, 5, YEARS + 1))
    assert dataclasses.replace(ensemble[0].spec, views=(0, 4)) == other.spec
