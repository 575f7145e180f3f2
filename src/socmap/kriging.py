"""Regression kriging: the part of a model's error that nearby sites share, interpolated between them.

A model that sees only the covariates of a pixel leaves an error that is spatially autocorrelated:
whatever no band describes (parent material, land-use history; in the simulated world the field
``r(x)``) is similar at sites a few km apart. Regression kriging, the usual complement of a
covariate model in digital soil mapping, adds it back:

- the residuals at rows the predicting models did not train on (the validation rows, each by the
  run that held it out: `krige_runs`), in `space` ``log`` (``log observed − log predicted``: SOC
  errors are multiplicative) or ``linear`` (g/kg), are fitted with an exponential variogram
  ``nugget + sill·(1 − exp(−h / range))``;
- at a new location, simple kriging with the nearest `neighbours` of those rows interpolates the
  residual ``r̂`` with error variance ``σ²``, and the model's prediction is shifted by ``r̂`` (linear)
  or multiplied by ``exp(r̂ + σ²/2)`` (log: the mean of a log-normal error, not its median, which
  would bias every prediction low);
- the kriging variance there, relative to the variance far from every row (``nugget + sill``), says
  how much of the error kriging has explained: near 1 far from the training sites, lower next to
  them. The prediction intervals scale with it (`socmap.intervals`), so that they widen with
  the distance to the nearest sites.

A run's test rows are never among its kriging data and its validation rows are kriged without their
own residuals, so its validation figures, the interval calibration on them and the test figures
all see the kriged prediction as the map does.
Distances are Euclidean in the metric working CRS of ``x, y`` (`socmap.ground`), as in the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit
from scipy.spatial import cKDTree

from socmap.config import EvaluateConfig, choices
from socmap.errors import SocmapError
from socmap.io import write_npz

SPACES = choices(EvaluateConfig, "kriging")
FLOOR = 0.1  # g/kg; observed and predicted SOC are clipped here before the log
MAX_LAG_KM, LAG_KM = 60.0, 2.0  # the empirical variogram: pairs closer than MAX_LAG_KM in LAG_KM bins
MIN_PAIRS = 30  # lag bins with fewer pairs are left out of the fit
EXCLUDED_SPARE = 48  # neighbours looked up beyond `neighbours`, for the data nearer than a minimum distance
CHUNK = 256  # locations per batch of kriging systems: about 2 MB of memory, whatever the region


@dataclass(frozen=True)
class Variogram:
    """An exponential variogram: semivariance ``nugget + sill·(1 − exp(−h / range_km))`` at h km (95 % of
    the sill at 3·range_km, the effective range)."""

    nugget: float
    sill: float  # partial sill: the spatially correlated variance
    range_km: float

    def __call__(self, distance_km: np.ndarray) -> np.ndarray:
        return self.nugget + self.sill * (1.0 - np.exp(-np.asarray(distance_km) / self.range_km))

    def covariance(self, distance_km: np.ndarray) -> np.ndarray:
        """Covariance of the correlated part between locations `distance_km` apart (the nugget excluded)."""
        return self.sill * np.exp(-np.asarray(distance_km) / self.range_km)


def empirical_variogram(xy: np.ndarray, residuals: np.ndarray, max_lag_km: float = MAX_LAG_KM,
                        lag_km: float = LAG_KM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lag centres km, semivariance, pairs) of every lag bin, from all pairs of rows closer than `max_lag_km`.

    Args:
        xy: [N, 2] metres; residuals: [N].
    """
    km = np.asarray(xy, dtype=np.float64) / 1000.0
    pairs = cKDTree(km).query_pairs(max_lag_km, output_type="ndarray")
    bins = int(np.ceil(max_lag_km / lag_km))
    if len(pairs) == 0:
        return (np.arange(bins) + 0.5) * lag_km, np.full(bins, np.nan), np.zeros(bins, dtype=np.int64)
    distance = np.hypot(*(km[pairs[:, 0]] - km[pairs[:, 1]]).T)
    half_square = 0.5 * (residuals[pairs[:, 0]] - residuals[pairs[:, 1]]) ** 2
    lag = np.minimum((distance / lag_km).astype(np.int64), bins - 1)
    count = np.bincount(lag, minlength=bins)
    with np.errstate(invalid="ignore"):
        gamma = np.bincount(lag, half_square, minlength=bins) / count
    return (np.arange(bins) + 0.5) * lag_km, gamma, count


