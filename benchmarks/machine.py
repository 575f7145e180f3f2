"""The machine a benchmark ran on, in one line: CPU model, cores and vector extensions (as lscpu shows them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# the extensions that decide how fast the model's kernels run, in the order lscpu lists them
VECTOR_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16")


def cpu_note() -> str:
    """E.g. ``AMD EPYC (family 26 model 2), 2 cores, avx2 fma avx512f ...; torch kernels AVX512``."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    vector = " ".join(flag for flag in VECTOR_FLAGS if flag in flags) or "unknown"
    return (f"{name}, {os.cpu_count()} cores, {vector}; torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)")
