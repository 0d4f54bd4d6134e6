"""Training the folds of a run: one after another, or several at once in worker
processes, one per CPU core, with the teachers queued first."""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import os
import signal
from typing import Iterator

import paddle

from utils.data.splits import FoldData
from utils.distill.methods import needs_teacher
from utils.pipeline.folds import FoldInputs, FoldResult, run_fold, train_fold_teacher
from utils.runtime.config import Config
from utils.runtime.distributed import world_size
from utils.runtime.process import cpu_count, die_with_parent


def parallel_fold_count(cfg: Config, device: str, num_folds: int) -> int:
    """How many folds train at once. On CPU, one single-threaded process per core
    beats one process with more threads (docs/speed-on-cpu.md, "Speed on CPU"); a GPU trains one fold."""
    if world_size() > 1:
        return 1  # a data-parallel job trains one fold at a time, on all its processes
    requested = cfg.runtime.parallel_folds or (1 if device == "gpu" else cpu_count())
    return max(1, min(requested, num_folds))


def _init_fold_worker(device: str) -> None:
    # Progress bars of folds running side by side would overwrite each other.
    os.environ["TQDM_DISABLE"] = "1"
    die_with_parent()
    # An interrupted run ends its workers with SIGTERM: without Paddle's own handler they stop
    # quietly, where it would print a C++ "Termination signal" report for each.
    paddle.disable_signal_handler()
    paddle.set_device(device)


def _worker_pool(workers: int, device: str) -> multiprocessing.pool.Pool:
    """The fold processes, started with Ctrl-C ignored (a disposition they keep): the run's own
    process answers it, and ends them; otherwise each would print its own traceback."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return multiprocessing.get_context("spawn").Pool(workers, _init_fold_worker, (device,))
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _workers_killed_on_interrupt() -> Iterator[None]:
    """An interrupted run (Ctrl-C, SIGTERM, a failed fold) ends its fold workers with SIGKILL: they hold
    nothing that is not on disk already, and a worker still importing Paddle would answer the pool's
    SIGTERM with a 12-line C++ report, before its handler is turned off."""
    try:
        yield
    except BaseException:
        for worker in multiprocessing.active_children():
            worker.kill()
        raise


def run_folds(cfg: Config, folds: list[FoldData], workers: int, device: str, inputs: FoldInputs) -> list[FoldResult]:
    """run_fold for every fold, in order; several at once in worker processes when workers > 1.
    A fold that fails stops the run: its exception is raised here, never swallowed."""
    if workers == 1:
        return [run_fold(cfg, fold, inputs) for fold in folds]
    # multiprocessing.Pool, not ProcessPoolExecutor: leaving its block on an interrupt terminates the
    # workers at once, where the executor would wait for the folds they are training to finish.
    with _worker_pool(workers, device) as pool, _workers_killed_on_interrupt():
        students: dict[int, multiprocessing.pool.AsyncResult] = {}

        def start_student(fold: FoldData, student_cfg: Config) -> None:
            students[fold.fold] = pool.apply_async(run_fold, (student_cfg, fold, inputs))

        if needs_teacher(cfg.distill.kd):
            # Teachers are separate tasks, queued first, and each fold's student follows as soon as its
            # teacher is cached: 5 whole folds on 2 cores would leave one core idle for the last fold.
            # The student must not train the teacher it finds cached once more.
            student_cfg = cfg.replace(retrain_teacher=False)
            teachers = [pool.apply_async(train_fold_teacher, (cfg, fold, inputs),
                                         callback=lambda _, fold=fold: start_student(fold, student_cfg))
                        for fold in folds]
            for teacher in teachers:
                teacher.get()  # the callbacks have run once every get() returned
        else:
            for fold in folds:
                start_student(fold, cfg)
        results = [students[fold.fold].get() for fold in folds]
        # Let the workers exit on their own: Paddle's signal handlers can keep a worker alive
        # through the SIGTERM with which leaving the block would otherwise end it.
        pool.close()
        pool.join()
        return results
