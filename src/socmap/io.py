"""Atomic writes (an interrupted stage never leaves a half-written file that looks whole), and reading
the JSON files one stage writes for another."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from socmap.errors import SocmapError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories alike: whatever the block writes at the
    temporary path replaces `path` in one rename. The temporary entries of `path`
    that a killed writer left behind (``.{name}.*.tmp``) are removed first, so they
    never linger in a DVC output; a target has one writer at a time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_entries(path):
        shutil.rmtree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_entries(path: str | os.PathLike) -> list[Path]:
    """The temporary folders beside `path` that an `atomic_path` of `path` creates: ``.{name}.{random}.tmp``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    own = re.compile(rf"\.{re.escape(path.name)}\.[^.]+\.tmp")  # not those of `{name}.json` and the like
    return sorted(entry for entry in path.parent.iterdir()
                  if own.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Write `arrays` as one uncompressed ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would append .npz to the temporary name
            np.savez(handle, **arrays)


def read_text(path: str | os.PathLike, missing: str) -> str:
    """A text file's content; a `SocmapError` "{path}: {missing}" when there is no such file."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise SocmapError(f"{path}: {missing}") from None


def read_json(path: str | os.PathLike, stage: str) -> Any:
    """A JSON file that `stage` writes; a `SocmapError` naming the file and the stage to run when it is
    missing or broken."""
    text = read_text(path, f"not found; run `socmap {stage}` first")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SocmapError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rerun `socmap {stage}`") from None


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars and arrays (and paths) into plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
