"""Spatial folds: test blocks, dealing by rows, distances to training beyond the buffer, and kNNDM's choice
between coarse and fine folds by the distance from where the map predicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from socmap.folds import deal, holdout_test, kmeans_plus_plus, knndm_folds, training_distances


def grid_sites(step_m: float, n: int) -> np.ndarray:
    """Sites on a regular n × n grid `step_m` apart."""
    x, y = np.meshgrid(np.arange(n) * step_m, np.arange(n) * step_m)
    return np.stack([x.ravel(), y.ravel()], axis=1)


def test_deal_gives_each_group_to_the_lightest_fold_largest_first():
    group = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])  # groups of 4, 3, 2 and 1 rows
    fold = deal(group, np.ones(10), 2, np.random.default_rng(0))
    assert (fold[group == 0] == fold[0]).all()  # a group stays together
    assert sorted(np.bincount(fold).tolist()) == [5, 5]  # 4 + 1 against 3 + 2


def test_training_distance_is_the_nearest_other_fold_site_beyond_the_buffer():
    xy = np.array([[0.0, 0.0], [500.0, 0.0], [3000.0, 0.0], [10_000.0, 0.0]])
    fold = np.array([0, 1, 1, 0])
    distance = training_distances(xy, fold, threshold_m=1000.0)
    # site 0: site 1 (500 m) is buffered, site 2 at 3 km is its training neighbour
    assert distance.tolist() == [3000.0, 9500.0, 3000.0, 7000.0]


def test_holdout_test_reaches_the_ratio_in_whole_blocks_and_returns_them():
    xy = grid_sites(1000.0, 20)
    test, block = holdout_test(xy, np.ones(len(xy), dtype=int), 0.1, 5000.0, np.random.default_rng(3))
    assert test.sum() == 40
    assert len(np.unique(block)) >= 16 and len(np.unique(block[test])) <= 3  # two whole blocks and a cut one


def test_knndm_picks_fine_folds_when_the_map_is_near_the_sites():
    sites = grid_sites(2000.0, 20)  # 400 sites 2 km apart
    near = sites + 100.0  # prediction points 141 m from a site
    fold, report = knndm_folds(sites, np.ones(400), near, 4, 0.0, np.random.default_rng(0))
    assert report["clusters"] >= 200  # (nearly) one site a cluster: random folds
    assert np.median(training_distances(sites, fold, 0.0)) == 2000.0  # the nearest a held-out site can be
    assert report["wasserstein_km"] < min(w for q, w in report["tried"].items() if int(q) < 50)
    assert np.bincount(fold).min() >= 95


def test_knndm_picks_coarse_folds_when_the_map_is_far_from_the_sites():
    sites = grid_sites(2000.0, 20)
    rng = np.random.default_rng(1)
    far = rng.uniform(-30_000.0, 68_000.0, (2000, 2))  # a region four times the sampled square
    fold, report = knndm_folds(sites, np.ones(400), far, 4, 0.0, np.random.default_rng(0))
    tried = {int(q): w for q, w in report["tried"].items()}
    assert report["clusters"] == min(tried, key=tried.get) and report["clusters"] < 40
    assert tried[400] > 1.5 * tried[report["clusters"]]  # random folds are far too optimistic here
    held = training_distances(sites, fold, 0.0)
    assert np.median(held) > 4000.0  # held-out sites several km from training, as the map is


def test_knndm_needs_a_site_per_fold():
    with pytest.raises(ValueError, match="3 sites cannot make 4 folds"):  # split says which params to change
        knndm_folds(grid_sites(1000.0, 2)[:3], np.ones(3), grid_sites(1000.0, 2), 4, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("k", [1, 7, 300])
def test_kmeans_plus_plus_seeds_are_scipys_with_the_same_draws(k):
    points = np.random.default_rng(5).uniform(0, 300, (1200, 2))
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    seeds = kmeans_plus_plus(points, k, ours)
    _, labels = kmeans2(points, k, minit="++", rng=theirs)
    np.testing.assert_array_equal(kmeans2(points, seeds, minit="matrix")[1], labels)
    assert ours.uniform() == theirs.uniform()  # the generator is left where scipy leaves it
    assert len({tuple(s) for s in seeds}) == k  # no point is drawn twice: its distance is 0
