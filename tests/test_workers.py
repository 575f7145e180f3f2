"""Runs side by side in worker processes: the same weights, logs and summary as one after the other; when
they stay in the stage's process."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

from learnable import params_for, run_train
from socmap.checkpoint import load_checkpoint
from socmap.launch import make_accelerator
from socmap.workers import in_order, run_workers

pytestmark = pytest.mark.usefixtures("one_thread")


def test_runs_in_worker_processes_give_the_same_models_and_logs(project, trained, tmp_path):
    sequential, summary, _ = trained  # parallel_runs 1, the epochs seen by a callback
    assert run_train(project, tmp_path, params_for(project, **{"train.parallel_runs": 2})) == summary
    for run in range(2):
        ours, theirs = (load_checkpoint(root / f"models/run_{run}.pt") for root in (tmp_path, sequential))
        assert ours["state_dict"].keys() == theirs["state_dict"].keys()
        assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in ours["state_dict"])
        logged = [pd.read_csv(root / f"metrics/train/plots/metrics/run{run}/stop_r2.tsv", sep="\t")
                  for root in (tmp_path, sequential)]
        pd.testing.assert_frame_equal(logged[0][["step", "stop_r2"]], logged[1][["step", "stop_r2"]])
        assert len(logged[0]) == 8  # every epoch
    assert not list((tmp_path / "resume/train").iterdir())  # the workers' resume states are gone


def test_runs_stay_in_this_process_for_a_callback_or_one_worker(project):
    accelerator = make_accelerator(params_for(project).train)
    cfg = params_for(project, **{"train.parallel_runs": 3}).train
    assert run_workers(cfg, 5, accelerator, None) == 3
    assert run_workers(cfg, 2, accelerator, None) == 2  # no more workers than runs
    assert run_workers(cfg, 5, accelerator, lambda run, record: None) == 1
    assert run_workers(params_for(project).train, 5, accelerator, None) == 1  # parallel_runs 1


def test_a_free_worker_takes_the_next_run_while_an_earlier_one_still_trains():
    """Run 0 finishes only once run 2 has started: a scheduler that waited for run 0 before handing
    run 2 to the worker run 1 left idle would time out here. The results still come in run order, and
    no more than two runs ever run at once."""
    run_2_started = threading.Event()
    lock, running, most = threading.Lock(), [0], [0]

    def work(run: int) -> tuple[int, bool]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if run == 2:
            run_2_started.set()
        waited = run_2_started.wait(timeout=10) if run == 0 else True
        with lock:
            running[0] -= 1
        return run, waited

    with ThreadPoolExecutor(4) as pool:
        results = [future.result() for _, future in in_order(pool, work, range(5), workers=2)]
    assert results == [(0, True), (1, True), (2, True), (3, True), (4, True)]
    assert most[0] == 2
