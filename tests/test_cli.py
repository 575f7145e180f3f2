"""`socmap <stage>` as a user runs it: the help, one-line errors with exit code 2, Ctrl-C with exit code 130."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import yaml

from conftest import ROOT
from socmap.cli import STAGES

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "200"}  # wide enough that --help wraps no line


def socmap(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run `socmap ARGS` in `cwd` as a user would."""
    return subprocess.run([sys.executable, "-m", "socmap.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=120)


def test_help_lists_every_stage_of_dvc_yaml(tmp_path):
    done = socmap("--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    for name, (_, help_text) in STAGES.items():
        assert re.search(rf"^ +{name} +{re.escape(help_text)}$", done.stdout, re.MULTILINE), name
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
    commands = [stage.get("cmd") or stage["do"]["cmd"] for stage in stages]
    assert sorted(cmd.split()[1] for cmd in commands) == sorted(STAGES)


def test_a_params_error_is_one_line_on_stderr_and_exit_code_2(tmp_path):
    params = (ROOT / "params.yaml").read_text()
    assert params.count("loss_type: composite_l2") == 1
    (tmp_path / "params.yaml").write_text(params.replace("loss_type: composite_l2", "loss_type: huber"))
    done = socmap("train", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("socmap train: error: params.yaml: train.loss_type = 'huber': must be one of l1, mse, "
                           "composite_l1, composite_l2\n")


def test_an_input_error_of_a_stage_is_one_line_naming_what_to_fix(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["rasters"]["dir"] = "nowhere/rasters"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    done = socmap("--params", "p.yaml", "sample", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "socmap sample: error: data.rasters.dir = 'nowhere/rasters': no such directory\n"
    assert not (tmp_path / "data").exists()


def test_ctrl_c_stops_a_stage_with_exit_code_130_and_no_half_written_output(tmp_path):
    """The default simulated Bavaria takes seconds to write: interrupted while its rasters are being written."""
    command = [sys.executable, "-m", "socmap.cli", "--params", str(ROOT / "params.yaml"), "simulate",
               "--world", "synthetic"]
    # Ctrl-C's default action, as in a terminal: a test run started in the background (`make test &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    stage = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("data/.synthetic.*.tmp/synthetic/rasters/*/*.tif")):
            assert stage.poll() is None, stage.communicate()
            assert time.monotonic() < deadline, "simulate wrote no raster within 120 s"
            time.sleep(0.01)
        stage.send_signal(signal.SIGINT)
        stdout, stderr = stage.communicate(timeout=60)
    finally:
        stage.kill()
    assert stage.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "socmap simulate: interrupted" and "Traceback" not in stderr
    assert os.listdir(tmp_path / "data") == []  # neither the half-written world nor its temporary folder
