"""The bundle stage: the map's inputs in one folder, the same bytes, and an ensemble read from it alone that
predicts what the stage's own inputs predict; missing inputs say which stage to run."""

from __future__ import annotations

import numpy as np
import pytest

from socmap import paths
from socmap.bundle import bundle
from socmap.ensemble import Ensemble
from socmap.errors import SocmapError


def test_a_bundle_holds_the_maps_inputs_and_maps_as_they_do(mapped, tmp_path):
    root, _ = mapped
    inputs = [root / path for path in paths.MAP_INPUTS]
    names = bundle(root / paths.MODELS, inputs, tmp_path / "soc-ensemble")
    checkpoints = sorted(p.name for p in (root / paths.MODELS).glob("*.pt"))
    assert names == sorted([*checkpoints, "calibration.json", "kriging.npz", "applicability.npz",
                            "error_correlation.json"])
    for source in [*inputs, *(root / paths.MODELS).glob("*.pt")]:
        assert (tmp_path / "soc-ensemble" / source.name).read_bytes() == source.read_bytes(), source.name
    alone = Ensemble.from_bundle(tmp_path / "soc-ensemble", device="cpu")
    staged = Ensemble.load("cpu", root / paths.MODELS, *inputs)
    patches = np.load(root / paths.PATCHES)[:64]
    np.testing.assert_array_equal(alone.predict(patches), staged.predict(patches))
    assert alone.calibration == staged.calibration and alone.applicability.threshold == staged.applicability.threshold
    x, y = np.array([[600_000.0, 610_000.0]]), np.array([[5_400_000.0, 5_390_000.0]])
    ours, theirs = ({2020: staged.predict(patches[:2]).reshape(-1, 1, 2)} for _ in range(2))
    np.testing.assert_array_equal(alone.krige(ours, x, y), staged.krige(theirs, x, y))  # the kriging variance
    np.testing.assert_array_equal(ours[2020], theirs[2020])  # and the kriged members
    assert not np.array_equal(ours[2020], staged.predict(patches[:2]).reshape(-1, 1, 2))  # kriging did something


def test_missing_inputs_name_the_stage_to_run(mapped, tmp_path):
    root, _ = mapped
    with pytest.raises(SocmapError, match=r"no checkpoints; run `socmap train`"):
        bundle(tmp_path / "models", [], tmp_path / "out")
    with pytest.raises(SocmapError, match=r"applicability.npz: not found; run `socmap evaluate`"):
        bundle(root / paths.MODELS, [root / paths.CALIBRATION, tmp_path / "applicability.npz"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
