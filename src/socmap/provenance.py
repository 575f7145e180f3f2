"""What made an output: content hashes of files, the params a stage declares, the tags of a map.

A resume state carries a fingerprint of the params and inputs it came from, so that a changed run
starts afresh; a map carries the hashes of its checkpoints, params, calibration and kriging fields,
so that a COG found on a shared drive says what produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import socmap
from socmap.config import Params, lookup, params_to_dict

CHUNK_BYTES = 1 << 22  # files are hashed 4 MB at a time: memory stays flat for any patch file


def update_digest(digest: "hashlib._Hash", path: str | os.PathLike) -> None:
    """Feed a file's bytes into `digest`, chunk by chunk."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    update_digest(digest, path)
    return digest.hexdigest()


def fingerprint(values: dict, inputs: Sequence[str | os.PathLike]) -> str:
    """One hash of params `values` (nested as in params.yaml) and of the input files' bytes (which carry what
    earlier stages' params did): a resume state from anything else is not resumed."""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    for path in inputs:
        update_digest(digest, path)
    return digest.hexdigest()


def map_tags(model_paths: Sequence[str | os.PathLike], params: Params, value_params: tuple[str, ...],
             calibration: dict, kriging_path: str | os.PathLike | None = None) -> dict[str, str]:
    """GeoTIFF tags that tell which checkpoints, params (those at `value_params`), calibration and
    kriging fields made a map."""
    models = {Path(p).name: file_sha256(p) for p in model_paths}
    combined = hashlib.sha256("".join(models.values()).encode()).hexdigest()
    raw = params_to_dict(params)
    text = json.dumps({key: lookup(raw, key) for key in value_params}, sort_keys=True)
    return {
        "SOCMAP_VERSION": socmap.__version__,
        "SOCMAP_MODELS": ",".join(f"{name}:{digest[:12]}" for name, digest in models.items()),
        "SOCMAP_MODELS_SHA256": combined,
        "SOCMAP_PARAMS": text,
        "SOCMAP_PARAMS_SHA256": hashlib.sha256(text.encode()).hexdigest(),
        "SOCMAP_CALIBRATION": json.dumps(calibration, sort_keys=True),
        **({"SOCMAP_KRIGING_SHA256": file_sha256(kriging_path)} if kriging_path else {}),
    }
