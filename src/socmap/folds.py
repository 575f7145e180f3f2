"""Spatial folds: the test blocks, and validation folds whose distances to training look like prediction.

- **Test** (``holdout``): square blocks of side ``split.test_block_km`` on a grid with a random offset
  are drawn in random order until ``split.test_ratio`` of the rows are in test; the last block drawn
  is taken site by site from its centre, so the test size is the first whole site to reach the
  ratio. ``kfold``: the blocks are dealt to ``split.folds`` folds (largest first, each to the
  lightest fold) and run k tests fold k.
- **Validation folds** (kNNDM, k-fold nearest-neighbour distance matching; Linnenbrink et al. 2024,
  after Milà et al. 2022): the sites outside test are clustered by k-means into q clusters, the
  clusters dealt to k folds, and of every q tried (from k up to one site a cluster, which is random
  k-fold) the folds are kept whose distances from each held-out site to the nearest training site
  (at least ``split.distance_threshold``: nearer training sites are buffered) are closest, in the
  Wasserstein distance, to the distances from the prediction points (the map's pixels) to the
  nearest site. Validation then measures what prediction meets: clustered samples get coarse folds
  (the map is far from most sites), spread-out samples get fine ones.

Distances are Euclidean in the metric CRS of ``x, y`` (metres).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from socmap.errors import SocmapError

NEIGHBOURS = 16  # nearest other-fold sites looked at for the first one beyond the buffer
CLUSTER_STEP = 1.5  # the cluster counts tried grow by this factor, from k to one site a cluster


def square_blocks(site_xy: np.ndarray, block_m: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Block of every site on a grid of `block_m` squares with a random offset, and each site's block centre."""
    origin = site_xy.min(axis=0) - rng.uniform(0.0, block_m, 2)
    cell = np.floor((site_xy - origin) / block_m)
    _, block = np.unique(cell, axis=0, return_inverse=True)
    return block.ravel(), origin + (cell + 0.5) * block_m


def holdout_test(site_xy: np.ndarray, site_rows: np.ndarray, ratio: float, block_m: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Test sites: whole blocks in random order, the last one from its centre outwards, until the ratio;
    and the block of every site."""
    block, centre = square_blocks(site_xy, block_m, rng)
    need = math.ceil(ratio * site_rows.sum() - 1e-9)
    test = np.zeros(len(site_rows), dtype=bool)
    taken = 0
    for b in rng.permutation(block.max() + 1):
        members = np.flatnonzero(block == b)
        if taken + site_rows[members].sum() < need:
            test[members] = True
            taken += site_rows[members].sum()
            continue
        # the block that crosses the ratio is cut; taking it from its centre keeps the test area compact
        offset = np.hypot(*(site_xy[members] - centre[members]).T)
        for site in members[np.argsort(offset, kind="stable")]:
            test[site] = True
            taken += site_rows[site]
            if taken >= need:
                return test, block
    return test, block


def block_folds(site_xy: np.ndarray, site_rows: np.ndarray, folds: int, block_m: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fold of every site, blocks dealt largest first, each to the fold with the fewest rows so far; and
    the block of every site."""
    block, _ = square_blocks(site_xy, block_m, rng)
    n_blocks = block.max() + 1
    if n_blocks < folds:
        raise SocmapError(f"split.folds = {folds}: the data cover only {n_blocks} blocks of "
                          f"split.test_block_km; lower split.test_block_km or split.folds")
    return deal(block, site_rows, folds, rng), block


def deal(group: np.ndarray, site_rows: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every site: its group's, groups dealt largest first (ties in random order) to the fold
    with the fewest rows so far."""
    labels, group = np.unique(group, return_inverse=True)
    group_rows = np.bincount(group, weights=site_rows, minlength=len(labels))
    order = rng.permutation(len(labels))
    order = order[np.argsort(-group_rows[order], kind="stable")]
    fold_of_group = np.empty(len(labels), dtype=np.int64)
    load = np.zeros(folds)
    for g in order:
        fold_of_group[g] = np.argmin(load)
        load[fold_of_group[g]] += group_rows[g]
    return fold_of_group[group]


def training_distances(site_xy: np.ndarray, fold: np.ndarray, threshold_m: float) -> np.ndarray:
    """Per site, the distance (m) to the nearest site of another fold at least `threshold_m` away: its
    nearest training site when its fold is held out and the nearer ones are buffered."""
    out = np.full(len(fold), np.inf)
    for f in np.unique(fold):
        held, rest = fold == f, fold != f
        if not rest.any():
            continue
        k = min(NEIGHBOURS, int(rest.sum()))
        distance = cKDTree(site_xy[rest]).query(site_xy[held], k)[0].reshape(int(held.sum()), k)
        beyond = np.where(distance >= threshold_m, distance, np.inf).min(axis=1)
        out[held] = np.where(np.isfinite(beyond), beyond, distance[:, -1])  # all k buffered: the k-th
    return out


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[k, 2] k-means++ seeds (Arthur & Vassilvitskii 2007) of `points`: each next seed drawn with a
    probability proportional to its squared distance to the nearest seed so far.

    The draws and seeds of scipy's ``kmeans2(minit="++")``, in O(points × k) instead of
    O(points × k²): the nearest-seed distances are updated with each new seed, not recomputed.
    """
    seeds = np.empty((k, points.shape[1]))
    seeds[0] = points[rng.integers(len(points))]
    nearest = cdist(seeds[:1], points, "sqeuclidean")[0]
    for i in range(1, k):
        seeds[i] = points[int(np.searchsorted(np.cumsum(nearest / nearest.sum()), rng.uniform()))]
        nearest = np.minimum(nearest, cdist(seeds[i:i + 1], points, "sqeuclidean")[0])
    return seeds


def knndm_folds(site_xy: np.ndarray, site_rows: np.ndarray, prediction_xy: np.ndarray, folds: int,
                threshold_m: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Fold (0..folds-1) of every site of `site_xy` by kNNDM (see the module), and what was tried.

    Args:
        site_xy: [S, 2] the candidate sites (outside test), metres; site_rows: [S] their rows.
        prediction_xy: [P, 2] the prediction points (map pixels), metres.
    Returns:
        (fold per site, {"clusters": the q kept, "wasserstein_km": its distance,
        "tried": {q: Wasserstein distance (km)}}).
    """
    sites = len(site_xy)
    if sites < folds:
        raise ValueError(f"{sites} sites cannot make {folds} folds")
    target = cKDTree(site_xy).query(prediction_xy)[0] / 1000.0
    counts = sorted({min(sites, round(folds * CLUSTER_STEP ** i))
                     for i in range(int(math.log(max(sites / folds, 1.0), CLUSTER_STEP)) + 2)})
    tried, best = {}, None
    for q in counts:
        if q == sites:
            cluster = np.arange(sites)
        else:
            points = site_xy / 1000.0
            _, cluster = kmeans2(points, kmeans_plus_plus(points, q, rng), minit="matrix")
        fold = deal(cluster, site_rows, folds, rng)
        distance = training_distances(site_xy, fold, threshold_m) / 1000.0
        tried[q] = float(wasserstein_distance(distance, target, u_weights=site_rows))
        if best is None or tried[q] < tried[best[0]]:
            best = (q, fold)
    return best[1], {"clusters": int(best[0]), "wasserstein_km": tried[best[0]],
                     "tried": {str(q): round(w, 4) for q, w in tried.items()}}