def fit_variogram(xy: np.ndarray, residuals: np.ndarray) -> Variogram:
    """The exponential variogram fitted to the empirical one, each lag weighted by its pairs.

    Without spatial structure to fit (too few pairs, or a fit that fails) the sill is 0: all of the
    variance is nugget and kriging adds nothing but the mean residual.
    """
    residuals = np.asarray(residuals, dtype=np.float64)
    variance = float(residuals.var()) or 1e-12
    flat = Variogram(nugget=variance, sill=0.0, range_km=LAG_KM)
    lags, gamma, count = empirical_variogram(xy, residuals)
    used = count >= MIN_PAIRS
    if used.sum() < 3:
        return flat
    try:
        (nugget, sill, range_km), _ = curve_fit(
            lambda h, c0, c1, a: c0 + c1 * (1.0 - np.exp(-h / a)), lags[used], gamma[used],
            p0=[variance / 2, variance / 2, 10.0], sigma=1.0 / np.sqrt(count[used]),
            bounds=([0.0, 0.0, LAG_KM / 4], [4 * variance, 4 * variance, 4 * MAX_LAG_KM]))
    except (RuntimeError, ValueError):
        return flat
    # a nugget above 0 keeps the systems of revisited sites (distance 0 apart) positive definite
    return Variogram(nugget=max(float(nugget), 1e-3 * variance), sill=float(sill), range_km=float(range_km))


def to_residuals(observed: np.ndarray, predicted: np.ndarray, space: str) -> np.ndarray:
    """Residuals in the kriging space: log ratio (log) or difference in g/kg (linear)."""
    observed, predicted = np.asarray(observed, np.float64), np.asarray(predicted, np.float64)
    if space == "log":
        return np.log(np.maximum(observed, FLOOR)) - np.log(np.maximum(predicted, FLOOR))
    return observed - predicted


