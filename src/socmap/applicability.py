"""Where the model knows its ground: the dissimilarity index (DI) and the area of applicability (AOA)
of Meyer & Pebesma (2021, Methods in Ecology and Evolution 12:1620), implemented from the paper.

- **Predictor space**: the hand-made context and history features of a patch (`history_features`:
  the centre pixel and the window mean of every band in every year, the centre minus the window mean
  in the survey year), the features the forest baseline learns from. They summarise what the
  network sees (its window and its years) in a few dozen values that mean the same thing for every
  run; the raw patch (hundreds of values, mostly redundant neighbours) would drown any distance, and
  a network embedding differs from run to run and moves with every retraining.
- **Standardised and weighted**: each feature less its mean over the ensemble's training rows (every
  row that some run trains on), over its standard deviation there, times the weight of its band: the
  band's permutation importance for the ensemble (`band_importance`, on validation rows) over the
  square root of the band's number of features, so that a band counts by its importance however
  many features it has.
- **DI** of a location: the distance in that space to the nearest training row over the mean
  distance between training rows; 0 on a training row's own features.
- **Threshold**: cross-validated DI of the training data: each run's validation rows against that
  run's training rows (the rows its model saw; the validation rows are ≥ `split.distance_threshold`
  from them and are what the intervals are calibrated on, so the AOA is where that calibration was
  tested), and of those DI the upper whisker (the largest not above the upper quartile + 1.5 times
  the interquartile range, so never above the largest). **AOA** = DI ≤ threshold.

The evaluate stage fits an `Applicability` and writes it; the map stage computes the features of
each pixel's patch, the very patch the ensemble predicts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from socmap.errors import SocmapError
from socmap.io import write_npz
from socmap.metrics import interval_metrics, regression_metrics

PROFILE_BINS = 5  # bins of equal test rows in the error profiles
CHUNK = 1024  # rows per block of the mean pairwise distance


def history_features(patches: np.ndarray, static: np.ndarray) -> np.ndarray:
    """[N, F]: centre pixel and window mean of every band and year, and centre − window mean in the survey year.

    Args:
        patches: [N, C, W, W, T] raw patches.
        static: [C] bool, True for bands repeated over time (kept once).
    """
    patches = np.asarray(patches, dtype=np.float32)
    centre = patches.shape[2] // 2
    point = patches[:, :, centre, centre, :]  # [N, C, T]
    window = patches.mean(axis=(2, 3))  # [N, C, T]
    static = np.asarray(static, dtype=bool)
    columns = []
    for values in (point, window):
        columns += [values[:, static, -1], values[:, ~static, :].reshape(len(patches), -1)]
    columns.append(point[:, :, -1] - window[:, :, -1])
    return np.concatenate(columns, axis=1)


def feature_bands(static: np.ndarray, steps: int) -> np.ndarray:
    """[F] the band of each column of `history_features`, in its order."""
    bands = np.arange(len(static))
    static = np.asarray(static, dtype=bool)
    one = np.concatenate([bands[static], np.repeat(bands[~static], steps)])
    return np.concatenate([one, one, bands])


def band_importance(predictors: Sequence, patches: np.ndarray, targets: np.ndarray, roles: np.ndarray,
                    batch_size: int, seed: int) -> np.ndarray:
    """[C] permutation importance of each band for the ensemble: the rise of the mean squared error
    ((g/kg)²) when the band's windows are shuffled among a run's validation rows, each run's rows
    predicted by that run's model (which never saw them), averaged over the runs; floored at 0.

    Args:
        predictors: the runs' `Predictor`s, in run order; patches: [N, C, W, W, T]; targets: [N] g/kg;
        roles: [K, N].
    """
    rng = np.random.default_rng(seed)
    rises = []
    for run, predictor in enumerate(predictors):
        val = np.flatnonzero(roles[run] == "val")
        if val.size < 2:
            continue
        x, y = np.array(patches[val], dtype=np.float32), targets[val]
        base = np.mean((predictor.predict(x, batch_size) - y) ** 2)
        rise = []
        for band in range(x.shape[1]):
            shuffled = x.copy()
            shuffled[:, band] = x[rng.permutation(len(x)), band]
            rise.append(np.mean((predictor.predict(shuffled, batch_size) - y) ** 2) - base)
        rises.append(rise)
    if not rises:
        raise SocmapError("no run has two validation rows to measure the bands' importance on; "
                          "raise split.target_val_ratio")
    return np.maximum(np.mean(rises, axis=0), 0.0)


def whisker(values: np.ndarray) -> float:
    """The upper whisker of a box plot: the largest value not above the upper quartile + 1.5·IQR."""
    values = np.asarray(values, dtype=np.float64)
    q25, q75 = np.percentile(values, [25, 75])
    return float(values[values <= q75 + 1.5 * (q75 - q25)].max())


def mean_distance(points: np.ndarray) -> float:
    """The mean Euclidean distance between distinct rows of `points` [N, F], in blocks of rows."""
    n = len(points)
    if n < 2:
        raise SocmapError(f"{n} training row(s): the dissimilarity index needs at least 2")
    total = sum(float(cdist(points[start:start + CHUNK], points).sum()) for start in range(0, n, CHUNK))
    return total / (n * (n - 1))


@dataclass(frozen=True)
class Applicability:
    """The reference set of the DI: the training rows in the weighted space and how to get there."""

    static: np.ndarray  # [C] bool: bands kept once in the features
    importance: np.ndarray  # [C] permutation importance of each band, (g/kg)²
    mean: np.ndarray  # [F] training rows' mean of each feature
    scale: np.ndarray  # [F] weight / training standard deviation of each feature
    rotation: np.ndarray  # [F, F] principal axes of the training rows: no distance changes, the tree prunes better
    reference: np.ndarray  # [N, F] the training rows in the rotated weighted space
    mean_distance: float  # between training rows, in that space
    threshold: float  # the AOA holds DI ≤ threshold

    @classmethod
    def fit(cls, features: np.ndarray, roles: np.ndarray, importance: np.ndarray, static: np.ndarray,
            steps: int) -> tuple["Applicability", np.ndarray]:
        """The reference of the ensemble's training rows and the threshold from cross-validated DI.

        Args:
            features: [N, F] `history_features` of every row; roles: [K, N]; importance: [C] per band;
            static: [C] bool; steps: the patches' years.
        Returns:
            (the applicability, the cross-validated DI of every (run, validation row)).
        """
        features = np.asarray(features, dtype=np.float64)
        band = feature_bands(static, steps)
        trained = (roles == "train").any(axis=0)
        mean, std = features[trained].mean(axis=0), features[trained].std(axis=0)
        importance = np.asarray(importance, dtype=np.float64)
        share = importance / importance.sum() if importance.sum() > 0 else np.full(len(importance), 1 / len(importance))
        weights = np.sqrt(share[band] / np.bincount(band, minlength=len(importance))[band])
        scale = weights / np.where(std > 0, std, 1.0)
        weighted = (features - mean) * scale
        _, _, axes = np.linalg.svd(weighted[trained] - weighted[trained].mean(axis=0), full_matrices=False)
        rotation = axes.T
        space = weighted @ rotation
        distance = mean_distance(space[trained])
        cv = []
        for run in range(len(roles)):
            train, val = roles[run] == "train", roles[run] == "val"
            if train.any() and val.any():
                cv.append(cKDTree(space[train]).query(space[val])[0] / distance)
        if not cv:
            raise SocmapError("no run has both training and validation rows: no cross-validated DI to set the "
                              "area of applicability's threshold from; raise split.target_val_ratio")
        cv_di = np.concatenate(cv)
        return cls(np.asarray(static, dtype=bool), importance, mean, scale, rotation, space[trained], distance,
                   whisker(cv_di)), cv_di

    @cached_property
    def _tree(self) -> cKDTree:
        return cKDTree(self.reference)

    def space(self, features: np.ndarray) -> np.ndarray:
        """Features [B, F] in the rotated weighted space of the reference."""
        return ((np.asarray(features, dtype=np.float64) - self.mean) * self.scale) @ self.rotation

    def dissimilarity(self, patches: np.ndarray) -> np.ndarray:
        """DI [B] of raw patches [B, C, W, W, T]: their nearest training row's distance over the mean distance
        (the exact nearest neighbour, the queries shared out over every core)."""
        nearest, _ = self._tree.query(self.space(history_features(patches, self.static)), workers=-1)
        return nearest / self.mean_distance

    def save(self, path: str | Path) -> None:
        """The reference as one ``.npz`` (atomically), for the map stage."""
        arrays = {name: np.asarray(getattr(self, name)) for name in self.__dataclass_fields__}
        write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Applicability":
        """What `save` wrote."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in cls.__dataclass_fields__}
        except FileNotFoundError:
            raise SocmapError(f"{path}: the area of applicability's reference not found; run `socmap evaluate` "
                              "first") from None
        except (KeyError, ValueError, OSError) as error:
            raise SocmapError(f"{path}: not a socmap applicability file ({error}); rerun `socmap evaluate`") from None
        return cls(**{**arrays, "mean_distance": float(arrays["mean_distance"]),
                      "threshold": float(arrays["threshold"])})

    def summary(self, bands: Sequence[str], cv_di: np.ndarray) -> dict:
        """The threshold, the bands' importance and weights, the cross-validated DI, for metrics.json."""
        share = self.importance / self.importance.sum() if self.importance.sum() > 0 else None
        return {"threshold": self.threshold, "mean_distance": self.mean_distance,
                "training_rows": int(len(self.reference)),
                "importance": dict(zip(bands, self.importance.tolist())),
                "weight": dict(zip(bands, share.tolist())) if share is not None else "equal (no band mattered)",
                "cv_di": {"n": int(cv_di.size), **dict(zip(("q25", "median", "q75", "max"),
                                                           np.percentile(cv_di, [25, 50, 75, 100]).tolist()))}}


