"""`socmap bundle`: the ensemble the map needs in one folder, the model artifact of dvc.yaml's registry.

The map predicts with the run checkpoints (train stage) and applies what the evaluate stage fitted:
the interval calibration, the kriging fields, the dissimilarity index's reference and the errors
places and years share. A DVC artifact names one path, so this stage copies them into data/ensemble/:
run_{k}.pt, best.pt, calibration.json, kriging.npz, applicability.npz, error_correlation.json, the
same bytes. DVC's cache keeps one copy of identical files, so the folder costs no storage. Read it
with ``Ensemble.from_bundle(folder)``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

from socmap import paths
from socmap.errors import SocmapError
from socmap.io import atomic_path

log = logging.getLogger(__name__)


def bundle(models: Path = paths.MODELS, inputs: Sequence[Path] = paths.MAP_INPUTS,
           out: Path = paths.ENSEMBLE) -> list[str]:
    """Copy the checkpoints under `models` and the evaluate stage's `inputs` into `out`, one folder replaced
    whole; return the names it holds."""
    checkpoints = sorted(Path(models).glob("*.pt"))
    if not checkpoints:
        raise SocmapError(f"{models}: no checkpoints; run `socmap train` (or `dvc pull`) first")
    for path in inputs:
        if not Path(path).is_file():
            raise SocmapError(f"{path}: not found; run `socmap evaluate` (or `dvc pull`) first")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for path in (*checkpoints, *map(Path, inputs)):
            shutil.copyfile(path, tmp / path.name)
    return sorted(path.name for path in Path(out).iterdir())


def main(params) -> None:
    """`socmap bundle`: models/ + data/evaluate/ (calibration, kriging fields, the DI's reference, the
    shared errors) -> data/ensemble/."""
    log.info("%s: %s", paths.ENSEMBLE, ", ".join(bundle()))
