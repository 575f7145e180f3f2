"""Atomic writes: a failed or killed block never leaves a half-written output or a temporary entry behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from socmap.io import atomic_path, stale_entries, write_json


class Interrupted(Exception):
    """Stands for whatever stops a stage mid-write."""


def test_a_file_is_replaced_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(Interrupted):
        with atomic_path(target) as tmp:
            assert tmp.name == "report.json" and tmp.parent.parent == tmp_path
            assert tmp.parent.name.startswith(".report.json.") and tmp.parent.name.endswith(".tmp")
            tmp.write_text("half")
            raise Interrupted
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_directory_is_replaced_whole_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "plots"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(Interrupted):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "new.png").write_bytes(b"half")
            raise Interrupted
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]
    assert [p.name for p in target.iterdir()] == ["old.png"]
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]
    assert [p.name for p in target.iterdir()] == ["new.png"] and (target / "new.png").read_bytes() == b"new"


def test_a_missing_parent_is_created(tmp_path):
    target = tmp_path / "metrics" / "train" / "metrics.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}"


KILLED_WRITER = """
import os, sys
from socmap.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), 9)
"""


def test_the_temporary_entry_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "run_0.pt"
    target.write_bytes(b"epoch 3")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True)
    assert killed.returncode == -9
    left = stale_entries(target)
    assert len(left) == 1 and (left[0] / "run_0.pt").read_bytes() == b"half a checkpoint"
    assert target.read_bytes() == b"epoch 3"  # the half-written file never took the name
    others = [tmp_path / ".run_0.pt.json.k2j4h1x9.tmp", tmp_path / ".run_1.pt.k2j4h1x9.tmp"]  # other targets'
    for other in others:
        other.mkdir()
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"epoch 4")
    assert target.read_bytes() == b"epoch 4"
    assert stale_entries(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([o.name for o in others] + ["run_0.pt"])


def test_stale_entries_match_only_the_target_s_own_temporary_folders(tmp_path):
    (tmp_path / ".models.ab_c9x2z.tmp").mkdir()
    (tmp_path / ".models.json.ab_c9x2z.tmp").mkdir()  # models.json's
    (tmp_path / ".models.q1w2e3r4.tmp").write_text("a file, not a folder atomic_path made")
    (tmp_path / "models.ab_c9x2z.tmp").mkdir()  # not hidden
    assert stale_entries(tmp_path / "models") == [tmp_path / ".models.ab_c9x2z.tmp"]
    assert stale_entries(tmp_path / "nowhere" / "models") == []


def test_write_json_writes_numpy_values_as_plain_json(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"r2": np.float64(0.75), "n": np.int64(12), "half": np.float32(0.5),
                      "counts": np.array([[1, 2], [3, 4]]), "ok": np.bool_(True), "where": Path("data/maps")})
    text = path.read_text()
    assert text.endswith("}\n") and '  "r2": 0.75,' in text.splitlines()
    assert json.loads(text) == {"r2": 0.75, "n": 12, "half": 0.5, "counts": [[1, 2], [3, 4]], "ok": True,
                                "where": "data/maps"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_refuses_an_object_it_cannot_write_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"r2": 0.5})
    with pytest.raises(TypeError, match="cannot write set as JSON"):
        write_json(path, {"r2": {0.5}})
    assert json.loads(path.read_text()) == {"r2": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
