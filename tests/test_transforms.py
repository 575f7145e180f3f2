"""Target transforms, feature normalisation and the window's symmetries, against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from socmap.errors import SocmapError
from socmap.models import build_model
from socmap.transforms import (DIHEDRAL, GROUPS, LOG_OFFSET, FeatureNorm, TargetTransform, dihedral,
                               random_symmetry, symmetric_mean)

TARGETS = np.array([2.0, 4.0, 6.0, 8.0])  # g/kg: mean 5, population std √5


def test_none_is_the_identity():
    transform = TargetTransform.fit("none", TARGETS)
    assert transform == TargetTransform("none", 0.0, 1.0)
    np.testing.assert_array_equal(transform.forward(TARGETS), TARGETS)
    np.testing.assert_array_equal(transform.inverse(TARGETS), TARGETS)
    np.testing.assert_array_equal(transform.derivative(TARGETS), np.ones(4))


def test_log_takes_the_log_of_the_target_plus_the_offset():
    transform = TargetTransform.fit("log", TARGETS)
    assert transform == TargetTransform("log")  # fits nothing
    y = np.exp([0.0, 1.0, 2.5]) - LOG_OFFSET
    np.testing.assert_allclose(transform.forward(y), [0.0, 1.0, 2.5], atol=1e-12)
    np.testing.assert_allclose(transform.inverse(np.array([0.0, 1.0, 2.5])), y, rtol=1e-12)
    assert transform.forward(np.array([0.0]))[0] == pytest.approx(math.log(1e-10))  # finite at 0 g/kg
    np.testing.assert_allclose(transform.derivative([4.0, 0.5]), [0.25, 2.0], rtol=1e-9)
    z = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(transform.forward(transform.inverse(z)), z)


def test_normalize_fits_the_mean_and_population_std():
    transform = TargetTransform.fit("normalize", TARGETS)
    assert transform.mean == 5.0 and transform.std == pytest.approx(math.sqrt(5.0), rel=1e-15)
    np.testing.assert_allclose(transform.forward(TARGETS), np.array([-3, -1, 1, 3]) / math.sqrt(5.0), rtol=1e-12)
    np.testing.assert_allclose(transform.inverse(transform.forward(TARGETS)), TARGETS, rtol=1e-12)
    z = torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(transform.inverse(z), 5.0 + math.sqrt(5.0) * z)
    np.testing.assert_allclose(transform.derivative([1.0, 50.0]), [1 / math.sqrt(5.0)] * 2, rtol=1e-12)
    assert TargetTransform.fit("normalize", np.full(3, 7.0)) == TargetTransform("normalize", 7.0, 1.0)


def test_a_transform_travels_as_plain_values():
    transform = TargetTransform.fit("normalize", TARGETS)
    values = transform.to_dict()
    assert values == {"kind": "normalize", "mean": 5.0, "std": transform.std}
    assert TargetTransform.from_dict(values) == transform
    back = TargetTransform.from_dict({"kind": "log", "mean": np.float32(0), "std": torch.tensor(1.0)})
    assert back == TargetTransform("log") and type(back.std) is float


def test_an_unknown_transform_is_an_error_listing_the_valid_ones():
    with pytest.raises(SocmapError, match=r"train.target_transform = 'sqrt': must be one of none, log, normalize"):
        TargetTransform.fit("sqrt", TARGETS)


def test_feature_norm_is_per_band_and_year_and_keeps_a_constant_band_finite():
    patches = np.empty((2, 2, 2, 2, 2), dtype=np.float32)  # [N, C, W, W, T]
    patches[0, 0, ..., 0], patches[1, 0, ..., 0] = 1.0, 3.0  # band 0, year 0: mean 2, std 1
    patches[0, 0, ..., 1], patches[1, 0, ..., 1] = 0.0, 4.0  # band 0, year 1: mean 2, std 2
    patches[:, 1] = 5.0  # band 1: constant
    norm = FeatureNorm.fit(patches)
    torch.testing.assert_close(norm.mean, torch.tensor([[2.0, 2.0], [5.0, 5.0]]))
    torch.testing.assert_close(norm.std, torch.tensor([[1.0, 2.0], [1.0, 1.0]]))
    z = norm(torch.from_numpy(patches))
    assert z.dtype == torch.float32 and z.shape == patches.shape
    torch.testing.assert_close(z[:, 0, 0, 0], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(z[:, 1], torch.zeros(2, 2, 2, 2))


def test_feature_norm_travels_as_tensors_copied_out():
    norm = FeatureNorm.fit(np.arange(2 * 3 * 2 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 2, 4))
    values = norm.to_dict()
    values["mean"] += 100.0  # a copy: the fitted norm is untouched
    assert norm.mean[0, 0] == 30.0  # the mean of 0, 4, 8, 12 and 48, 52, 56, 60
    back = FeatureNorm.from_dict({"mean": norm.mean.double(), "std": norm.std.double()})
    assert back.mean.dtype == back.std.dtype == torch.float32
    torch.testing.assert_close(back.std, norm.std)


GRID3 = torch.arange(9.0).reshape(1, 1, 3, 3, 1)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]: no symmetry


def image(k: int) -> list[list[float]]:
    """GRID3 under symmetry `k`, as rows of values."""
    return dihedral(GRID3, k)[0, 0, :, :, 0].tolist()


def test_the_symmetries_of_a_patch_with_none_of_its_own_are_eight_known_images():
    assert image(0) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert image(1) == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # a quarter turn
    assert image(2) == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]  # a half turn
    assert image(4) == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]  # mirrored over W
    assert len({str(image(k)) for k in range(DIHEDRAL)}) == 8


def test_the_symmetries_form_a_group():
    images = {str(image(k)): k for k in range(DIHEDRAL)}
    x = GRID3
    for _ in range(4):
        x = dihedral(x, 1)
    torch.testing.assert_close(x, GRID3, rtol=0, atol=0)  # four quarter turns are none
    torch.testing.assert_close(dihedral(dihedral(GRID3, 4), 4), GRID3, rtol=0, atol=0)  # a mirror twice
    for i in range(DIHEDRAL):
        inverses = 0
        for j in range(DIHEDRAL):
            composed = str(dihedral(dihedral(GRID3, i), j)[0, 0, :, :, 0].tolist())
            assert composed in images, (i, j)  # closed
            inverses += images[composed] == 0
        assert inverses == 1, i  # each has exactly one inverse
    for views in GROUPS.values():  # every set a window is drawn from, and a prediction averages over, is a subgroup
        assert {images[str(dihedral(dihedral(GRID3, i), j)[0, 0, :, :, 0].tolist())]
                for i in views for j in views} == set(views)


class TopLeftPixel(torch.nn.Module):
    """A model that sees only the window's upper-left pixel of band 0, last year: as unsymmetric as it gets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0, -1]


