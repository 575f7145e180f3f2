"""The balanced sampler: bin counts per epoch as the original's scheme says, recomputed with pandas.qcut."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from socmap.balance import balanced_indices


def qcut_bins(targets: np.ndarray, bins: int) -> np.ndarray:
    """The original's binning, independent of socmap: pandas.qcut with equal edges dropped."""
    return pd.qcut(targets, q=bins, labels=False, duplicates="drop")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3000), bins=st.integers(1, 200),
       fraction=st.floats(0.05, 1.0), decimals=st.integers(0, 2))
def test_bin_counts_follow_the_scheme(seed, n, bins, fraction, decimals):
    rng = np.random.default_rng(seed)
    # rounded lognormal targets: ties merge quantile edges and leave bins of unequal size, as real OC does
    targets = np.round(rng.lognormal(np.log(20.0), 0.8, n), decimals)
    epoch = balanced_indices(targets, bins, fraction, np.random.default_rng(seed))
    label = qcut_bins(targets, bins) if np.unique(targets).size > 1 else np.zeros(n, dtype=int)
    # pandas and numpy may compute an edge a last bit apart: a target between the two lands on either side
    if np.unique(targets).size > 1:
        ours = np.unique(np.quantile(targets, np.linspace(0.0, 1.0, bins + 1)))
        theirs = pd.qcut(targets, bins, retbins=True, duplicates="drop")[1]
        assume(ours.size == theirs.size)
        apart = ours != theirs
        low, high = np.minimum(ours, theirs)[apart], np.maximum(ours, theirs)[apart]
        assume(not ((targets[:, None] >= low) & (targets[:, None] <= high)).any())
    counts = np.bincount(label)
    level = int(np.floor(fraction * counts.max()))
    drawn = np.bincount(label[epoch], minlength=counts.size)
    assert (drawn == np.where(counts > 0, np.maximum(counts, level), 0)).all()
    assert (np.bincount(epoch, minlength=n) >= 1).all()  # every training row at least once
    # only the rows of upsampled bins repeat
    repeated = np.bincount(epoch, minlength=n) > 1
    assert (counts[label[repeated]] < level).all()


def test_the_default_scheme_on_a_skewed_target():
    rng = np.random.default_rng(0)
    targets = np.round(rng.lognormal(np.log(20.0), 0.7, 5000), 1)  # 0.1 g/kg resolution: many ties
    epoch = balanced_indices(targets, 128, 0.75, np.random.default_rng(1))
    counts = np.bincount(qcut_bins(targets, 128))
    assert counts.max() > counts.min() / 0.75  # the ties make some bins small enough to upsample
    assert len(epoch) == sum(max(c, int(0.75 * counts.max())) for c in counts)


def test_epochs_differ_but_a_seed_repeats():
    targets = np.round(np.random.default_rng(2).lognormal(3.0, 1.0, 500))
    first = balanced_indices(targets, 128, 0.75, np.random.default_rng(5))
    again = balanced_indices(targets, 128, 0.75, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    epoch_one, epoch_two = balanced_indices(targets, 128, 0.75, rng), balanced_indices(targets, 128, 0.75, rng)
    assert np.array_equal(first, again)
    assert not np.array_equal(epoch_one, epoch_two)
    assert first.dtype == np.int64 and first.min() >= 0 and first.max() < len(targets)


def test_edge_cases():
    assert balanced_indices(np.array([]), 128, 0.75, np.random.default_rng(0)).size == 0
    assert sorted(balanced_indices(np.full(7, 3.0), 128, 0.75, np.random.default_rng(0))) == list(range(7))
    with pytest.raises(ValueError, match="finite"):
        balanced_indices(np.array([1.0, np.nan]), 128, 0.75, np.random.default_rng(0))
