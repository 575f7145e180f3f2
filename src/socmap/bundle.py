"""`socmap bundle`: the ensemble the map needs in one folder, the model artifact of dvc.yaml's registry.

The map predicts with the run checkpoints (train stage) and applies the interval calibration and the
kriging fields (evaluate stage); a DVC artifact names one path, so this stage copies the three into
data/ensemble/: run_{k}.pt, best.pt, calibration.json, kriging.npz, the same bytes. DVC's cache keeps
one copy of identical files, so the folder costs no storage. Read it as the map stage reads its inputs:
``Ensemble.load(models=folder, calibration=folder / "calibration.json", fields=folder / "kriging.npz")``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from socmap import paths
from socmap.errors import SocmapError
from socmap.io import atomic_path

log = logging.getLogger(__name__)


def bundle(models: Path = paths.MODELS, calibration: Path = paths.CALIBRATION, fields: Path = paths.KRIGING_FIELDS,
           out: Path = paths.ENSEMBLE) -> list[str]:
    """Copy the checkpoints under `models` and the `calibration` and kriging `fields` files into `out`, one
    folder replaced whole; return the names it holds."""
    checkpoints = sorted(Path(models).glob("*.pt"))
    if not checkpoints:
        raise SocmapError(f"{models}: no checkpoints; run `socmap train` (or `dvc pull`) first")
    for path in (calibration, fields):
        if not Path(path).is_file():
            raise SocmapError(f"{path}: not found; run `socmap evaluate` (or `dvc pull`) first")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for path in (*checkpoints, Path(calibration), Path(fields)):
            shutil.copyfile(path, tmp / path.name)
    return sorted(path.name for path in Path(out).iterdir())


def main(params) -> None:
    """`socmap bundle`: models/ + data/evaluate/{calibration.json, kriging.npz} -> data/ensemble/."""
    log.info("%s: %s", paths.ENSEMBLE, ", ".join(bundle()))
