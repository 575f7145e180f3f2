"""Split stage: a leakage-free spatial test hold-out, buffered validation sets, one role per row and run.

Every row gets one of four roles in every run: ``train``, ``val``, ``test`` or
``buffer`` (used by no model). Sites (``site_id``: LUCAS revisits, repeated
state-survey points) are atomic: all rows of a site share a role. Distances
are Euclidean in the metric working CRS of ``x, y`` (metres, `socmap.ground`).

- **Test** (``holdout``): square blocks of side ``split.test_block_km`` on a
  grid with a random offset are drawn in random order until
  ``split.test_ratio`` of the rows are in test; the last block drawn is taken
  site by site from its centre, so the test size is the first whole site to
  reach the ratio: at most the largest site's rows − 1 above
  ``ceil(test_ratio · rows)``. ``kfold``: the blocks are dealt to
  ``split.folds`` folds (largest first, each to the lightest fold) and run k
  tests fold k.
- **Buffer**: every site outside test with a row within
  ``split.distance_threshold`` km of a test row.
- **Validation** (run k, seed ``split.seed + k``): ``ceil(target_val_ratio ·
  non-test rows)`` rows, again at most the largest site's rows − 1 above, each
  more than ``distance_threshold`` km from every training row. As in the
  original, a candidate is kept only if no training location is that close and
  returned to training otherwise, growing until the ratio is reached. Sites
  linked by chains of steps ≤ the threshold can only go together, so the
  candidates are these linked clusters, drawn in random order and kept when
  they bring the validation rows per target-quantile stratum
  (``split.strata``) closer to the training shares: the validation targets
  match training's instead of drifting as the original's did.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.stats import ks_2samp
from tqdm import tqdm

from socmap import paths
from socmap.balance import quantile_bins
from socmap.config import SplitConfig
from socmap.errors import SocmapError
from socmap.io import atomic_path, write_json

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test", "buffer")
TRAIN, VAL, TEST, BUFFER = range(4)
COLUMNS = ("row_id", "site_id", "x", "y", "target")


def read_samples(path: str | Path) -> pd.DataFrame:
    """The sample table with the columns the split needs, checked."""
    path = Path(path)
    if not path.exists():
        raise SocmapError(f"{path}: not found; run `socmap sample` first")
    samples = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in samples.columns]
    if missing:
        raise SocmapError(f"{path}: missing columns {', '.join(missing)} (need {', '.join(COLUMNS)})")
    if samples.empty:
        raise SocmapError(f"{path}: no rows to split")
    for column in ("x", "y", "target"):
        bad = ~np.isfinite(samples[column].to_numpy(float))
        if bad.any():
            raise SocmapError(f"{path}: {column} is not finite at row_id {samples['row_id'].iloc[np.argmax(bad)]}")
    if samples["row_id"].duplicated().any():
        raise SocmapError(f"{path}: row_id {samples['row_id'][samples['row_id'].duplicated()].iloc[0]} "
                          "appears twice; row_id must be unique")
    return samples


def site_table(site_id: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site index of every row, and per site the mean position [S, 2] and the row count."""
    row_site, _ = pd.factorize(site_id)
    rows = np.bincount(row_site)
    centre = np.stack([np.bincount(row_site, weights=xy[:, i]) / rows for i in range(2)], axis=1)
    return row_site, centre, rows


