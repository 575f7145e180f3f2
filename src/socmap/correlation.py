"""How much error the map's predictions share, between places (for means over polygons) and between
years (for change).

The calibration (`socmap.intervals`) splits one prediction's error into a part that every run
shares, of standard deviation σ = √(κ·(s0² + (relative·mean)²)) (κ the relative kriging variance),
and a run-specific part, the ensemble spread. A mean over a polygon or a change between two years
combines predictions whose errors are correlated, so neither its error is the mean of the pixels'
errors, nor does it shrink like 1/n:

- **Between places** (`SharedError`): the shared errors of two places correlate by ρᵢⱼ = floor +
  (1 − floor)·cᵢⱼ. cᵢⱼ is the correlation of the two places' simple-kriging errors under the runs'
  residual fields (`kriging_error_pairs`): high for neighbouring pixels that krige from the same
  sites, lower where each has sites of its own, the correlation of the residuals themselves far from
  every site; the calibration already scales σ with the kriging variance, so it models the error as
  kriging error. The floor is what never averages out: the bias of the validation rows' errors, as
  a share of their mean square (of e / σ); the shared variance is in units of σ² times that mean
  square (σ is the conformal calibration's unit, not the error's standard deviation). Without kriging cᵢⱼ
  is the correlation of each run's training residuals at that distance. Fitting ρ to the validation
  errors themselves does not work: they lie ≥ `split.distance_threshold` from training, in few pairs
  at short lags, and a row of one run is kriging data of another.
- **Between years** (`YearError`): the rows of one site in two survey years, validation rows of the
  same run: Δe = Δobserved − Δpredicted. The two years' shared errors correlate by ρ_years (one
  residual field serves both, the same members predict both), fitted by moments; the interval of a
  change is Δ ± q·u_Δ with u_Δ² = σ₁² + σ₂² − 2·ρ_years·σ₁σ₂ + w·std_Δ²/K (std_Δ the members'
  spread of the change) and q the split-conformal quantile of |Δe| / u_Δ on those pairs. The pairs
  are two surveys of one site, so it is the interval of the change that two surveys of the place
  would measure, the measurement noise of both included: a change is detectable where two surveys
  would confirm it. Without enough pairs (a single survey year) ρ_years = 0 and q is normal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist
from scipy.stats import norm

from socmap.kriging import Kriging, ResidualField, Variogram, fit_variogram, to_residuals

MIN_YEAR_PAIRS = 20  # revisit pairs needed to fit the correlation between years


def shared_scale(mean: np.ndarray, calibration: dict, kappa: np.ndarray | float | None = None) -> np.ndarray:
    """σ: the standard deviation of the error every run shares at predictions `mean` (g/kg)."""
    kappa = 1.0 if kappa is None else np.asarray(kappa, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    return np.sqrt(kappa * (calibration["s0"] ** 2 + (calibration["relative"] * mean) ** 2))


def normal_quantile(level: float) -> float:
    """The two-sided standard normal quantile of a central interval of `level`."""
    return float(norm.ppf(0.5 + level / 2.0))


@dataclass(frozen=True)
class HonestErrors:
    """Each (run, validation row): the row, the run, its error (g/kg) and its shared scale σ."""

    row: np.ndarray
    run: np.ndarray
    error: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, targets: np.ndarray, predictions: np.ndarray, roles: np.ndarray, calibration: dict,
           variance: np.ndarray | None) -> "HonestErrors":
        """From the runs' predictions [K, N] (kriged) and their relative kriging variance [K, N] (None: none)."""
        run, row = np.nonzero(roles == "val")
        predicted = predictions[run, row]
        kappa = None if variance is None else variance[run, row]
        return cls(row, run, targets[row] - predicted, shared_scale(predicted, calibration, kappa))


