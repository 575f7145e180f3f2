"""One run's training: resume, early stopping, seeded epochs, every model, loss and schedule, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learnable import params_for, run_train, val_rows
from socmap import training
from socmap.metrics import regression_metrics
from socmap.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

def test_same_params_give_the_same_metrics(project, trained, tmp_path):
    _, summary, _ = trained
    assert run_train(project, tmp_path, params_for(project)) == summary


def test_interrupted_training_resumes_and_its_logs_continue(project, trained, tmp_path):
    _, summary, _ = trained
    params = params_for(project, **{"train.checkpoint_every": 2})

    def interrupt(run, record):
        if (run, record["epoch"]) == (1, 4):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(project, tmp_path, params, interrupt)
    assert sorted(p.name for p in (tmp_path / "resume/train").iterdir()) == ["run_0.pt", "run_1.pt"]
    seen = []
    resumed = run_train(project, tmp_path, params, lambda run, r: seen.append((run, r["epoch"])))
    assert seen == [(1, 4), (1, 5), (1, 6), (1, 7)]  # run 0 was done; run 1 goes on after its epoch-3 checkpoint
    assert resumed == summary  # exactly where the uninterrupted training got to
    for run in range(2):
        lines = (tmp_path / f"metrics/train/plots/metrics/run{run}/train_loss.tsv").read_text().splitlines()
        assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(8))


def test_resume_state_from_other_params_is_not_used(project, tmp_path):
    params = params_for(project, **{"train.epochs": 2, "train.num_runs": 1})
    with pytest.raises(KeyboardInterrupt):
        run_train(project, tmp_path, params, lambda run, r: (_ for _ in ()).throw(KeyboardInterrupt),
                  fingerprint="before")
    seen = []
    run_train(project, tmp_path, params, lambda run, r: seen.append(r["epoch"]), fingerprint="after")
    assert seen == [0, 1]


def test_resume_state_of_another_socmap_version_is_not_used(project, tmp_path):
    (tmp_path / "resume/train").mkdir(parents=True)
    torch.save({"format": "socmap-checkpoint/1", "fingerprint": "same"}, tmp_path / "resume/train/run_0.pt")
    seen = []
    run_train(project, tmp_path, params_for(project, **{"train.epochs": 2, "train.num_runs": 1}),
              lambda run, r: seen.append(r["epoch"]))
    assert seen == [0, 1]


def test_early_stopping_ends_a_run_after_patience_epochs_without_progress(project, tmp_path):
    params = params_for(project, **{"train.num_runs": 1, "train.epochs": 30, "train.patience": 2})
    records = []
    summary = run_train(project, tmp_path, params, lambda run, r: records.append(r))
    assert len(records) < 30
    best = max(range(len(records)), key=lambda e: records[e]["stop_r2"])
    assert summary["run0"]["best_epoch"] == best == len(records) - 1 - 2


@pytest.mark.parametrize("overrides", [
    {"train.model": "cnn", "train.loss_type": "l1"},
    {"train.model": "lstm", "train.loss_type": "mse", "train.target_transform": "log"},
    {"train.loss_type": "composite_l1", "train.target_transform": "none", "train.scheduler": "plateau"},
    {"train.loss_type": "composite_l2", "train.scheduler": "cosine", "train.balanced": False},
])
def test_every_model_loss_transform_and_schedule_trains(project, tmp_path, overrides):
    params = params_for(project, **{"train.epochs": 2, "train.num_runs": 1, **overrides})
    summary = run_train(project, tmp_path, params)
    losses = (tmp_path / "metrics/train/plots/metrics/run0/train_loss.tsv").read_text().splitlines()[1:]
    assert float(losses[1].split("\t")[1]) < 0.9 * float(losses[0].split("\t")[1])  # it learns
    predictor = Predictor.load(tmp_path / "models/run_0.pt")
    assert type(predictor.model).__name__ == {"cnn": "SurveyYearCNN", "lstm": "CentrePixelLSTM"}.get(
        params.train.model, "RefittedCovLSTM")
    assert predictor.target.kind == params.train.target_transform
    patches, target = val_rows(project, 0)  # the saved model, its transforms and tta give the logged figures
    assert regression_metrics(target, predictor.predict(patches))["r2"] == pytest.approx(summary["run0"]["val_r2"],
                                                                                         rel=1e-5, abs=1e-6)


def test_epoch_order_is_seeded_by_run_and_epoch(project):
    cfg = params_for(project).train
    targets = np.random.default_rng(0).lognormal(3, 0.6, 300)
    first = training.epoch_order(targets, cfg, run=0, epoch=3)
    np.testing.assert_array_equal(first, training.epoch_order(targets, cfg, run=0, epoch=3))
    assert not np.array_equal(first, training.epoch_order(targets, cfg, run=0, epoch=4))
    assert len(first) >= 300 and set(first.tolist()) == set(range(300))  # every row, plus upsampled extras
    plain = training.epoch_order(targets, params_for(project, **{"train.balanced": False}).train, run=0, epoch=3)
    assert sorted(plain.tolist()) == list(range(300))


def test_augmentation_changes_training_and_can_be_turned_off(project, trained, tmp_path):
    _, summary, _ = trained
    assert params_for(project).train.augment == "dihedral"  # on by default
    plain = run_train(project, tmp_path, params_for(project, **{"train.augment": "none"}))
    assert plain["val_r2_mean"] > 0.4 and plain["val_r2_mean"] != summary["val_r2_mean"]
    assert training.augmenter(params_for(project, **{"train.augment": "none"}).train, 0, 0, 0) is None
