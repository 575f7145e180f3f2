"""The train stage on a small learnable data set: every output, kfold, input errors, a kill -9, two processes."""


from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from learnable import params_for, run_train, val_rows
from socmap import paths, train
from socmap.checkpoint import load_checkpoint
from socmap.config import load_params, params_to_dict, replace
from socmap.errors import SocmapError
from socmap.metrics import regression_metrics
from socmap.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_learns_and_writes_every_output(trained):
    out, summary, records = trained
    assert summary["val_r2_mean"] > 0.4, summary
    assert [(run, r["epoch"]) for run, r in records] == [(run, e) for run in range(2) for e in range(8)]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["best.pt", "run_0.pt", "run_1.pt"]
    metrics = json.loads((out / "metrics/train/metrics.json").read_text())
    for key in ("val_r2_mean", "val_r2_std", "val_rmse_mean"):
        assert metrics[key] == pytest.approx(summary[key])
    for run in range(2):
        lines = (out / f"metrics/train/plots/metrics/run{run}/stop_r2.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["step", "stop_r2"]
        assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(8))
    curves = pd.read_csv(out / "plots/train/curves.csv")  # every run's epochs in one file, for any run count
    assert curves.columns.tolist() == ["run", "epoch", "train_loss", "stop_loss", "lr", "stop_r2", "stop_mae",
                                       "stop_rmse", "stop_rpiq", "stop_bias"]  # the stop rows choose the epoch
    assert list(zip(curves["run"], curves["epoch"])) == [(run, r["epoch"]) for run, r in records]
    assert curves["stop_r2"].tolist() == pytest.approx([r["stop_r2"] for _, r in records], rel=1e-12)
    assert list((out / "resume/train").iterdir()) == [], "the resume state is cleared once training completes"


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
    lines = (stage_dir / "metrics/train/plots/metrics/run0/stop_r2.tsv").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(6))  # replayed once, then continued


def test_kfold_trains_every_run_of_the_split(project, tmp_path):
    params = params_for(project, **{"split.mode": "kfold", "split.folds": 3, "train.num_runs": 1,
                                    "train.epochs": 1})
    (tmp_path / "models").mkdir()
    (tmp_path / "models/run_4.pt").write_bytes(b"from an earlier train")
    records = []
    summary = run_train(project, tmp_path, params, lambda run, r: records.append(run))
    assert records == [0, 1, 2]  # the split's 3 folds × 1 run each, not train.num_runs
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
        lines = (tmp_path / f"metrics/train/plots/metrics/run{run}/stop_r2.tsv").read_text().splitlines()
        assert [int(line.split("\t")[0]) for line in lines[1:]] == [0, 1]
    metrics = json.loads((tmp_path / "metrics/train/metrics.json").read_text())
    assert {"val_r2_mean", "val_r2_std", "val_rmse_mean"} <= set(metrics)
    assert list((tmp_path / "resume/train").iterdir()) == []


def test_checkpoints_record_exactly_the_params_the_train_stage_declares():
    """A param outside the train stage's list (say evaluate.kriging) must not change a checkpoint's bytes:
    dvc would not rerun train for it, and a fresh clone's `dvc repro` would write other models. The stage
    declares its watch params too (setting one reruns it), which no checkpoint records."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    recorded = train.recorded_params(load_params(ROOT / "params.yaml"))
    leaves = {f"{section}.{key}" for section, values in recorded.items() for key in values}
    assert leaves | set(train.WATCH_PARAMS) == set(declared) and not leaves & set(train.WATCH_PARAMS)
    watched = replace(load_params(ROOT / "params.yaml"), **{"train.monitor": True})
    assert train.recorded_params(watched) == recorded  # a watched run resumes an unwatched one, and back


def test_monitoring_writes_a_report_of_the_machine_outside_the_outputs_and_changes_no_output(project, tmp_path):
    params = params_for(project, **{"train.epochs": 2})
    run_train(project, tmp_path / "plain", params)
    watched = replace(params, **{"train.monitor": True})
    run_train(project, tmp_path / "watched", watched)
    outputs = ["models/run_0.pt", "models/run_1.pt", "models/best.pt", "metrics/train/metrics.json",
               "plots/train/curves.csv", "metrics/train/plots/metrics/run1/stop_r2.tsv"]
    for name in outputs:
        assert (tmp_path / "watched" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert not (tmp_path / "plain/monitor").exists()
    report = (tmp_path / "watched/monitor/train/report.html").read_text()
    assert "system/cpu/usage (%)" in report and "run1/stop_r2" in report
    summary = json.loads((tmp_path / "watched/monitor/train/metrics.json").read_text())
    assert summary["step"] == 3 and 0 < summary["system"]["ram"]["usage (GB)"]  # 4 epochs: steps 0 to 3