@dataclass(frozen=True)
class SharedError:
    """How the shared errors of two places correlate: a floor that never decays (the bias the validation
    rows show), and above it the correlation of the kriging errors of the runs' residual fields, or
    without kriging of the residuals themselves (`variograms`)."""

    floor: float
    bias: float  # the validation rows' mean of e / σ
    rows: int  # the (run, validation row) pairs behind it
    variograms: tuple[tuple[float, float, float], ...] = ()  # without kriging: each run's (nugget, sill, range_km)
    scale: float = 1.0  # the validation rows' root mean square of e / σ: σ's scale to the error's

    @classmethod
    def fit(cls, honest: HonestErrors, variograms: Sequence[Variogram] = ()) -> "SharedError":
        """The floor from the validation errors: the square of their mean of e / σ over their mean square
        (in expectation the squared bias plus the variance of its estimate, as a share of the error);
        the scale, their root mean square of e / σ. σ is the conformal calibration's unit, not the
        error's standard deviation: the calibrated quantiles of e / σ make the pixels' intervals, and a
        polygon's mean, an average of many pixels' errors, has the normal interval of its variance in
        σ²·scale².

        Args:
            variograms: each run's variogram of its training residuals, for a map without kriging.
        """
        z = honest.error / honest.sigma
        shapes = tuple((v.nugget, v.sill, v.range_km) for v in variograms)
        if len(z) < 2:
            return cls(1.0, float(z.mean()) if len(z) else float("nan"), int(len(z)), shapes)
        return cls(min(1.0, float(z.mean() ** 2 / np.mean(z**2))), float(z.mean()), int(len(z)), shapes,
                   float(np.sqrt(np.mean(z**2))))

    def mean_variance(self, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, pixels: int,
                      fields: Sequence[ResidualField] = ()) -> float:
        """The variance of the shared error of a mean over `pixels` pixels, from a sample of them.

        Args:
            x, y: [m] metres and sigma: [m] shared scales of the sampled pixels (every pixel, or an even
                sample of a large polygon).
            fields: the members' kriging fields (the map is kriged); none: the residuals' `variograms`.
        Returns:
            (1/n²)·Σᵢⱼ σᵢσⱼρᵢⱼ over the n = `pixels` pixels, ρᵢᵢ = 1, ρᵢⱼ = floor + (1 − floor)·the
            correlation of the two places' kriging errors (averaged over the members): the sample's mean
            σ² over n plus its mean over distinct pairs times (1 − 1/n).
        """
        sigma = np.asarray(sigma, dtype=np.float64)
        m = len(sigma)
        diagonal = float(np.mean(sigma**2))
        if m < 2 or pixels < 2:
            return diagonal / max(pixels, 1)
        km = np.stack([x, y], axis=1) / 1000.0
        pairs = m * (m - 1)
        level = (sigma.sum() ** 2 - np.sum(sigma**2)) / pairs  # the mean σᵢσⱼ of distinct pairs
        if fields:
            correlated = np.mean([kriging_error_pairs(field, km, sigma) for field in fields]) / pairs
        else:
            correlated = np.mean([residual_pairs(Variogram(*v), km, sigma) for v in self.variograms] or [0.0]) / pairs
        shared = diagonal / pixels + (1.0 - 1.0 / pixels) * (self.floor * level + (1.0 - self.floor) * correlated)
        return shared * self.scale**2


def kriging_error_pairs(field: ResidualField, km: np.ndarray, sigma: np.ndarray) -> float:
    """Σᵢ≠ⱼ σᵢσⱼ·corr(eᵢ, eⱼ) of the simple-kriging errors e = r − r̂ of one field at places `km` [m, 2].

    With each place's kriging weights λᵢ on its neighbours Nᵢ, the errors' covariance is
    C(xᵢ, xⱼ) − λᵢ·C(Nᵢ, xⱼ) − λⱼ·C(Nⱼ, xᵢ) + λᵢ·(C(Nᵢ, Nⱼ) + nugget where they share a row)·λⱼ; with
    bᵢ = σᵢ / √Vᵢ (Vᵢ the kriging variance, the nugget in) the sum is b'Σb less its diagonal, and the
    weights of all places add up into one vector on the rows they use, so it costs m² + rows·m + rows².
    """
    v = field.variogram
    if v.sill <= 0:  # no spatial structure: the errors of two places are the residuals, independent
        return 0.0
    index, weights, target = field.weights(km * 1000.0)
    variance = v.nugget + v.sill - np.einsum("mk,mk->m", weights, target)
    b = sigma / np.sqrt(variance)
    rows, where = np.unique(index, return_inverse=True)
    on_rows = np.bincount(where.ravel(), (b[:, None] * weights).ravel(), minlength=len(rows))
    data = field.xy[rows] / 1000.0
    cross = v.covariance(cdist(data, km)) @ b  # [rows]
    total = b @ v.covariance(cdist(km, km)) @ b - 2.0 * on_rows @ cross + on_rows @ v.covariance(
        cdist(data, data)) @ on_rows + v.nugget * float(np.sum(on_rows**2)) + v.nugget * float(np.sum(b**2))
    return float(total - np.sum(sigma**2))


def residual_pairs(variogram: Variogram, km: np.ndarray, sigma: np.ndarray) -> float:
    """Σᵢ≠ⱼ σᵢσⱼ·corr(rᵢ, rⱼ) of residuals with this variogram (no kriging) at places `km` [m, 2]."""
    correlation = variogram.covariance(cdist(km, km)) / (variogram.nugget + variogram.sill)
    np.fill_diagonal(correlation, 0.0)
    return float(sigma @ correlation @ sigma)