def square_blocks(site_xy: np.ndarray, block_m: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Block of every site on a grid of `block_m` squares with a random offset, and each site's block centre."""
    origin = site_xy.min(axis=0) - rng.uniform(0.0, block_m, 2)
    cell = np.floor((site_xy - origin) / block_m)
    _, block = np.unique(cell, axis=0, return_inverse=True)
    return block.ravel(), origin + (cell + 0.5) * block_m


def holdout_test(site_xy: np.ndarray, site_rows: np.ndarray, ratio: float, block_m: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Test sites: whole blocks in random order, the last one from its centre outwards, until the ratio."""
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
                return test
    return test


def block_folds(site_xy: np.ndarray, site_rows: np.ndarray, folds: int, block_m: float,
                rng: np.random.Generator) -> np.ndarray:
    """Fold of every site: blocks dealt largest first, each to the fold with the fewest rows so far."""
    block, _ = square_blocks(site_xy, block_m, rng)
    n_blocks = block.max() + 1
    if n_blocks < folds:
        raise SocmapError(f"split.folds = {folds}: the data cover only {n_blocks} blocks of "
                          f"split.test_block_km; lower split.test_block_km or split.folds")
    block_rows = np.bincount(block, weights=site_rows)
    order = rng.permutation(n_blocks)
    order = order[np.argsort(-block_rows[order], kind="stable")]
    fold_of_block = np.empty(n_blocks, dtype=np.int64)
    load = np.zeros(folds)
    for b in order:
        fold_of_block[b] = np.argmin(load)
        load[fold_of_block[b]] += block_rows[b]
    return fold_of_block[block]


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

    A site within the threshold of a training site cannot validate, so a
    cluster goes to validation or training as a whole.
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
    """Clusters for validation: between `need` and `high` rows, strata shares as in `hist` overall.

    Args:
        hist: rows per target stratum of every candidate cluster, [clusters, strata].
        need, high: the validation rows wanted, at least and at most.
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
    log.warning("validation sizes fit only by an exact subset; its strata shares are not matched")
    chosen[:] = False
    total = hits[0]
    while total > 0:
        chosen[order[last[total]]] = True
        total -= rows[order[last[total]]]
    return chosen


def validation_sites(cluster: np.ndarray, site_hist: np.ndarray, need: int, slack: int,
                     rng: np.random.Generator, cfg: SplitConfig, non_test_rows: int) -> np.ndarray:
    """Validation sites of one run; a `SocmapError` with the largest reachable ratio when `need` cannot be met."""
    n_clusters = cluster.max() + 1
    hist = np.zeros((n_clusters, site_hist.shape[1]))
    in_pool = cluster >= 0
    np.add.at(hist, cluster[in_pool], site_hist[in_pool])
    rows = hist.sum(axis=1).astype(np.int64)
    pool_rows = int(rows.sum())
    high = min(need + slack, pool_rows - 1)  # keep at least one cluster for training
    chosen = choose_clusters(hist, need, high, rng) if high >= need else None
    if chosen is None:
        reach, _ = subset_sums(rows, min(need - 1, pool_rows - 1))
        best = np.flatnonzero(reach).max() / non_test_rows
        raise SocmapError(
            f"split.target_val_ratio = {cfg.target_val_ratio:g} cannot be reached: at "
            f"split.distance_threshold = {cfg.distance_threshold:g} km the {pool_rows} rows outside test and "
            f"buffer form {n_clusters} linked clusters (largest {rows.max()} rows); the largest reachable "
            f"validation ratio below it is {best:.4f}")
    return in_pool & chosen[np.maximum(cluster, 0)]


def outside_test(xy: np.ndarray, target: np.ndarray, row_site: np.ndarray, test: np.ndarray,
                 cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Given the test sites: every site's role before validation (train, test or buffer), the linked
    cluster of every training site, and every site's rows per target stratum of the training rows."""
    threshold_m = cfg.distance_threshold * 1000.0
    base = np.where(test, TEST, TRAIN)
    base[near_sites(xy, row_site, test, threshold_m)] = BUFFER
    pool = base == TRAIN
    if not pool.any():
        raise SocmapError(no_training_rows(xy, test[row_site], cfg))
    pool_rows = pool[row_site]
    site_hist = np.zeros((len(test), cfg.strata))
    np.add.at(site_hist, (row_site[pool_rows], quantile_bins(target[pool_rows], cfg.strata)), 1)
    return base, linked_clusters(xy, row_site, pool, threshold_m), site_hist


def no_training_rows(xy: np.ndarray, test_rows: np.ndarray, cfg: SplitConfig) -> str:
    """Why no row is left for training, and the one change that surely leaves some: the message when
    the test set and its buffer take every row."""
    if test_rows.all():
        return (f"split.test_ratio = {cfg.test_ratio:g}: the test set takes all {len(xy)} rows (it takes whole "
                "sites), none is left for training")
    farthest_m = float(cKDTree(xy[test_rows]).query(xy[~test_rows])[0].max())
    below_km = math.floor(farthest_m * 1000) / 1e6 or farthest_m / 1000  # rounded down to the millimetre
    return (f"split.distance_threshold = {cfg.distance_threshold:g} km: the buffer around the test set leaves no "
            f"rows for training (each of the {int((~test_rows).sum())} other rows lies that close to a test row); "
            f"a threshold below {below_km} km keeps the row farthest from the test set")


def tested_sites(site_xy: np.ndarray, site_rows: np.ndarray, cfg: SplitConfig,
                 num_runs: int) -> list[np.ndarray]:
    """The test sites of every run: one hold-out repeated `num_runs` times, or one fold per run."""
    block_m = cfg.test_block_km * 1000.0
    rng = np.random.default_rng([cfg.seed, 0])
    if cfg.mode == "holdout":
        return [holdout_test(site_xy, site_rows, cfg.test_ratio, block_m, rng)] * num_runs
    fold = block_folds(site_xy, site_rows, cfg.folds, block_m, rng)
    return [fold == k for k in range(cfg.folds)]


def assign_roles(samples: pd.DataFrame, cfg: SplitConfig, num_runs: int) -> pd.DataFrame:
    """Role of every row in every run: columns row_id, run, role (rows in sample order within a run)."""
    xy = samples[["x", "y"]].to_numpy(float)
    target = samples["target"].to_numpy(float)
    row_site, site_xy, site_rows = site_table(samples["site_id"].to_numpy(), xy)
    tests = tested_sites(site_xy, site_rows, cfg, num_runs)
    if cfg.mode == "holdout":  # one test set: its buffer and clusters serve every run
        prepared = [outside_test(xy, target, row_site, tests[0], cfg)] * num_runs
    else:
        prepared = [outside_test(xy, target, row_site, test, cfg) for test in tests]
    slack = int(site_rows.max()) - 1
    frames = []
    for run in tqdm(range(len(tests)), desc="split runs", disable=None):
        base, cluster, site_hist = prepared[run]
        non_test_rows = int((~tests[run][row_site]).sum())
        need = math.ceil(cfg.target_val_ratio * non_test_rows - 1e-9)
        rng = np.random.default_rng([cfg.seed + run, 1])
        roles = base.copy()
        roles[validation_sites(cluster, site_hist, need, slack, rng, cfg, non_test_rows)] = VAL
        frames.append(pd.DataFrame({"row_id": samples["row_id"].to_numpy(np.int64), "run": np.int64(run),
                                    "role": np.asarray(ROLES)[roles[row_site]]}))
    return pd.concat(frames, ignore_index=True)


def _stats(target: np.ndarray, sites: np.ndarray) -> dict:
    return {"rows": int(target.size), "sites": int(np.unique(sites).size),
            "target_mean": round(float(target.mean()), 3) if target.size else None,
            "target_std": round(float(target.std()), 3) if target.size else None}


def _min_distance_km(tree: cKDTree, xy: np.ndarray) -> float | None:
    return round(float(tree.query(xy)[0].min()) / 1000.0, 3) if len(xy) else None


def split_metrics(samples: pd.DataFrame, split: pd.DataFrame) -> dict:
    """Sizes, target statistics, minimum distances and KS of validation against training, per run and overall."""
    xy = samples[["x", "y"]].to_numpy(float)
    target = samples["target"].to_numpy(float)
    site = samples["site_id"].to_numpy()
    position = pd.Series(np.arange(len(samples)), index=samples["row_id"].to_numpy())
    runs = {}
    for run, frame in split.groupby("run", sort=True):
        rows = position[frame["row_id"].to_numpy()].to_numpy()
        role = frame["role"].to_numpy()
        masks = {r: rows[role == r] for r in ROLES}
        tree = cKDTree(xy[masks["train"]])
        ks = ks_2samp(target[masks["val"]], target[masks["train"]])
        runs[str(run)] = {
            **{r: _stats(target[m], site[m]) for r, m in masks.items()},
            "min_distance_test_train_km": _min_distance_km(tree, xy[masks["test"]]),
            "min_distance_val_train_km": _min_distance_km(tree, xy[masks["val"]]),
            "val_ks": round(float(ks.statistic), 4),
            "val_ks_p": round(float(ks.pvalue), 4),
        }
    per_run = list(runs.values())
    distances = [d for r in per_run for d in (r["min_distance_test_train_km"], r["min_distance_val_train_km"])
                 if d is not None]

    def mean(key: str, role: str | None = None) -> float:
        return round(float(np.mean([r[role][key] if role else r[key] for r in per_run])), 4)

    return {
        "rows": len(samples), "sites": int(np.unique(site).size), "runs": len(runs),
        **{f"{r}_rows": mean("rows", r) for r in ROLES},
        "val_ks_mean": mean("val_ks"),
        "val_ks_p_min": min(r["val_ks_p"] for r in per_run),
        "min_distance_km": min(distances) if distances else None,
        "per_run": runs,
    }


def main(params) -> None:
    """Read data/processed/samples.parquet; write data/splits/split.parquet and metrics/split.json."""
    samples = read_samples(paths.SAMPLES)
    split = assign_roles(samples, params.split, params.train.num_runs)
    metrics = split_metrics(samples, split)
    with atomic_path(paths.SPLIT) as tmp:
        split.to_parquet(tmp, index=False)
    write_json(paths.SPLIT_METRICS, metrics)
    log.info("split (%s): %d rows; per run %s; validation KS %.3f (min p %.3f); min distance %.3f km",
             params.split.mode, metrics["rows"],
             ", ".join(f"{r} {metrics[f'{r}_rows']:g}" for r in ROLES),
             metrics["val_ks_mean"], metrics["val_ks_p_min"], metrics["min_distance_km"] or 0.0)
