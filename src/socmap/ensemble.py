"""The ensemble that maps: the run checkpoints, each paired by run id with its kriging field, and the
interval calibration they share.

A map pixel is predicted by every member (`Ensemble.predict`, all members and test-time views in one
batched forward pass: `socmap.stacked`), each member's prediction is
regression-kriged from its own run's training residuals (`Ensemble.krige`) exactly as the evaluate
stage scores it, and the figures of the pixel are the members' mean, their spread (ddof 1, as the
calibration uses) and the calibrated interval around the mean (`Ensemble.bands`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from socmap import paths
from socmap.errors import SocmapError
from socmap.grid import NODATA
from socmap.intervals import prediction_interval
from socmap.io import read_json
from socmap.kriging import ResidualField, load_fields
from socmap.metrics import spread
from socmap.predict import Predictor, load_ensemble
from socmap.stacked import StackedEnsemble


class Ensemble:
    """Members in run order, the kriging field of each member's run (none: no kriging) and the calibration."""

    def __init__(self, members: Sequence[Predictor], calibration: dict, fields: Sequence[ResidualField] = ()):
        self.members = list(members)
        self.calibration = calibration
        if fields and len(fields) != len(self.members):
            raise SocmapError(f"{paths.KRIGING_FIELDS}: kriging fields of {len(fields)} run(s) for "
                              f"{len(self.members)} checkpoints in models/; rerun `socmap evaluate`")
        by_run = dict(enumerate(fields))  # the evaluate stage writes one field per run, in run order
        self.fields = [by_run[member.run] for member in self.members] if fields else []
        self.model = StackedEnsemble(self.members)

    @classmethod
    def load(cls, device: str | torch.device | None = None, models: str | os.PathLike = paths.MODELS,
             calibration: str | os.PathLike = paths.CALIBRATION,
             fields: str | os.PathLike = paths.KRIGING_FIELDS) -> "Ensemble":
        """The checkpoints of the train stage with the calibration and the fields of the evaluate stage."""
        return cls(load_ensemble(models, device=device), read_json(calibration, "evaluate"), load_fields(fields))

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
              kriging_variance: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The output bands of one block: output name -> float32 [bands, h, w], NODATA where unpredicted.

        Args:
            predicted: map year -> the members' predictions [M, h, w] (kriged), NaN where unpredicted.
            change: (first, last) map year of the change map, or None.
            kriging_variance: [h, w] the members' mean relative kriging variance (None: no kriging).
        """
        out = {}
        for year, members in predicted.items():
            bands = np.full((4, *members.shape[1:]), NODATA, dtype=np.float32)
            ok = np.isfinite(members).all(axis=0)
            if ok.any():
                mean, std = ensemble_stats(members[:, ok])
                kappa = None if kriging_variance is None else kriging_variance[ok]
                lower, upper = prediction_interval(mean, std, self.calibration, kappa=kappa)
                bands[:, ok] = np.stack([mean, std, lower, upper])
                bands[~np.isfinite(bands)] = NODATA  # the std of a single member
            out[f"soc_{year}"] = bands
        if change is not None:
            first, last = change
            difference = predicted[last] - predicted[first]
            bands = np.full((2, *difference.shape[1:]), NODATA, dtype=np.float32)
            ok = np.isfinite(difference).all(axis=0)
            if ok.any():
                bands[:, ok] = np.stack(ensemble_stats(difference[:, ok]))
                bands[~np.isfinite(bands)] = NODATA
            out[f"soc_change_{first}_{last}"] = bands
        return out


def ensemble_stats(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (`socmap.metrics.spread`) over the ensemble axis (0), in float64."""
    members = members.astype(np.float64)
    return members.mean(axis=0), spread(members)
