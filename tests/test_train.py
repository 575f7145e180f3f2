"""The train stage on a small learnable data set written in the sample and split stages' file formats."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, tiny_params
from socmap import paths, train, training
from socmap.checkpoint import load_checkpoint
from socmap.config import load_params, params_subset, params_to_dict
from socmap.errors import SocmapError
from socmap.launch import launch_command, make_accelerator, relaunch
from socmap.metrics import regression_metrics
from socmap.models import build_model
from socmap.predict import Predictor, load_ensemble
from socmap.transforms import DIHEDRAL, dihedral, random_dihedral, symmetric_mean

ROWS, BANDS, WINDOW, YEARS = 600, 6, 5, 3
FAST = {"train.epochs": 8, "train.lr": 3e-3, "train.scheduler": "none", "train.batch_size": 64,
        "train.patience": 0, "train.num_runs": 2}


def write_inputs(root: Path, seed: int = 0) -> None:
    """patches.npy, samples.parquet and split.parquet as the sample and split stages write them, with a
    target (g/kg) that depends on a neighbourhood mean in the survey year and on a centre-pixel trend."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=(ROWS, BANDS, 1, 1, YEARS))  # smooth in space, as rasters are
    z = (level + 0.3 * rng.normal(size=(ROWS, BANDS, WINDOW, WINDOW, YEARS))).astype(np.float32)
    scale = np.array([300.0, 1.0, 5.0, 100.0, 40.0, 60.0], dtype=np.float32)  # raw units, unlike each other
    offset = np.array([500.0, 3.0, 10.0, 600.0, 150.0, 550.0], dtype=np.float32)
    patches = z * scale[None, :, None, None, None] + offset[None, :, None, None, None]
    log_soc = 3.0 + 0.4 * level[:, 1, 0, 0, -1] + 0.3 * level[:, 3, 0, 0, 0]
    target = np.exp(log_soc + 0.05 * rng.normal(size=ROWS))
    (root / "data/processed").mkdir(parents=True)
    (root / "data/splits").mkdir(parents=True)
    np.save(root / "data/processed/patches.npy", patches)
    row_id = np.arange(ROWS, dtype=np.int64) * 2 + 7  # not the positions: row_id must be looked up
    pd.DataFrame({"row_id": row_id, "site_id": np.arange(ROWS), "x": rng.uniform(0, 2e4, ROWS),
                  "y": rng.uniform(0, 2e4, ROWS), "year": 2018, "target": target}
                 ).to_parquet(root / "data/processed/samples.parquet")
    test = rng.random(ROWS) < 0.1
    frames = []
    for run in range(3):
        val = (np.random.default_rng(run).random(ROWS) < 0.12) & ~test
        roles = np.where(test, "test", np.where(val, "val", "train"))
        roles[np.flatnonzero(~test & ~val)[:5]] = "buffer"
        frames.append(pd.DataFrame({"row_id": row_id, "run": run, "role": roles}))
    pd.concat(frames).to_parquet(root / "data/splits/split.parquet")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As `socmap train` runs by default (train.threads: 1): fast and steady on a busy machine too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    write_inputs(root)
    return root


def params_for(project: Path, **overrides):
    return tiny_params(project / "world", **{**FAST, **overrides})


def run_train(project: Path, out: Path, params, callback=None, fingerprint: str = "same") -> dict:
    inputs = train.read_inputs(project / paths.PATCHES, project / paths.SAMPLES, project / paths.SPLIT)
    return train.train_all(inputs, params, make_accelerator(params.train), out, fingerprint, callback)


def val_rows(project: Path, run: int) -> tuple[np.ndarray, np.ndarray]:
    patches = np.load(project / paths.PATCHES, mmap_mode="r")
    samples = pd.read_parquet(project / paths.SAMPLES)
    _, val = train.run_rows(samples, pd.read_parquet(project / paths.SPLIT), run)
    return patches[val], samples["target"].to_numpy()[val]