@dataclass(frozen=True)
class YearError:
    """The correlation of a place's shared errors in two years, and the calibrated quantile of a change."""

    rho: float
    quantile: float  # of |Δe| / u_Δ at `level`
    level: float
    pairs: int

    @classmethod
    def fit(cls, honest: HonestErrors, samples: pd.DataFrame, predictions: np.ndarray, calibration: dict,
            level: float) -> "YearError":
        """From the pairs of validation rows of one site in two survey years held out by the same run.

        Args:
            samples: samples.parquet (site_id, year, target) in row order; predictions: [K, N] g/kg.
        """
        entries = pd.DataFrame({"row": honest.row, "run": honest.run, "error": honest.error, "sigma": honest.sigma,
                                "site": samples["site_id"].to_numpy()[honest.row],
                                "year": samples["year"].to_numpy()[honest.row]})
        pairs = entries.merge(entries, on=["run", "site"], suffixes=("_1", "_2"))
        pairs = pairs[pairs["year_1"] < pairs["year_2"]]
        if len(pairs) < MIN_YEAR_PAIRS:
            return cls(0.0, normal_quantile(level), level, int(len(pairs)))
        run, first, last = (pairs[c].to_numpy() for c in ("run", "row_1", "row_2"))
        change_error = pairs["error_2"].to_numpy() - pairs["error_1"].to_numpy()
        s1, s2 = pairs["sigma_1"].to_numpy(), pairs["sigma_2"].to_numpy()
        weight = calibration["spread_weight"]
        others = np.zeros(len(pairs))
        if weight > 0:  # the other runs' spread of the predicted change, as the calibration's spread
            change = predictions[:, last] - predictions[:, first]  # [K, pairs]
            others = np.array([np.delete(change[:, p], k).std(ddof=1) for p, k in enumerate(run)])
        spread_var = weight * others**2
        rho = float(np.clip(np.sum(s1**2 + s2**2 + spread_var - change_error**2) / np.sum(2 * s1 * s2), 0.0, 1.0))
        scale = np.sqrt(s1**2 + s2**2 - 2 * rho * s1 * s2 + spread_var)
        scores = np.sort(np.abs(change_error) / scale)
        rank = min(len(scores), math.ceil((len(scores) + 1) * level)) - 1
        return cls(rho, float(scores[rank]), level, int(len(pairs)))

    def interval(self, change: np.ndarray, first: np.ndarray, last: np.ndarray, change_std: np.ndarray,
                 calibration: dict, kappa: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bound of the change (g/kg) of the ensemble's means `first` → `last` (g/kg).

        Args:
            change: the members' mean change; change_std: their spread of it; kappa: the relative kriging
                variance (one field serves both years); None: no kriging.
        """
        s1, s2 = shared_scale(first, calibration, kappa), shared_scale(last, calibration, kappa)
        spread_var = calibration["spread_weight"] * np.nan_to_num(np.asarray(change_std, dtype=np.float64)) ** 2
        half = self.quantile * np.sqrt(s1**2 + s2**2 - 2 * self.rho * s1 * s2 + spread_var / calibration["runs"])
        return change - half, change + half


@dataclass(frozen=True)
class ErrorCorrelation:
    """What the map needs to put intervals on means over polygons and on change."""

    places: SharedError
    years: YearError

    @classmethod
    def fit(cls, samples: pd.DataFrame, predictions: np.ndarray, roles: np.ndarray, calibration: dict,
            kriging: Kriging | None) -> "ErrorCorrelation":
        """From the runs' predictions [K, N] (kriged) and what kriging added (None: no kriging; the places'
        correlation then comes from each run's variogram of its training residuals, log ratios)."""
        targets = samples["target"].to_numpy(np.float64)
        variance = None if kriging is None else kriging.variance
        honest = HonestErrors.of(targets, predictions, roles, calibration, variance)
        variograms = []
        if kriging is None:
            xy = samples[["x", "y"]].to_numpy(np.float64)
            for run, predicted in enumerate(predictions):
                train = roles[run] == "train"
                if train.any():
                    variograms.append(fit_variogram(xy[train], to_residuals(targets[train], predicted[train],
                                                                            "log")))
        return cls(SharedError.fit(honest, variograms),
                   YearError.fit(honest, samples, predictions, calibration, calibration["interval"]))

    def to_dict(self) -> dict:
        """JSON-ready (data/evaluate/error_correlation.json), read back by `from_dict`."""
        return {"places": asdict(self.places), "years": asdict(self.years)}

    @classmethod
    def from_dict(cls, data: dict) -> "ErrorCorrelation":
        places = {**data["places"], "variograms": tuple(map(tuple, data["places"]["variograms"]))}
        return cls(SharedError(**places), YearError(**data["years"]))
