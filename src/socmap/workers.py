"""The train stage's runs side by side: one worker process per CPU core, each training whole runs.

A run is a small model trained on one thread (`train.threads`); two cores train two runs in about the
time of one. Each run draws its own seeded batches, dropout and symmetries (`socmap.training`), so a
run trained in a worker gives the same weights, bit for bit, as in the stage's own process, and writes
the same resume states. Workers are spawned, not forked: a fork copies torch's thread pools in
whatever state they are. The stage's process prepares each run's rows, hands them to a worker, and
takes back the best epoch and the history, which it logs (dvclive) and saves in run order.

Runs stay in the stage's own process under `accelerate launch` (the processes share each run), on a
GPU (one device), with `train.parallel_runs: 1`, and for an epoch callback (it observes the epochs as
they happen, in this process).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import torch
from accelerate import Accelerator
from dvclive import Live

from socmap.cli import configure_logging
from socmap.config import TrainConfig
from socmap.cores import usable_cores
from socmap.launch import make_accelerator
from socmap.models import ModelSpec
from socmap.training import EpochCallback, Resume, RunData, log_epoch, train_run

Job = tuple[int, RunData, Resume]  # run, its rows, its resume state


def run_workers(cfg: TrainConfig, runs: int, accelerator: Accelerator, callback: EpochCallback | None) -> int:
    """How many processes train the runs: train.parallel_runs (0: one per CPU core), at most the runs;
    1 (this process) under accelerate launch, on a GPU or with an epoch callback."""
    if accelerator.num_processes > 1 or accelerator.device.type != "cpu" or callback is not None:
        return 1
    return max(1, min(cfg.parallel_runs or usable_cores(), runs))


def train_runs(jobs: Iterable[Job], cfg: TrainConfig, spec: ModelSpec, accelerator: Accelerator, live: Live | None,
               callback: EpochCallback | None, workers: int) -> Iterator[tuple[int, RunData, dict]]:
    """Each run's `train_run` result (best epoch and history), in run order: here, or in `workers` processes."""
    if workers == 1:
        for run, data, resume in jobs:
            yield run, data, train_run(run, data.to(accelerator.device), cfg, spec, accelerator, resume, live,
                                       callback)
        return
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("socmap").getEffectiveLevel()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker,
                             initargs=(cfg.threads, level)) as pool:
        for job, future in in_order(pool, partial(train_in_worker, cfg=cfg, spec=spec), jobs, workers):
            yield finished(job, future, live)


def in_order(pool: Executor, work: Callable[[Any], Any], jobs: Iterable,
             workers: int) -> Iterator[tuple[Any, Future]]:
    """Each job with its finished future of ``work(job)`` on `pool`, in the jobs' order.

    At most `workers` jobs run at once, and a worker takes the next job as soon as it is free, not when
    the jobs before its last are done: a job that finishes early waits here (its result, not its
    worker) to be handed on in order. Jobs are taken from `jobs` only as workers free up.
    """
    pending: deque = deque()  # (job, future) in the jobs' order
    jobs = iter(jobs)
    more = True
    while True:
        while more and sum(not future.done() for _, future in pending) < workers:
            job = next(jobs, None)
            if job is None:
                more = False
            else:
                pending.append((job, pool.submit(work, job)))
        if not pending:
            return
        if pending[0][1].done():
            yield pending.popleft()
        else:
            wait([future for _, future in pending if not future.done()], return_when=FIRST_COMPLETED)


def finished(job: Job, future: Future, live: Live | None) -> tuple[int, RunData, dict]:
    """A worker's run, once done, its epochs logged as the stage's own process logs them."""
    run, data, _ = job
    best = future.result()
    if live is not None:
        for record in best["history"]:
            log_epoch(live, run, record)
    return run, data, best


def start_worker(threads: int, level: int) -> None:
    """A worker's torch threads (train.threads) and its log lines, as the stage's."""
    if threads:
        torch.set_num_threads(threads)
    configure_logging(level)


def train_in_worker(job: Job, cfg: TrainConfig, spec: ModelSpec) -> dict:
    run, data, resume = job
    return train_run(run, data, cfg, spec, make_accelerator(cfg), resume)
