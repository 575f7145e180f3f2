"""Provenance: file hashes in chunks, the resume fingerprint, the tags that say what made a map."""

from __future__ import annotations

import hashlib
import json

from socmap import provenance
from socmap.config import Params, params_subset, replace
from socmap.provenance import file_sha256, fingerprint, map_tags

KEYS = ("data.bands", "train")


def test_file_sha256_reads_in_chunks_and_matches_hashlib(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CHUNK_BYTES", 7)
    data = bytes(range(256)) * 3
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()


def test_fingerprint_follows_the_values_and_the_input_bytes_only(tmp_path):
    (tmp_path / "a").write_bytes(b"patches")
    params = Params()
    base = fingerprint(params_subset(params, KEYS), [tmp_path / "a"])
    assert fingerprint(params_subset(replace(params, **{"train.lr": 0.01}), KEYS), [tmp_path / "a"]) != base
    assert fingerprint(params_subset(replace(params, **{"evaluate.bootstrap": 5}), KEYS), [tmp_path / "a"]) == base
    (tmp_path / "a").write_bytes(b"patches, other")
    assert fingerprint(params_subset(params, KEYS), [tmp_path / "a"]) != base


def test_map_tags_name_the_checkpoints_the_value_params_and_the_calibration(tmp_path):
    models = []
    for run in range(2):
        models.append(tmp_path / f"run_{run}.pt")
        models[-1].write_bytes(f"weights {run}".encode())
    (tmp_path / "kriging.npz").write_bytes(b"fields")
    tags = map_tags(models, Params(), ("map.years", "sample.window_size"), {"interval": 0.9}, tmp_path / "kriging.npz")
    digests = [hashlib.sha256(f"weights {run}".encode()).hexdigest() for run in range(2)]
    assert tags["SOCMAP_MODELS"] == f"run_0.pt:{digests[0][:12]},run_1.pt:{digests[1][:12]}"
    assert tags["SOCMAP_MODELS_SHA256"] == hashlib.sha256("".join(digests).encode()).hexdigest()
    assert json.loads(tags["SOCMAP_PARAMS"]) == {"map.years": [2023], "sample.window_size": 5}
    assert tags["SOCMAP_PARAMS_SHA256"] == hashlib.sha256(tags["SOCMAP_PARAMS"].encode()).hexdigest()
    assert json.loads(tags["SOCMAP_CALIBRATION"]) == {"interval": 0.9}
    assert tags["SOCMAP_KRIGING_SHA256"] == hashlib.sha256(b"fields").hexdigest()
    assert "SOCMAP_KRIGING_SHA256" not in map_tags(models, Params(), ("map.years",), {})
