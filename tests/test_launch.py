"""Several processes: the `accelerate launch` command line, no relaunch for one process, the gather."""

from __future__ import annotations

import logging

from socmap.config import TrainConfig
from socmap.launch import distributed, launch_command, make_accelerator, relaunch

def test_one_process_is_not_relaunched():
    assert relaunch("train", 1, "") is False
    command = launch_command("train", 2, "--main_process_port 29999", "p.yaml")
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command.count("--main_process_port") == 1
    assert command[-5:] == ["-m", "socmap.cli", "--params", "p.yaml", "train"]


def test_one_process_gathers_its_own_object():
    rank, world, gather = distributed()
    assert (rank, world) == (0, 1) and gather({"block": 3}) == [{"block": 3}]


def test_mixed_precision_is_ignored_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="socmap.launch"):
        accelerator = make_accelerator(TrainConfig(mixed_precision="bf16"))
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"
    assert "train.mixed_precision = bf16 is ignored on CPU" in caplog.text