def fit_applicability(predictors: Sequence, patches: np.ndarray, targets: np.ndarray, roles: np.ndarray,
                      static: np.ndarray, batch_size: int, seed: int) -> tuple[Applicability, np.ndarray, np.ndarray]:
    """The ensemble's applicability from every row's patch: (it, the cross-validated DI, the features [N, F])."""
    features = history_features(patches, static)
    importance = band_importance(predictors, patches, targets, roles, batch_size, seed)
    return (*Applicability.fit(features, roles, importance, static, patches.shape[-1]), features)


def training_distance(points: np.ndarray, roles: np.ndarray, rows: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Distance from each of `rows` to the nearest row its predicting models trained on, in the space of
    `points` [N, D] (x, y in metres, or the dissimilarity index's): per row, `fold` its test fold, whose
    runs test it (kfold), or −1 for every run's training rows (holdout: the ensemble's)."""
    out = np.empty(len(rows))
    for group in np.unique(fold):
        here = fold == group
        testing = slice(None) if group < 0 else roles[:, rows[here][0]] == "test"
        train = (roles[testing] == "train").any(axis=0)
        out[here] = cKDTree(points[train]).query(points[rows[here]])[0]
    return out


def error_profile(table: pd.DataFrame, column: str, nominal: float, bins: int = PROFILE_BINS) -> pd.DataFrame:
    """Test error (g/kg) and interval coverage in `bins` bins of about equal rows along `column`.

    Args:
        table: the test table: observed, ensemble, lower, upper and `column`.
        nominal: the intervals' nominal coverage (a column of its own, the line the coverage should follow).
    Returns:
        One row per bin: the bin's median of `column` (named `column`), its lowest and highest value,
        n, rmse, mae, bias, picp, interval_width and nominal.
    """
    order = np.argsort(table[column].to_numpy(), kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, len(order))):
        group = table.iloc[part]
        values = group[column].to_numpy()
        figures = regression_metrics(group["observed"], group["ensemble"])
        rows.append({column: float(np.median(values)), f"{column}_low": float(values.min()),
                     f"{column}_high": float(values.max()), "n": int(len(group)),
                     **{k: figures[k] for k in ("rmse", "mae", "bias")},
                     **interval_metrics(group["observed"], group["lower"], group["upper"]), "nominal": nominal})
    return pd.DataFrame(rows)


def test_applicability(table: pd.DataFrame, applicability: Applicability, features: np.ndarray,
                       roles: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """The test table with each row's DI and whether it lies inside the AOA, against the training rows of
    the model(s) that predict it (the table's distance_km measures the same on the ground).

    Args:
        table: the test table (kfold: with its fold column); features: [N, F] of every row;
        roles: [K, N]; rows: the test rows' positions, in table order.
    """
    fold = table["fold"].to_numpy() if "fold" in table else np.full(len(rows), -1)
    dissimilarity = training_distance(applicability.space(features), roles, rows, fold) / applicability.mean_distance
    return table.assign(dissimilarity=dissimilarity, inside_aoa=dissimilarity <= applicability.threshold)


def applicability_metrics(table: pd.DataFrame, applicability: Applicability, bands: Sequence[str],
                          cv_di: np.ndarray, nominal: float) -> dict:
    """metrics.json's figures on the AOA: at the top its threshold and the share of test rows inside it;
    under `applicability` the reference, and the test rows' error inside and outside and along DI and
    distance."""
    parts = {}
    for name, rows in (("inside", table[table["inside_aoa"]]), ("outside", table[~table["inside_aoa"]])):
        parts[name] = {"n": int(len(rows))}
        if len(rows):
            figures = regression_metrics(rows["observed"], rows["ensemble"])
            parts[name].update({k: figures[k] for k in ("rmse", "mae", "bias")},
                               **interval_metrics(rows["observed"], rows["lower"], rows["upper"]))
    detail = {**applicability.summary(bands, cv_di), "test": parts,
              "error_by_dissimilarity": error_profile(table, "dissimilarity", nominal).to_dict("records"),
              "error_by_distance": error_profile(table, "distance_km", nominal).to_dict("records")}
    return {"aoa_threshold": applicability.threshold, "aoa_test_inside": float(table["inside_aoa"].mean()),
            "applicability": detail}
