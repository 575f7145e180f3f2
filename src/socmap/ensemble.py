"""The ensemble that maps: the run checkpoints, each paired by run id with its kriging field, and the
interval calibration they share; with the evaluate stage's reference of the dissimilarity index
(`socmap.applicability`) and the errors that places and years share (`socmap.correlation`).

A map pixel is predicted by every member (`Ensemble.predict`, all members and test-time views in one
batched forward pass: `socmap.stacked`), each member's prediction is
regression-kriged from its own run's training residuals (`Ensemble.krige`) exactly as the evaluate
stage scores it, and the figures of the pixel are the members' mean, their spread (ddof 1, as the
calibration uses), the calibrated interval around the mean, its dissimilarity index and whether it
lies inside the area of applicability (`Ensemble.bands`); a change carries the interval of the
difference and whether it is detectable.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from socmap import paths
from socmap.applicability import Applicability
from socmap.correlation import ErrorCorrelation, shared_scale
from socmap.errors import SocmapError
from socmap.grid import NODATA
from socmap.intervals import prediction_interval
from socmap.io import read_json
from socmap.kriging import ResidualField, load_fields
from socmap.metrics import spread
from socmap.predict import Predictor, load_ensemble
from socmap.stacked import StackedEnsemble


class Ensemble:
    """Members in run order, the kriging field of each member's run (none: no kriging), the calibration;
    the DI's reference (none: no DI and AOA bands) and the shared errors (none: a change without interval)."""

    def __init__(self, members: Sequence[Predictor], calibration: dict, fields: Sequence[ResidualField] = (),
                 applicability: Applicability | None = None, correlation: ErrorCorrelation | None = None):
        self.members = list(members)
        self.calibration = calibration
        self.applicability = applicability
        self.correlation = correlation
        if fields and len(fields) != len(self.members):
            raise SocmapError(f"{paths.KRIGING_FIELDS}: kriging fields of {len(fields)} run(s) for "
                              f"{len(self.members)} checkpoints in models/; rerun `socmap evaluate`")
        by_run = dict(enumerate(fields))  # the evaluate stage writes one field per run, in run order
        self.fields = [by_run[member.run] for member in self.members] if fields else []

    @cached_property
    def model(self) -> StackedEnsemble:
        """Every member and test-time view as one batched model, built at the first prediction."""
        return StackedEnsemble(self.members)

    @classmethod
    def load(cls, device: str | torch.device | None = None, models: str | os.PathLike = paths.MODELS,
             calibration: str | os.PathLike = paths.CALIBRATION,
             fields: str | os.PathLike = paths.KRIGING_FIELDS, applicability: str | os.PathLike = paths.APPLICABILITY,
             correlation: str | os.PathLike = paths.ERROR_CORRELATION) -> "Ensemble":
        """The checkpoints of the train stage with the calibration, the fields, the DI's reference and the
        shared errors of the evaluate stage."""
        return cls(load_ensemble(models, device=device), read_json(calibration, "evaluate"), load_fields(fields),
                   Applicability.load(applicability), ErrorCorrelation.from_dict(read_json(correlation, "evaluate")))

    @classmethod
    def from_bundle(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "Ensemble":
        """The ensemble of a `socmap bundle` folder (the registry's soc-ensemble, as `dvc artifacts get`
        fetches it): its checkpoints and the evaluate stage's files beside them, under their own names."""
        folder = Path(folder)
        calibration, fields, applicability, correlation = (folder / path.name for path in paths.MAP_INPUTS)
        return cls.load(device, folder, calibration=calibration, fields=fields, applicability=applicability,
                        correlation=correlation)

    def __len__(self) -> int:
        return len(self.members)

    def check(self, bands: Sequence[str], window_size: int, time_before: int) -> None:
        """The members must have been trained on the channels (`socmap.patches.channel_names`), window and
        years that params.yaml names."""
        expected = (list(bands), window_size, time_before)
        for member in self.members:
            found = (list(member.spec.band_names), member.spec.window_size, member.spec.time_before)
            if found != expected:
                raise SocmapError(f"{member.source}: trained on channels {found[0]}, sample.window_size = {found[1]}, "
                                  f"sample.time_before = {found[2]}, but params.yaml has {expected[0]}, "
                                  f"{expected[1]}, {expected[2]}; rerun `socmap sample`, `split` and `train`")

    def predict(self, patches: np.ndarray) -> np.ndarray:
        """Each member's prediction (g/kg) for a batch of raw patches: [B, C, ws, ws, T] -> float32 [M, B]."""
        return self.model.predict_tensor(torch.from_numpy(np.ascontiguousarray(patches))).float().cpu().numpy()

    def dissimilarity(self, patches: np.ndarray) -> np.ndarray:
        """The dissimilarity index of raw patches [B, C, ws, ws, T] -> [B] (`Applicability.dissimilarity`)."""
        return self.applicability.dissimilarity(patches)

    def shared_scale(self, mean: np.ndarray, kriging_variance: np.ndarray | None) -> np.ndarray:
        """The standard deviation of the error all members share at ensemble means `mean` (g/kg)."""
        return shared_scale(mean, self.calibration, kriging_variance)

    def krige(self, predicted: dict[int, np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Apply each member's kriged residual to its predictions [M, h, w] of every year, in place.

        The residual field does not change with the year: it is kriged once per block, at the pixels
        (centres `x`, `y`, each [h, w]) that any year predicts. Returns the members' mean relative
        kriging variance [h, w] (for the intervals), None without fields.
        """
        if not self.fields:
            return None
        predicted_any = np.logical_or.reduce([np.isfinite(p).all(axis=0) for p in predicted.values()])
        xy = np.stack([x[predicted_any], y[predicted_any]], axis=1)
        variance = np.ones(x.shape)
        variance[predicted_any] = 0.0
        kriged: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a field several members share is kriged once
        for member, field in enumerate(self.fields):
            if id(field) not in kriged:
                kriged[id(field)] = field.krige(xy)
            residual, member_variance = kriged[id(field)]
            variance[predicted_any] += member_variance / len(self.fields)
            for values in predicted.values():
                values[member, predicted_any] = field.correct(values[member, predicted_any], residual,
                                                              member_variance)
        return variance

    def bands(self, predicted: dict[int, np.ndarray], change: tuple[int, int] | None,
              kriging_variance: np.ndarray | None = None,
              dissimilarity: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The output bands of one block: output name -> float32 [bands, h, w], NODATA where unpredicted.

        A year's bands: mean, std, interval lower and upper, and with `dissimilarity` the DI and the AOA
        (1 inside, 0 outside). The change's: the members' mean change and its std, with the shared errors
        the interval of the change and whether it is detectable (1: the interval excludes 0), with
        `dissimilarity` the larger DI of the two years and the AOA of both.

        Args:
            predicted: map year -> the members' predictions [M, h, w] (kriged), NaN where unpredicted.
            change: (first, last) map year of the change map, or None.
            kriging_variance: [h, w] the members' mean relative kriging variance (None: no kriging).
            dissimilarity: map year -> the DI [h, w] of each pixel (None: no DI and AOA bands).
        """
        out = {}
        for year, members in predicted.items():
            ok = np.isfinite(members).all(axis=0)
            mean, std = ensemble_stats(members[:, ok])
            kappa = None if kriging_variance is None else kriging_variance[ok]
            values = [mean, std, *prediction_interval(mean, std, self.calibration, kappa=kappa)]
            if dissimilarity is not None:
                values += self._applicability_bands([dissimilarity[year][ok]])
            out[f"soc_{year}"] = _fill(values, ok)
        if change is not None:
            first, last = change
            difference = predicted[last] - predicted[first]
            ok = np.isfinite(difference).all(axis=0)
            mean, std = ensemble_stats(difference[:, ok])
            values = [mean, std]
            if self.correlation is not None:
                kappa = None if kriging_variance is None else kriging_variance[ok]
                lower, upper = self.correlation.years.interval(mean, predicted[first][:, ok].mean(axis=0),
                                                               predicted[last][:, ok].mean(axis=0), std,
                                                               self.calibration, kappa)
                values += [lower, upper, (lower > 0) | (upper < 0)]
            if dissimilarity is not None:
                values += self._applicability_bands([dissimilarity[first][ok], dissimilarity[last][ok]])
            out[f"soc_change_{first}_{last}"] = _fill(values, ok)
        return out

    def _applicability_bands(self, dissimilarity: list[np.ndarray]) -> list[np.ndarray]:
        """The DI (the largest of those given: a change needs both years' ground) and the AOA of it."""
        largest = np.max(dissimilarity, axis=0)
        return [largest, largest <= self.applicability.threshold]


def _fill(values: list[np.ndarray], ok: np.ndarray) -> np.ndarray:
    """float32 [bands, h, w] of each band's `values` at the pixels `ok`, NODATA elsewhere (and where a value
    is not finite: the std of a single member)."""
    bands = np.full((len(values), *ok.shape), NODATA, dtype=np.float32)
    if ok.any():
        bands[:, ok] = np.stack([np.asarray(v, dtype=np.float64) for v in values])
        bands[~np.isfinite(bands)] = NODATA
    return bands


def ensemble_stats(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (`socmap.metrics.spread`) over the ensemble axis (0), in float64."""
    members = members.astype(np.float64)
    return members.mean(axis=0), spread(members)