@pytest.fixture(scope="module")
def trained(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    records = []
    summary = run_train(project, out, params_for(project), callback=lambda run, r: records.append((run, r)))
    return out, summary, records


def test_training_learns_and_writes_every_output(trained):
    out, summary, records = trained
    assert summary["val_r2_mean"] > 0.4, summary
    assert [(run, r["epoch"]) for run, r in records] == [(run, e) for run in range(2) for e in range(8)]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["best.pt", "run_0.pt", "run_1.pt"]
    metrics = json.loads((out / "metrics/train/metrics.json").read_text())
    for key in ("val_r2_mean", "val_r2_std", "val_rmse_mean"):
        assert metrics[key] == pytest.approx(summary[key])
    for run in range(2):
        lines = (out / f"metrics/train/plots/metrics/run{run}/val_r2.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["step", "val_r2"]
        assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(8))
    assert list((out / "resume/train").iterdir()) == [], "the resume state is cleared once training completes"


def test_saved_checkpoint_is_the_best_epoch_and_reproduces_its_metrics(project, trained):
    out, summary, records = trained
    best_not_last = 0
    for run, predictor in enumerate(load_ensemble(out / "models")):
        history = [r for k, r in records if k == run]
        best = max(history, key=lambda r: r["val_r2"])
        assert predictor.run == run and predictor.epoch == best["epoch"]
        patches, target = val_rows(project, run)
        again = regression_metrics(target, predictor.predict(patches, batch_size=17))
        for key in ("r2", "rmse", "mae", "rpiq"):
            assert again[key] == pytest.approx(best[f"val_{key}"], rel=1e-5, abs=1e-6)
            assert predictor.val_metrics[key] == pytest.approx(best[f"val_{key}"], rel=1e-12)
        if best["epoch"] != history[-1]["epoch"]:
            best_not_last += 1
            assert again["r2"] != pytest.approx(history[-1]["val_r2"], rel=1e-5)  # not the last epoch's weights
    assert best_not_last, "the test needs a run whose best epoch is not its last"
    best = Predictor.load(out / "models/best.pt")
    assert best.run == summary["best_run"] == int(np.argmax([summary[f"run{k}"]["val_r2"] for k in range(2)]))
    saved = load_checkpoint(out / "models/run_0.pt")
    assert set(saved) >= {"model", "state_dict", "features", "target", "params", "run", "epoch", "val_metrics"}
    assert saved["params"]["train"]["lr"] == 3e-3 and saved["target"]["kind"] == "normalize"
    assert set(saved["params"]) == {"data", "sample", "train"}  # no evaluate.*, map.*: they do not rerun train
    assert tuple(saved["features"]["mean"].shape) == (BANDS, YEARS)


def test_predictor_rejects_patches_of_another_shape(trained):
    out, _, _ = trained
    predictor = Predictor.load(out / "models/run_0.pt")
    with pytest.raises(SocmapError, match=r"run_0.pt: patches of shape \(6, 5, 5, 4\).*\(6, 5, 5, 3\)"):
        predictor.predict(np.zeros((2, 6, 5, 5, 4), dtype=np.float32))
    with pytest.raises(SocmapError, match="no run_"):
        load_ensemble(out / "metrics")


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


def temporary_entries(root: Path) -> list[str]:
    """What an interrupted atomic write leaves in the train stage's DVC outputs and inputs: ``.{name}.*.tmp``."""
    return sorted(str(p.relative_to(root)) for folder in ("models", "resume/train", "metrics/train", "data")
                  for p in (root / folder).rglob(".*.tmp"))


@pytest.mark.slow
def test_a_training_killed_mid_epoch_resumes_to_the_same_models_and_leaves_no_temporary_entry(project, tmp_path):
    params = params_for(project, **{"train.epochs": 6, "train.batch_size": 8})  # epochs of a few tenths of a second
    reference = run_train(project, tmp_path / "reference", params)
    stage_dir = tmp_path / "stage"
    shutil.copytree(project / "data", stage_dir / "data")
    (stage_dir / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params)))
    command = [sys.executable, "-m", "socmap.cli", "train"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        stage = subprocess.Popen(command, cwd=stage_dir, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 180
        while not ((stage_dir / "resume/train/run_0.pt").is_file()
                   and "run 0 epoch 3/6:" in (tmp_path / "killed.log").read_text()):
            assert stage.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no third epoch within 180 s"
            time.sleep(0.01)
        time.sleep(0.1)  # into the fourth epoch
    finally:
        stage.kill()  # SIGKILL: no handler, no cleanup
    assert stage.wait() == -9
    done = load_checkpoint(stage_dir / "resume/train/run_0.pt")["next_epoch"]  # 3, or 2 if killed while writing it
    assert 2 <= done < 6 and not (stage_dir / "models/run_0.pt").exists()
    for stale in ("models/.run_0.pt.k1ll9x00.tmp/run_0.pt", "models/.best.pt.k1ll9x00.tmp/best.pt",
                  "resume/train/.run_1.pt.k1ll9x00.tmp/run_1.pt"):  # as a kill during a write leaves them
        (stage_dir / stale).parent.mkdir(parents=True, exist_ok=True)
        (stage_dir / stale).write_bytes(b"half a checkpoint")
    assert len(temporary_entries(stage_dir)) >= 3

    resumed = subprocess.run(command, cwd=stage_dir, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run 0: resuming after epoch {done} from resume/train/run_0.pt" in resumed.stderr
    assert "run 1: resuming" not in resumed.stderr and resumed.stderr.count("epoch 6/6:") == 2
    assert temporary_entries(stage_dir) == []
    assert list((stage_dir / "resume/train").iterdir()) == []
    for name in ("run_0.pt", "run_1.pt", "best.pt"):  # the very models of the uninterrupted training
        assert (stage_dir / "models" / name).read_bytes() == (tmp_path / "reference/models" / name).read_bytes()
    metrics = json.loads((stage_dir / "metrics/train/metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "reference/metrics/train/metrics.json").read_text()) == reference
    lines = (stage_dir / "metrics/train/plots/metrics/run0/val_r2.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(6))  # replayed once, then continued


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
    best = max(range(len(records)), key=lambda e: records[e]["val_r2"])
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


def test_the_eight_window_symmetries_are_distinct_and_keep_shapes():
    x = torch.randn(2, 3, 5, 5, 4, generator=torch.Generator().manual_seed(1))
    turned = [dihedral(x, k) for k in range(DIHEDRAL)]
    assert all(t.shape == x.shape for t in turned)
    torch.testing.assert_close(turned[0], x)
    for i in range(DIHEDRAL):
        for j in range(i):
            assert not torch.equal(turned[i], turned[j]), (i, j)
    torch.testing.assert_close(dihedral(x, 1)[:, :, 0, :, :], x[:, :, :, -1, :])  # a quarter turn
    torch.testing.assert_close(dihedral(x, 4), x.flip(3))  # a mirror
    torch.testing.assert_close(dihedral(dihedral(x, 1), 3), x)  # four quarter turns are none
    torch.testing.assert_close(x.sum(dim=(2, 3)), turned[5].sum(dim=(2, 3)))  # the same pixels, moved
    torch.testing.assert_close(x[:, :, 2, 2], turned[6][:, :, 2, 2])  # the centre stays


def test_random_symmetries_keep_a_rotation_invariant_batch_and_are_seeded():
    row, col = torch.meshgrid(torch.arange(5.0) - 2, torch.arange(5.0) - 2, indexing="ij")
    radius = (row**2 + col**2)[None, None, :, :, None]  # the same under every turn and mirror
    invariant = radius * torch.randn(64, 6, 1, 1, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(random_dihedral(invariant, torch.Generator().manual_seed(0)), invariant)

    x = torch.randn(64, 6, 5, 5, 3, generator=torch.Generator().manual_seed(3))
    first = random_dihedral(x, torch.Generator().manual_seed(7))
    assert first.shape == x.shape
    torch.testing.assert_close(random_dihedral(x, torch.Generator().manual_seed(7)), first)
    assert not torch.equal(random_dihedral(x, torch.Generator().manual_seed(8)), first)
    used = set()
    for i in range(len(x)):  # every row is one of its own 8 symmetries, and the batch mixes them
        matches = [k for k in range(DIHEDRAL) if torch.equal(dihedral(x[i:i + 1], k), first[i:i + 1])]
        assert len(matches) == 1, i
        used.add(matches[0])
    assert len(used) == DIHEDRAL


@pytest.mark.parametrize("views, invariant_under", [(1, [0]), (2, [0, 2]), (4, [0, 1, 2, 3]), (8, range(8))])
def test_a_symmetric_mean_is_invariant_under_its_symmetries_only(views, invariant_under):
    torch.manual_seed(0)
    model = build_model("refitted_cov_lstm", 6, 5, hidden_size=8).eval()
    x = torch.randn(16, 6, 5, 5, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean = symmetric_mean(model, x, views)
        assert mean.shape == (16,)
        for k in range(DIHEDRAL):
            turned = symmetric_mean(model, dihedral(x, k), views)
            if k in invariant_under:
                torch.testing.assert_close(turned, mean)
            else:
                assert (turned - mean).abs().max() > 1e-4, k
        torch.testing.assert_close(symmetric_mean(model, x, 1), model(x))
        by_hand = torch.stack([model(dihedral(x, k)) for k in range(DIHEDRAL)]).mean(0)
        torch.testing.assert_close(symmetric_mean(model, x, 8), by_hand)


def test_tta_is_stored_with_the_model_and_used_by_its_predictor(project, trained, tmp_path):
    out, summary, _ = trained
    default = Predictor.load(out / "models/run_0.pt")
    assert default.spec.tta == 4 == params_for(project).train.tta
    plain = run_train(project, tmp_path, params_for(project, **{"train.tta": 1, "train.num_runs": 1}))
    single = Predictor.load(tmp_path / "models/run_0.pt")
    assert single.spec.tta == 1
    patches, target = val_rows(project, 0)
    x = torch.from_numpy(np.asarray(patches, dtype=np.float32))
    torch.testing.assert_close(single.predict_tensor(x), single.target.inverse(single.model(single.features(x))))
    assert regression_metrics(target, single.predict(patches))["r2"] == pytest.approx(plain["run0"]["val_r2"],
                                                                                      rel=1e-5)


def test_augmentation_changes_training_and_can_be_turned_off(project, trained, tmp_path):
    _, summary, _ = trained
    assert params_for(project).train.augment  # on by default
    plain = run_train(project, tmp_path, params_for(project, **{"train.augment": False}))
    assert plain["val_r2_mean"] > 0.4 and plain["val_r2_mean"] != summary["val_r2_mean"]
    assert training.augmenter(params_for(project, **{"train.augment": False}).train, 0, 0, 0) is None


def test_kfold_trains_one_model_per_fold_of_the_split(project, tmp_path):
    params = params_for(project, **{"split.mode": "kfold", "split.folds": 3, "train.num_runs": 1,
                                    "train.epochs": 1})
    (tmp_path / "models").mkdir()
    (tmp_path / "models/run_4.pt").write_bytes(b"from an earlier train")
    records = []
    summary = run_train(project, tmp_path, params, lambda run, r: records.append(run))
    assert records == [0, 1, 2]  # the split's 3 folds, not train.num_runs
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pt", "run_0.pt", "run_1.pt",
                                                                        "run_2.pt"]
    assert [Predictor.load(tmp_path / f"models/run_{k}.pt").run for k in range(3)] == [0, 1, 2]
    assert {"run0", "run1", "run2"} <= set(summary)


def test_input_errors_name_the_file_and_the_fix(project, tmp_path):
    with pytest.raises(SocmapError, match="patches.npy: not found; run `socmap sample`"):
        train.read_inputs(tmp_path / "patches.npy", project / paths.SAMPLES, project / paths.SPLIT)
    samples, split = pd.read_parquet(project / paths.SAMPLES), pd.read_parquet(project / paths.SPLIT)
    with pytest.raises(SocmapError, match=r"run 5 has no train rows; runs present: \[0, 1, 2\].*train.num_runs"):
        train.run_rows(samples, split, 5)
    with pytest.raises(SocmapError, match="sample.time_before"):
        run_train(project, tmp_path, params_for(project, **{"sample.time_before": 5}))


def test_one_process_is_not_relaunched():
    assert relaunch("train", 1, "") is False
    command = launch_command("train", 2, "--main_process_port 29999", "p.yaml")
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command.count("--main_process_port") == 1
    assert command[-5:] == ["-m", "socmap.cli", "--params", "p.yaml", "train"]


@pytest.mark.slow
def test_two_cpu_processes_train_one_model_and_log_once(project, tmp_path):
    for name in ("data",):
        os.symlink(project / name, tmp_path / name)
    params = params_for(project, **{"train.num_processes": 2, "train.epochs": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params)))
    done = subprocess.run([sys.executable, "-m", "socmap.cli", "train"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for run in range(2):
        for epoch in (1, 2):
            assert done.stderr.count(f"run {run} epoch {epoch}/2:") == 1, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pt", "run_0.pt", "run_1.pt"]
    for run in range(2):
        predictor = Predictor.load(tmp_path / f"models/run_{run}.pt")
        patches, target = val_rows(project, run)
        assert predictor.val_metrics["n"] == len(target)  # both processes' validation rows, gathered
        again = regression_metrics(target, predictor.predict(patches))
        assert again["r2"] == pytest.approx(predictor.val_metrics["r2"], rel=1e-5, abs=1e-6)
        lines = (tmp_path / f"metrics/train/plots/metrics/run{run}/val_r2.tsv").read_text().splitlines()
        assert [int(line.split("\t")[0]) for line in lines[1:]] == [0, 1]
    metrics = json.loads((tmp_path / "metrics/train/metrics.json").read_text())
    assert {"val_r2_mean", "val_r2_std", "val_rmse_mean"} <= set(metrics)
    assert list((tmp_path / "resume/train").iterdir()) == []


def test_checkpoints_record_exactly_the_params_the_train_stage_declares():
    """A param outside the train stage's list (say evaluate.kriging) must not change a checkpoint's bytes:
    dvc would not rerun train for it, and a fresh clone's `dvc repro` would write other models."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    recorded = params_subset(load_params(ROOT / "params.yaml"), train.STAGE_PARAMS)
    leaves = {f"{section}.{key}" for section, values in recorded.items() for key in values}
    assert leaves == set(declared)