@dataclass(frozen=True)
class ResidualField:
    """One run's kriging data: training-row positions and residuals, their variogram, the space."""

    xy: np.ndarray  # [N, 2] metres
    residuals: np.ndarray  # [N]
    variogram: Variogram
    space: str
    neighbours: int

    @classmethod
    def fit(cls, xy: np.ndarray, observed: np.ndarray, predicted: np.ndarray, space: str,
            neighbours: int) -> "ResidualField":
        """The field of a model's residuals at the rows it was trained on."""
        if space not in ("log", "linear"):
            raise SocmapError(f"evaluate.kriging = {space!r}: must be one of {', '.join(SPACES)}")
        residuals = to_residuals(observed, predicted, space)
        known = np.isfinite(residuals)  # a forest row that no tree left out of its bag has no out-of-bag value
        xy, residuals = np.asarray(xy, dtype=np.float64)[known], residuals[known]
        if len(residuals) == 0:
            raise SocmapError("no training rows with a residual to krige; set evaluate.kriging = none")
        return cls(xy, residuals, fit_variogram(xy, residuals), space, int(neighbours))

    @cached_property
    def _tree(self) -> cKDTree:
        return cKDTree(self.xy / 1000.0)

    def subset(self, keep: np.ndarray) -> "ResidualField":
        """The field of the data rows in `keep` (a mask over them), with the same variogram."""
        return ResidualField(self.xy[keep], self.residuals[keep], self.variogram, self.space, self.neighbours)

    def krige(self, xy: np.ndarray, min_distance_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Simple kriging at locations `xy` [M, 2] (metres): the residual's estimate [M] and the relative
        kriging variance [M] (the error variance of the estimate over ``nugget + sill``, in (0, 1]).

        Data nearer a location than `min_distance_m` are left out of its system, as the split buffers
        the training rows around a held-out row.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        mean = float(self.residuals.mean())
        out, variance = np.full(len(xy), mean), np.ones(len(xy))
        if self.variogram.sill <= 0 or len(xy) == 0:
            return out, variance
        index, weights, target = self.weights(xy, min_distance_m)
        out += np.einsum("mk,mk->m", weights, (self.residuals - mean)[index])
        variance = 1.0 - np.einsum("mk,mk->m", weights, target) / (self.variogram.nugget + self.variogram.sill)
        return out, variance

    def weights(self, xy: np.ndarray, min_distance_m: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The simple-kriging systems at locations `xy` [M, 2] (metres): the nearest `neighbours` rows
        at least `min_distance_m` away (index [M, k]), their weights [M, k] and their covariance with the
        location [M, k] (both 0 for the nearer rows a system leaves out)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        k = min(self.neighbours, len(self.residuals))
        extra = min(len(self.residuals) - k, EXCLUDED_SPARE) if min_distance_m > 0 else 0
        index = np.empty((len(xy), k + extra), dtype=np.int64)
        weights, target = np.empty((len(xy), k + extra)), np.empty((len(xy), k + extra))
        for start in range(0, len(xy), CHUNK):
            distance, near = self._tree.query(xy[start:start + CHUNK] / 1000.0, k + extra)
            distance, near = distance.reshape(len(distance), k + extra), near.reshape(len(near), k + extra)
            usable = distance >= min_distance_m / 1000.0
            usable &= np.cumsum(usable, axis=1) <= k  # the k nearest beyond the minimum distance
            here = slice(start, start + len(near))
            index[here], target[here] = near, np.where(usable, self.variogram.covariance(distance), 0.0)
            weights[here] = np.linalg.solve(self.system(near, usable), target[here][..., None])[..., 0]
        return index, weights, target

    def system(self, index: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """[m, k, k] covariance matrices of the data rows `index` [m, k]; rows and columns of the data not
        `usable` are those of the identity, so that they get no weight."""
        px, py = self.xy[index, 0] / 1000.0, self.xy[index, 1] / 1000.0  # [m, k]
        system, dy = px[:, :, None] - px[:, None, :], py[:, :, None] - py[:, None, :]  # [m, k, k]
        np.hypot(system, dy, out=system)  # distances, then their covariance, in place
        system *= -1.0 / self.variogram.range_km
        np.exp(system, out=system)
        system *= self.variogram.sill
        diagonal = np.arange(index.shape[1])
        system[:, diagonal, diagonal] += self.variogram.nugget
        if not usable.all():
            pair = usable[:, :, None] & usable[:, None, :]
            system[~pair] = 0.0
            system[:, diagonal, diagonal] = np.where(usable, system[:, diagonal, diagonal], 1.0)
        return system

    def correct(self, predicted: np.ndarray, kriged: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """The prediction with the residual `kriged` added back, or multiplied back in log space with the
        log-normal mean's term (`variance`: the relative kriging variance of `krige`)."""
        if self.space == "log":
            total = self.variogram.nugget + self.variogram.sill
            return np.asarray(predicted) * np.exp(kriged + 0.5 * total * np.asarray(variance))
        return np.asarray(predicted) + kriged

    def summary(self) -> dict:
        """The variogram and the data behind it, for metrics.json."""
        return {"nugget": self.variogram.nugget, "sill": self.variogram.sill,
                "range_km": self.variogram.range_km, "rows": int(len(self.residuals))}


@dataclass(frozen=True)
class Kriging:
    """What regression kriging adds to the runs' predictions (`krige_runs`)."""

    unkriged: np.ndarray  # [K, N] the predictions before kriging, g/kg
    fields: list[ResidualField]  # the field of each run's test rows and map pixels (one per test group)
    variance: np.ndarray  # [K, N] relative kriging variance of each run at each row


def out_of_fold(predictions: np.ndarray, roles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's prediction by the run that validated it (NaN where none did) and that run (−1)."""
    runs, rows = np.nonzero(roles == "val")
    oof, run_of = np.full(predictions.shape[1], np.nan), np.full(predictions.shape[1], -1)
    oof[rows], run_of[rows] = predictions[runs, rows], runs
    return oof, run_of


def krige_runs(xy: np.ndarray, targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray, groups: np.ndarray,
               cfg: EvaluateConfig, threshold_m: float) -> tuple[np.ndarray, Kriging | None]:
    """Every run's predictions, regression-kriged from residuals of rows the predicting model did not
    train on (cross-fitted): the validation rows, each scored by the run that held it out.

    The runs that share their test rows (a test group: holdout's runs, or kfold's runs of one test
    fold) share one field of every validation row's residual in the group, which serves their test
    rows (and, for the map, their pixels); a run's own validation rows are kriged from the group's
    other folds' residuals beyond `threshold_m`, as the split buffers them.

    Args:
        xy: [N, 2] metres; targets: [N]; predictions: [K, N] g/kg; roles: [K, N].
        groups: [K] the test group of every run (`socmap.split.test_groups`).
        cfg: evaluate.* (kriging, kriging_neighbours).
    Returns:
        ([K, N] kriged predictions, what kriging added); with kriging none, the predictions and None.
    """
    space, neighbours = cfg.kriging, cfg.kriging_neighbours
    if space == "none":
        return predictions, None
    kriged, variance = np.empty_like(predictions), np.empty_like(predictions)
    fields: list[ResidualField | None] = [None] * len(predictions)
    for group in np.unique(groups):
        runs = np.flatnonzero(groups == group)
        oof, run_of = out_of_fold(predictions[runs], roles[runs])
        known = run_of >= 0
        field = ResidualField.fit(xy[known], targets[known], oof[known], space, neighbours)
        for member, run in enumerate(runs):
            residual, variance[run] = field.krige(xy)
            own = roles[run] == "val"
            residual[own], variance[run, own] = field.subset(run_of[known] != member).krige(xy[own], threshold_m)
            kriged[run] = field.correct(predictions[run], residual, variance[run])
            fields[run] = field
    return kriged, Kriging(predictions, fields, variance)


def save_fields(path: str | Path, fields: list[ResidualField]) -> None:
    """Every run's field in one ``.npz`` (atomically), for the map stage; a field that serves several runs
    is written once."""
    number: dict[int, int] = {}  # id of a field -> its number in the file
    run_field = np.array([number.setdefault(id(field), len(number)) for field in fields], dtype=np.int64)
    distinct = list({id(field): field for field in fields}.values())
    arrays = {"space": np.array(fields[0].space if fields else "none"),
              "neighbours": np.array(fields[0].neighbours if fields else 0), "run_field": run_field}
    for i, field in enumerate(distinct):
        arrays[f"xy_{i}"] = field.xy
        arrays[f"residuals_{i}"] = field.residuals
        arrays[f"variogram_{i}"] = np.array([field.variogram.nugget, field.variogram.sill, field.variogram.range_km])
    write_npz(path, arrays)


def load_fields(path: str | Path) -> list[ResidualField]:
    """The field of every run that `save_fields` wrote, in run order (runs sharing a field share the object);
    [] when kriging was off (evaluate.kriging = none)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            space, neighbours = str(data["space"]), int(data["neighbours"])
            distinct = [ResidualField(data[f"xy_{i}"], data[f"residuals_{i}"],
                                      Variogram(*map(float, data[f"variogram_{i}"])), space, neighbours)
                        for i in range(len(np.unique(data["run_field"])))]
            return [distinct[i] for i in data["run_field"]]
    except FileNotFoundError:
        raise SocmapError(f"{path}: residual kriging fields not found; run `socmap evaluate` first") from None
    except (KeyError, ValueError, OSError) as error:
        raise SocmapError(f"{path}: not a socmap kriging file ({error}); rerun `socmap evaluate`") from None
