"""`socmap split`: a leakage-free spatial test hold-out and, per run, validation that looks like prediction.

Every row gets one of five roles in every run: ``train``, ``stop`` (the rows that choose the run's
best epoch and the forests' leaf size), ``val`` (validation: the run's honest figures, the interval
calibration and the residuals that are kriged), ``test`` or ``buffer`` (used by no model). Sites
(``site_id``: LUCAS revisits, repeated state-survey points) are atomic: all rows of a site share a
role. Distances are Euclidean in the metric working CRS of ``x, y`` (metres, `socmap.ground`).

- **Test**: square blocks (``socmap.folds``); **buffer**: every site outside test with a row within
  ``split.distance_threshold`` km of a test row.
- **Validation**: the sites outside test and buffer are cut into ``train.num_runs`` folds (two for a
  single run) by kNNDM (``socmap.folds.knndm_folds``), whose held-out-to-training distances match
  those from the map's pixels to the sites; run k validates on fold k, so every such row is
  validated once, by the one run that did not train on it. kfold nests the same design in each of
  the ``split.folds`` test folds: ``split.folds × train.num_runs`` runs, the runs of test fold f
  numbered ``f·num_runs + k``, so that each fold's test rows are predicted by an ensemble and kriged
  from every validation row outside them, as the holdout's are. The training rows within the
  threshold of a validation row are that run's buffer.
- **Stop**: of the run's remaining rows, ``split.stop_ratio`` drawn buffered and matched to the
  target strata (``socmap.buffered``), so that the validation rows choose nothing.

Besides split.parquet (``row_id, run, role, block``: the test block of a test row, −1 elsewhere),
the stage writes metrics/split.json (sizes, the three distance distributions side by side, the kNNDM
choice), the per-run detail and a picture of the distances.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.stats import ks_2samp
from tqdm import tqdm

from socmap import paths
from socmap.buffered import draw_sites, near_sites
from socmap.config import SplitConfig
from socmap.errors import SocmapError
from socmap.folds import block_folds, holdout_test, knndm_folds
from socmap.io import atomic_path, write_json

log = logging.getLogger(__name__)

ROLES = ("train", "stop", "val", "test", "buffer")
TRAIN, STOP, VAL, TEST, BUFFER = range(5)
COLUMNS = ("row_id", "site_id", "x", "y", "target")
QUANTILES = (10, 25, 50, 75, 90)  # of the distance distributions in metrics/split.json


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


def roles_matrix(split: pd.DataFrame, row_ids: np.ndarray, runs: int) -> np.ndarray:
    """[runs, N] role of each sample row (in samples order) in each run; checks split.parquet covers them."""
    if sorted(split["run"].unique()) != list(range(runs)):
        raise SocmapError(f"{paths.SPLIT}: runs {sorted(split['run'].unique().tolist())} but models/ holds "
                          f"run_0..run_{runs - 1}; rerun `socmap split` and `socmap train` with the same params")
    table = split.pivot(index="row_id", columns="run", values="role")
    missing = np.setdiff1d(row_ids, table.index.to_numpy())
    if missing.size or table.isna().any().any():
        raise SocmapError(f"{paths.SPLIT}: row_id {missing[0] if missing.size else '?'} of {paths.SAMPLES} has no "
                          f"role in some run; rerun `socmap split`")
    return table.loc[row_ids].to_numpy().T.astype(str)


def test_groups(roles: np.ndarray) -> np.ndarray:
    """[K] the group of every run: runs with the same test rows form one (holdout: one group of all
    runs; kfold: one per test fold), numbered in run order."""
    _, first, group = np.unique(roles == "test", axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[np.asarray(group).ravel()]


def site_table(site_id: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Site index of every row, and per site the mean position [S, 2] and the row count."""
    row_site, _ = pd.factorize(site_id)
    rows = np.bincount(row_site)
    centre = np.stack([np.bincount(row_site, weights=xy[:, i]) / rows for i in range(2)], axis=1)
    return row_site, centre, rows


