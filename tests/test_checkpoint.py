"""Checkpoints: plain data written atomically; every file that is not one is a message naming it and the fix."""

from __future__ import annotations

import pytest
import torch

from socmap.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from socmap.errors import SocmapError

CHECKPOINT = {"state_dict": {"lstm.weight": torch.arange(6.0).reshape(2, 3), "head.bias": torch.tensor([0.5])},
              "features": {"mean": torch.zeros(6, 3), "std": torch.ones(6, 3)},
              "target": {"kind": "normalize", "mean": 31.5, "std": 12.25},
              "params": {"train": {"lr": 0.002, "model": "cnn", "launch_args": "", "bands": ["LAI", "LST"]}},
              "run": 2, "epoch": 17, "val_metrics": {"r2": 0.625, "n": 300}, "resume": None}


def test_a_checkpoint_comes_back_as_it_was_saved_with_its_format(tmp_path):
    path = tmp_path / "models" / "run_2.pt"
    save_checkpoint(path, CHECKPOINT)
    assert [p.name for p in path.parent.iterdir()] == ["run_2.pt"]  # no temporary entry left
    loaded = load_checkpoint(path)
    assert set(loaded) == {"format", *CHECKPOINT} and loaded["format"] == FORMAT
    torch.testing.assert_close(loaded["state_dict"], CHECKPOINT["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["features"], CHECKPOINT["features"], rtol=0, atol=0)
    for key in ("target", "params", "run", "epoch", "val_metrics", "resume"):
        assert loaded[key] == CHECKPOINT[key], key


def test_a_corrupt_or_cut_short_checkpoint_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    save_checkpoint(tmp_path / "cut.pt", CHECKPOINT)
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])  # a copy that stopped half-way
    for name in ("garbage.pt", "cut.pt"):
        with pytest.raises(SocmapError, match=rf"{name}: not a loadable checkpoint \(\w+Error; corrupt or cut "
                                              r"short\?\); rerun `socmap train` \(or `dvc pull` it again\)$"):
            load_checkpoint(tmp_path / name)


def test_a_missing_checkpoint_says_which_stage_writes_it(tmp_path):
    with pytest.raises(SocmapError, match=r"models/run_0\.pt: checkpoint not found; run `socmap train` "
                                          r"\(or `dvc pull`\) first"):
        load_checkpoint(tmp_path / "models" / "run_0.pt")


@pytest.mark.parametrize("content, found", [({"format": "socmap-checkpoint/1", "state_dict": {}},
                                             "socmap-checkpoint/1"),
                                            ({"state_dict": {}}, "no format"), (torch.zeros(3), "no format")])
def test_a_file_of_another_format_says_what_it_found(tmp_path, content, found):
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(SocmapError, match=rf"other\.pt: not a {FORMAT} file \({found}: another socmap version or "
                                          r"another program wrote it\); retrain with `socmap train`"):
        load_checkpoint(tmp_path / "other.pt")


class OpensAFile:
    """Unpickled, it would create a file: code a checkpoint from a shared remote must never run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_with_a_pickled_object_is_refused_unopened(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": FORMAT, "state_dict": {}, "extra": OpensAFile(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(SocmapError, match=r"evil\.pt: not a loadable checkpoint: it holds a pickled io\.open, which "
                                          r"socmap never writes, and unpickling it could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    assert torch.load(tmp_path / "evil.pt", weights_only=False)  # the object was really there ...
    assert marker.exists()  # ... and does what it says when unpickled