@pytest.mark.parametrize("group, expected", [("none", 0.0), ("mirror", (0 + 2) / 2), ("turns", (0 + 2 + 6 + 8) / 4),
                                             ("dihedral", (0 + 2 + 6 + 8) / 4)])
def test_a_symmetric_mean_averages_the_model_over_its_views(group, expected):
    model, views = TopLeftPixel(), GROUPS[group]
    assert symmetric_mean(model, GRID3, views).tolist() == [expected]  # the corners the views bring up
    for k in views:
        assert symmetric_mean(model, dihedral(GRID3, k), views).tolist() == [expected]  # invariant under them


def test_the_mirror_keeps_north_up():
    north_south = torch.arange(3.0)[None, None, :, None, None].expand(1, 1, 3, 3, 1)  # rows: north to south
    for k in GROUPS["mirror"]:
        torch.testing.assert_close(dihedral(north_south, k), north_south)  # a slope facing north stays so
    assert not torch.equal(dihedral(north_south, 1), north_south)  # a quarter turn does not


def test_random_symmetries_need_a_square_window():
    with pytest.raises(ValueError, match=r"window of patches \(2, 1, 3, 4, 1\) is not square"):
        random_symmetry(torch.zeros(2, 1, 3, 4, 1), torch.Generator().manual_seed(0), GROUPS["dihedral"])


def test_random_symmetries_keep_a_rotation_invariant_batch_and_are_seeded():
    row, col = torch.meshgrid(torch.arange(5.0) - 2, torch.arange(5.0) - 2, indexing="ij")
    radius = (row**2 + col**2)[None, None, :, :, None]  # the same under every turn and mirror
    invariant = radius * torch.randn(64, 6, 1, 1, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(random_symmetry(invariant, torch.Generator().manual_seed(0), GROUPS["dihedral"]), invariant)

    x = torch.randn(64, 6, 5, 5, 3, generator=torch.Generator().manual_seed(3))
    first = random_symmetry(x, torch.Generator().manual_seed(7), GROUPS["dihedral"])
    assert first.shape == x.shape
    torch.testing.assert_close(random_symmetry(x, torch.Generator().manual_seed(7), GROUPS["dihedral"]), first)
    assert not torch.equal(random_symmetry(x, torch.Generator().manual_seed(8), GROUPS["dihedral"]), first)
    used = set()
    for i in range(len(x)):  # every row is one of its own 8 symmetries, and the batch mixes them
        matches = [k for k in range(DIHEDRAL) if torch.equal(dihedral(x[i:i + 1], k), first[i:i + 1])]
        assert len(matches) == 1, i
        used.add(matches[0])
    assert len(used) == DIHEDRAL
    mirrored = random_symmetry(x, torch.Generator().manual_seed(7), GROUPS["mirror"])
    assert all(torch.equal(mirrored[i], x[i]) or torch.equal(mirrored[i:i + 1], dihedral(x[i:i + 1], 4))
               for i in range(len(x)))


@pytest.mark.parametrize("group", list(GROUPS))
def test_a_symmetric_mean_is_invariant_under_its_symmetries_only(group):
    views = invariant_under = GROUPS[group]
    torch.manual_seed(0)
    model = build_model("refitted_cov_lstm", 6, 5, hidden_size=8).eval()
    x = torch.randn(16, 6, 5, 5, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean = symmetric_mean(model, x, views)
        assert mean.shape == (16,)
        for k in range(DIHEDRAL):
            turned = symmetric_mean(model, dihedral(x, k), views)
            if k in invariant_under:
                torch.testing.assert_close(turned, mean)
            else:
                assert (turned - mean).abs().max() > 1e-4, k
        torch.testing.assert_close(symmetric_mean(model, x, (0,)), model(x))
        by_hand = torch.stack([model(dihedral(x, k)) for k in range(DIHEDRAL)]).mean(0)
        torch.testing.assert_close(symmetric_mean(model, x, GROUPS["dihedral"]), by_hand)