def tested_sites(site_xy: np.ndarray, site_rows: np.ndarray, cfg: SplitConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """The test sites of every test group (one hold-out, or one per fold of split.folds) and the test
    block of every site."""
    block_m = cfg.test_block_km * 1000.0
    rng = np.random.default_rng([cfg.seed, 0])
    if cfg.mode == "holdout":
        test, block = holdout_test(site_xy, site_rows, cfg.test_ratio, block_m, rng)
        return [test], block
    fold, block = block_folds(site_xy, site_rows, cfg.folds, block_m, rng)
    return [fold == k for k in range(cfg.folds)], block


class Sites:
    """The rows and sites of the sample table, and the prediction points, in metres."""

    def __init__(self, samples: pd.DataFrame, prediction_xy: np.ndarray):
        self.xy = samples[["x", "y"]].to_numpy(float)
        self.target = samples["target"].to_numpy(float)
        self.row_site, self.site_xy, self.site_rows = site_table(samples["site_id"].to_numpy(), self.xy)
        self.prediction_xy = np.asarray(prediction_xy, dtype=float)

    def near(self, source: np.ndarray, threshold_m: float) -> np.ndarray:
        """Sites outside `source` with a row within `threshold_m` of a source row."""
        return near_sites(self.xy, self.row_site, source, threshold_m)

    def validation_folds(self, test: np.ndarray, folds: int, cfg: SplitConfig,
                         rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Fold of every site outside `test` and its buffer (−1 elsewhere) by kNNDM, and the choice made."""
        pool = ~test & ~self.near(test, cfg.distance_threshold * 1000.0)
        if not pool.any():
            raise SocmapError(no_training_rows(self.xy, test[self.row_site], cfg))
        if pool.sum() < folds:
            fewer = "train.num_runs, " if folds > 2 else ""
            lower = (f"lower {fewer}split.distance_threshold or raise split.folds (smaller test folds)"
                     if cfg.mode == "kfold" else f"lower {fewer}split.test_ratio or split.distance_threshold")
            raise SocmapError(f"split: only {int(pool.sum())} of {len(pool)} sites lie outside the test set and its "
                              f"buffer, too few for {folds} validation folds (one per run of train.num_runs, two "
                              f"for one run); {lower}")
        fold = np.full(len(pool), -1)
        fold[pool], report = knndm_folds(self.site_xy[pool], self.site_rows[pool], self.prediction_xy, folds,
                                         cfg.distance_threshold * 1000.0, rng)
        return fold, report


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


def run_roles(sites: Sites, test: np.ndarray, val: np.ndarray, cfg: SplitConfig,
              rng: np.random.Generator) -> np.ndarray:
    """Role of every site in one run, given its test and validation sites."""
    threshold_m = cfg.distance_threshold * 1000.0
    roles = np.full(len(test), TRAIN)
    roles[sites.near(test, threshold_m)] = BUFFER
    roles[val] = VAL
    roles[sites.near(val, threshold_m) & (roles == TRAIN)] = BUFFER
    roles[test] = TEST
    pool = roles == TRAIN
    if not pool.any():
        raise SocmapError(f"split.distance_threshold = {cfg.distance_threshold:g} km: every site outside test "
                          "and validation lies within it of a held-out row; lower split.distance_threshold")
    roles[draw_sites(sites.xy, sites.target, sites.row_site, pool, cfg, rng)] = STOP
    return roles


def assign_roles(samples: pd.DataFrame, cfg: SplitConfig, num_runs: int,
                 prediction_xy: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Role of every row in every run (columns row_id, run, role, block; rows in sample order within a
    run) and the kNNDM choice of each test group's validation folds (keyed "all" in holdout, by the
    test fold in kfold)."""
    sites = Sites(samples, prediction_xy)
    tests, block = tested_sites(sites.site_xy, sites.site_rows, cfg)
    reports, frames = {}, []
    for group, test in enumerate(tests):
        # one cut of the rows outside the group's test rows serves its runs: one fold per run (two for
        # a single run, which then validates on half the rows)
        fold, reports["all" if cfg.mode == "holdout" else str(group)] = sites.validation_folds(
            test, max(2, num_runs), cfg, np.random.default_rng([cfg.seed + group, 2]))
        for k in tqdm(range(num_runs), desc=f"split runs of test group {group}", disable=None):
            run = group * num_runs + k
            roles = run_roles(sites, test, fold == k, cfg, np.random.default_rng([cfg.seed + run, 1]))[sites.row_site]
            frames.append(pd.DataFrame({"row_id": samples["row_id"].to_numpy(np.int64), "run": np.int64(run),
                                        "role": np.asarray(ROLES)[roles],
                                        "block": np.where(roles == TEST, block[sites.row_site], -1).astype(np.int64)}))
    return pd.concat(frames, ignore_index=True), reports


def quantiles_km(distance_m: np.ndarray) -> dict:
    """The distance distribution's QUANTILES in km."""
    if not len(distance_m):
        return {}
    return {f"p{q}": round(float(v) / 1000.0, 3) for q, v in zip(QUANTILES, np.percentile(distance_m, QUANTILES))}


def run_figures(sites: Sites, role: np.ndarray, site: np.ndarray) -> dict:
    """One run's sizes and target statistics by role, and the distances of its held-out rows and the
    prediction points to its training rows."""
    masks = {r: np.flatnonzero(role == r) for r in ROLES}
    tree = cKDTree(sites.xy[masks["train"]])
    figures = {r: {"rows": int(m.size), "sites": int(np.unique(site[m]).size),
                   "target_mean": round(float(sites.target[m].mean()), 3) if m.size else None}
               for r, m in masks.items()}
    figures["distance_to_train"] = {
        "val": tree.query(sites.xy[masks["val"]])[0], "test": tree.query(sites.xy[masks["test"]])[0],
        "prediction": tree.query(sites.prediction_xy)[0]}
    ks = ks_2samp(sites.target[masks["val"]], sites.target[masks["train"]])
    figures["val_ks"] = round(float(ks.statistic), 4)
    return figures


def split_metrics(samples: pd.DataFrame, split: pd.DataFrame, prediction_xy: np.ndarray,
                  knndm: dict) -> tuple[dict, dict, dict]:
    """metrics/split.json (sizes, the three distance distributions pooled over runs, the kNNDM choice),
    the per-run detail, and the pooled distances (km) for the picture."""
    sites = Sites(samples, prediction_xy)
    site = samples["site_id"].to_numpy()
    position = pd.Series(np.arange(len(samples)), index=samples["row_id"].to_numpy())
    per_run = {}
    for run, frame in split.groupby("run", sort=True):
        role = np.empty(len(samples), dtype=object)
        role[position[frame["row_id"].to_numpy()].to_numpy()] = frame["role"].to_numpy()
        per_run[str(run)] = run_figures(sites, role, site)
    pooled = {kind: np.concatenate([r["distance_to_train"][kind] for r in per_run.values()])
              for kind in ("val", "test", "prediction")}
    held = np.concatenate([pooled["val"], pooled["test"]])
    metrics = {
        "rows": len(samples), "sites": int(np.unique(site).size), "runs": len(per_run),
        **{f"{r}_rows": round(float(np.mean([p[r]["rows"] for p in per_run.values()])), 2) for r in ROLES},
        "val_ks_mean": round(float(np.mean([p["val_ks"] for p in per_run.values()])), 4),
        "min_distance_km": round(float(held.min()) / 1000.0, 3) if held.size else None,
        "distance_to_train_km": {kind: quantiles_km(d) for kind, d in pooled.items()},
        "knndm_clusters": {k: r["clusters"] for k, r in knndm.items()},
    }
    detail = {run: {**{k: v for k, v in r.items() if k != "distance_to_train"},
                    "distance_to_train_km": {kind: quantiles_km(d) for kind, d in r["distance_to_train"].items()}}
              for run, r in per_run.items()}
    return metrics, {"runs": detail, "knndm": knndm}, {kind: d / 1000.0 for kind, d in pooled.items()}


def distance_ecdf(distances: dict[str, np.ndarray], steps: int = 100) -> pd.DataFrame:
    """The share of each kind's distances (km) at most `km`, on `steps` + 1 even steps from 0 to the
    largest: the table behind the distances picture, one column per kind, for `dvc plots`."""
    largest = max((float(d.max()) for d in distances.values() if d.size), default=0.0)
    km = np.linspace(0.0, largest, steps + 1)
    table = {"km": km.round(4)}
    for kind, d in distances.items():
        d = np.sort(d)
        table[kind] = (np.searchsorted(d, km, side="right") / d.size).round(4) if d.size else np.nan
    return pd.DataFrame(table)


def main(params) -> None:
    """Read the sample table and the prediction points; write data/splits/ and metrics/split.json."""
    from socmap.plots import plot_distances

    samples = read_samples(paths.SAMPLES)
    prediction = pd.read_parquet(paths.PREDICTION_POINTS)[["x", "y"]].to_numpy(float)
    split, knndm = assign_roles(samples, params.split, params.train.num_runs, prediction)
    metrics, detail, distances = split_metrics(samples, split, prediction, knndm)
    with atomic_path(paths.SPLIT) as tmp:
        split.to_parquet(tmp, index=False)
    write_json(paths.SPLIT_DETAIL, detail)
    write_json(paths.SPLIT_METRICS, metrics)
    with atomic_path(paths.SPLIT_PLOTS / "distances.csv") as tmp:
        distance_ecdf(distances).to_csv(tmp, index=False)
    plot_distances(distances, paths.SPLIT_PLOTS / "distances.png")
    d = metrics["distance_to_train_km"]
    log.info("split (%s): %d rows; per run %s; median km to training: val %.2f, test %.2f, map pixels %.2f",
             params.split.mode, metrics["rows"], ", ".join(f"{r} {metrics[f'{r}_rows']:g}" for r in ROLES),
             d["val"].get("p50", np.nan), d["test"].get("p50", np.nan), d["prediction"].get("p50", np.nan))
