"""Whole sites drawn at least `split.distance_threshold` km from the rest, matched to the target strata.

The early-stopping rows of each run (role ``stop``) are drawn so, as the original drew its validation
rows: ``ceil(split.stop_ratio · pool rows)`` rows, at most the largest site's rows − 1 above, each
more than ``distance_threshold`` km from every training row. A candidate is kept only if no training
location is that close and returned to training otherwise. Sites linked by chains of steps ≤ the
threshold can only go together, so the candidates are these linked clusters, drawn in random order
and kept when they bring the drawn rows per target-quantile stratum (``split.strata``) closer to the
pool's shares: the drawn targets match training's instead of drifting as the original's did.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from socmap.balance import quantile_bins
from socmap.config import SplitConfig
from socmap.errors import SocmapError

log = logging.getLogger(__name__)


def near_sites(xy: np.ndarray, row_site: np.ndarray, source: np.ndarray, threshold_m: float) -> np.ndarray:
    """Sites outside `source` (a site mask) with a row within `threshold_m` of a row of a source site."""
    from_source = source[row_site]
    near = np.zeros(len(source), dtype=bool)
    if from_source.any() and (~from_source).any():
        distance, _ = cKDTree(xy[from_source]).query(xy[~from_source])
        near[row_site[~from_source][distance <= threshold_m]] = True
    return near


def linked_clusters(xy: np.ndarray, row_site: np.ndarray, pool: np.ndarray, threshold_m: float) -> np.ndarray:
    """Cluster of every pool site (−1 elsewhere): sites joined by chains of row pairs ≤ `threshold_m` apart.

    A site within the threshold of a training site cannot be drawn, so a
    cluster goes to the draw or to training as a whole.
    """
    rows = np.flatnonzero(pool[row_site])
    sites = np.flatnonzero(pool)
    local = np.full(len(pool), -1)
    local[sites] = np.arange(len(sites))
    pairs = cKDTree(xy[rows]).query_pairs(threshold_m, output_type="ndarray")
    a, b = local[row_site[rows[pairs[:, 0]]]], local[row_site[rows[pairs[:, 1]]]]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(sites), len(sites)))
    _, label = connected_components(graph, directed=False)
    cluster = np.full(len(pool), -1)
    cluster[sites] = label
    return cluster


def subset_sums(sizes: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Which totals 0..limit some subset of `sizes` reaches, and the last item of one such subset."""
    reach = np.zeros(limit + 1, dtype=bool)
    reach[0] = True
    last = np.full(limit + 1, -1)
    for i, size in enumerate(sizes):
        if size > limit:
            continue
        new = np.zeros_like(reach)
        new[size:] = reach[:limit + 1 - size]
        new &= ~reach
        last[new] = i
        reach |= new
    return reach, last


def choose_clusters(hist: np.ndarray, need: int, high: int, rng: np.random.Generator) -> np.ndarray | None:
    """Clusters to draw: between `need` and `high` rows, strata shares as in `hist` overall.

    Args:
        hist: rows per target stratum of every candidate cluster, [clusters, strata].
        need, high: the rows wanted, at least and at most.
    Returns:
        a mask over clusters, or None when no subset of clusters has between `need` and `high` rows.
    """
    rows = hist.sum(axis=1).astype(np.int64)
    deficit = need * hist.sum(axis=0) / rows.sum()
    chosen = np.zeros(len(rows), dtype=bool)
    taken = 0
    # the original's loop: draw a candidate, keep it if its strata still have room, else it stays in training
    for c in rng.permutation(len(rows)):
        if taken >= need:
            break
        h = hist[c]
        if taken + rows[c] <= high and np.all(h <= deficit + 0.5):
            chosen[c] = True
            deficit -= h
            taken += rows[c]
    # the last few rows: whatever fits and hurts the strata least
    gain_order = rng.permutation(len(rows))
    while taken < need:
        fits = ~chosen[gain_order] & (taken + rows[gain_order] <= high)
        if not fits.any():
            break
        gain = 2 * hist[gain_order] @ deficit - (hist[gain_order] ** 2).sum(axis=1)
        c = gain_order[np.argmax(np.where(fits, gain, -np.inf))]
        chosen[c] = True
        deficit -= hist[c]
        taken += rows[c]
    if taken >= need:
        return chosen
    # the greedy draw painted itself into a corner: an exact subset, strata ignored, if one exists
    order = rng.permutation(len(rows))
    reach, last = subset_sums(rows[order], high)
    hits = np.flatnonzero(reach[need:]) + need
    if hits.size == 0:
        return None
    log.warning("early-stopping sizes fit only by an exact subset; its strata shares are not matched")
    chosen[:] = False
    total = hits[0]
    while total > 0:
        chosen[order[last[total]]] = True
        total -= rows[order[last[total]]]
    return chosen


def draw_sites(xy: np.ndarray, target: np.ndarray, row_site: np.ndarray, pool: np.ndarray, cfg: SplitConfig,
               rng: np.random.Generator) -> np.ndarray:
    """Sites of `pool` (a site mask) drawn as the module says; a `SocmapError` with the largest reachable
    share when `split.stop_ratio` cannot be met."""
    threshold_m = cfg.distance_threshold * 1000.0
    pool_rows = pool[row_site]
    site_hist = np.zeros((len(pool), cfg.strata))
    np.add.at(site_hist, (row_site[pool_rows], quantile_bins(target[pool_rows], cfg.strata)), 1)
    cluster = linked_clusters(xy, row_site, pool, threshold_m)
    hist = np.zeros((cluster.max() + 1, cfg.strata))
    np.add.at(hist, cluster[pool], site_hist[pool])
    rows = hist.sum(axis=1).astype(np.int64)
    total = int(rows.sum())
    need = math.ceil(cfg.stop_ratio * total - 1e-9)
    high = min(need + int(np.bincount(row_site).max()) - 1, total - 1)  # keep a cluster for training
    chosen = choose_clusters(hist, need, high, rng) if high >= need else None
    if chosen is None:
        reach, _ = subset_sums(rows, min(need - 1, total - 1))
        best = np.flatnonzero(reach).max() / total
        raise SocmapError(
            f"split.stop_ratio = {cfg.stop_ratio:g} cannot be reached: at split.distance_threshold = "
            f"{cfg.distance_threshold:g} km a run's {total} training rows form {len(rows)} linked clusters "
            f"(largest {rows.max()} rows); the largest reachable share below it is {best:.4f}")
    return pool & chosen[np.maximum(cluster, 0)]
