"""Several processes and devices: `socmap <stage>` re-executes itself under `accelerate launch`; the
accelerator a stage trains with; the gather that brings every process's results to the main one.

On CPU this is the recipe that forms a gloo process group of N processes here
(``accelerate launch --cpu`` starts only one):

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N --num_machines 1 \
        --mixed_precision no --dynamo_backend no -m socmap.cli STAGE

On a machine with CUDA the same command without ACCELERATE_USE_CPU, one process
per GPU. `launch_args` (e.g. ``--num_machines 2 --machine_rank 0 --main_process_ip …``)
are added after these flags, so they override them. An environment marker
keeps the launched processes from launching again.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
import yaml

from socmap.config import Params, TrainConfig, params_to_dict
from socmap.errors import SocmapError

log = logging.getLogger(__name__)

MARKER = "SOCMAP_LAUNCHED"


def launched() -> bool:
    """Whether this process is one of N already: started by `relaunch`, or by a launcher of its own
    (`accelerate launch` or `torchrun` by hand set LOCAL_RANK)."""
    return os.environ.get(MARKER) == "1" or "LOCAL_RANK" in os.environ


def launch_command(stage: str, num_processes: int, launch_args: str, params_path: str) -> list[str]:
    """The `accelerate launch` command line that runs `socmap --params params_path stage` N times."""
    extra = shlex.split(launch_args)
    port = [] if "--main_process_port" in " ".join(extra) else ["--main_process_port", str(_free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", *port, *extra,
            "-m", "socmap.cli", "--params", params_path, stage]


def relaunch(stage: str, num_processes: int, launch_args: str = "", params: Params | None = None) -> bool:
    """Run `stage` in `num_processes` processes under `accelerate launch` and wait for them.

    Returns False (and does nothing) when one process is asked for or this process is
    already one of the launched ones; the caller then does the work itself. Returns True
    when the launched processes did the work. `params` are handed to them through a
    temporary params file; without them, the `--params` file this CLI was started with.
    """
    if num_processes <= 1 or launched():
        return False
    env = {**os.environ, MARKER: "1"}
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    with tempfile.TemporaryDirectory(prefix="socmap-launch-") as tmp:
        if params is not None:
            params_path = str(Path(tmp) / "params.yaml")
            Path(params_path).write_text(yaml.safe_dump(params_to_dict(params), sort_keys=False))
        else:
            params_path = _cli_params_path()
        command = launch_command(stage, num_processes, launch_args, params_path)
        log.info("%s: %d processes: %s", stage, num_processes, shlex.join(command))
        process = subprocess.Popen(command, env=env)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # pass Ctrl-C on: the launcher stops every worker, then we stop
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    if code != 0:
        raise SocmapError(f"{stage}: the {num_processes} processes under `accelerate launch` failed (exit code "
                          f"{code}); see their messages above, or set {stage}.num_processes: 1")
    return True


def _cli_params_path() -> str:
    """The `--params` value of the `socmap` command line this process runs (default params.yaml)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--params="):
            return arg.split("=", 1)[1]
    return "params.yaml"


def _free_port() -> int:
    """A TCP port free right now, so that two launches at once do not collide on 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_accelerator(cfg: TrainConfig):
    """The accelerate `Accelerator`: CPU unless CUDA is there; mixed precision (train.mixed_precision) on
    GPU only."""
    from accelerate import Accelerator  # accelerate only in the stages that train

    cuda = torch.cuda.is_available()
    if cfg.mixed_precision != "fp32" and not cuda:
        log.warning("train.mixed_precision = %s is ignored on CPU", cfg.mixed_precision)
    mixed = cfg.mixed_precision if cuda and cfg.mixed_precision != "fp32" else "no"
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def distributed() -> tuple[int, int, Callable[[object], list | None]]:
    """This process's rank, the number of processes, and a function gathering one object per process
    onto rank 0 (None on the other ranks)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1, lambda obj: [obj]
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def gather(obj: object) -> list | None:
        received = [None] * world if rank == 0 else None
        torch.distributed.gather_object(obj, received, dst=0)
        return received

    return rank, world, gather
