"""Predictions in g/kg from checkpoints: the best epoch's weights, the input check, the stored test-time views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learnable import BANDS, YEARS, params_for, run_train, val_rows
from socmap.checkpoint import load_checkpoint
from socmap.errors import SocmapError
from socmap.metrics import regression_metrics
from socmap.predict import Predictor, load_ensemble

pytestmark = pytest.mark.usefixtures("one_thread")

def test_saved_checkpoint_is_the_best_epoch_and_reproduces_its_metrics(project, tmp_path):
    records = []  # a high learning rate: a noisy curve, whose best epoch is not the last in some run
    summary = run_train(project, tmp_path, params_for(project, **{"train.lr": 0.03}), lambda run, r: records.append((run, r)))
    out = tmp_path
    best_not_last = 0
    for run, predictor in enumerate(load_ensemble(out / "models")):
        history = [r for k, r in records if k == run]
        best = max(history, key=lambda r: r["stop_r2"])
        assert predictor.run == run and predictor.epoch == best["epoch"]
        patches, target = val_rows(project, run, "stop")
        again = regression_metrics(target, predictor.predict(patches, batch_size=17))
        for key in ("r2", "rmse", "mae", "rpiq"):
            assert again[key] == pytest.approx(best[f"stop_{key}"], rel=1e-5, abs=1e-6)
        patches, target = val_rows(project, run)  # the validation rows, which chose nothing
        held_out = regression_metrics(target, predictor.predict(patches))
        assert held_out["r2"] == pytest.approx(predictor.val_metrics["r2"], rel=1e-5, abs=1e-6)
        assert held_out["r2"] == pytest.approx(summary[f"run{run}"]["val_r2"], rel=1e-5, abs=1e-6)
        if best["epoch"] != history[-1]["epoch"]:
            best_not_last += 1
            assert again["r2"] != pytest.approx(history[-1]["stop_r2"], rel=1e-5)  # not the last epoch's weights
    assert best_not_last, "the test needs a run whose best epoch is not its last"
    best = Predictor.load(out / "models/best.pt")
    assert best.run == summary["best_run"] == int(np.argmax([summary[f"run{k}"]["val_r2"] for k in range(2)]))
    saved = load_checkpoint(out / "models/run_0.pt")
    assert set(saved) >= {"model", "state_dict", "features", "target", "params", "run", "epoch", "val_metrics"}
    assert saved["params"]["train"]["lr"] == 0.03 and saved["target"]["kind"] == "normalize"
    assert set(saved["params"]) == {"data", "sample", "train"}  # no evaluate.*, map.*: they do not rerun train
    assert tuple(saved["features"]["mean"].shape) == (BANDS, YEARS)


def test_predictor_rejects_patches_of_another_shape(trained):
    out, _, _ = trained
    predictor = Predictor.load(out / "models/run_0.pt")
    with pytest.raises(SocmapError, match=r"run_0.pt: patches of shape \(6, 5, 5, 4\).*\(6, 5, 5, 3\)"):
        predictor.predict(np.zeros((2, 6, 5, 5, 4), dtype=np.float32))
    with pytest.raises(SocmapError, match="no run_"):
        load_ensemble(out / "metrics")


def test_tta_is_stored_with_the_model_and_used_by_its_predictor(project, trained, tmp_path):
    out, summary, _ = trained
    default = Predictor.load(out / "models/run_0.pt")
    assert default.spec.views == (0, 1, 2, 3) and params_for(project).train.augment == "dihedral"
    plain = run_train(project, tmp_path, params_for(project, **{"train.tta": 1, "train.num_runs": 1}))
    single = Predictor.load(tmp_path / "models/run_0.pt")
    assert single.spec.views == (0,)
    patches, target = val_rows(project, 0)
    x = torch.from_numpy(np.asarray(patches, dtype=np.float32))
    torch.testing.assert_close(single.predict_tensor(x), single.target.inverse(single.model(single.features(x))))
    assert regression_metrics(target, single.predict(patches))["r2"] == pytest.approx(plain["run0"]["val_r2"],
                                                                                      rel=1e-5)
