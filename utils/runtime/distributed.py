"""Data-parallel training on paddle.distributed: under
`python -m paddle.distributed.launch --nproc_per_node N main.py ...` every process
(rank) trains the same fold on its share of each batch, the gradients are averaged,
and rank 0 alone writes files. In a single process these helpers are no-ops."""
from __future__ import annotations

import itertools
import os
import time
from typing import Optional

import numpy as np

from utils.runtime.process import die_with_parent, launched


def init_distributed(timeout_minutes: float = 60.0) -> None:
    """Join the job's process group (gloo on CPU, NCCL on GPUs), once, when launched. A
    barrier that waits more than `timeout_minutes` for the other processes fails, and so does
    an NCCL collective (Paddle's PADDLE_PG_TIMEOUT, which a user's own value overrides); see
    barrier and collective_timeout."""
    import paddle.distributed as dist

    if launched() and not dist.is_initialized():
        # A rank whose launcher is killed (kill -9) stops with it instead of training on alone.
        die_with_parent()
        # A rank whose peer died is aborted by gloo: without Paddle's handler it ends without a
        # C++ stack dump in its workerlog (the launcher still says which rank failed).
        import paddle

        paddle.disable_signal_handler()
        os.environ.setdefault("PADDLE_PG_TIMEOUT", str(int(timeout_minutes * 60_000)))
        dist.init_parallel_env()


# How gloo, Paddle's stores and barrier word a wait that ran out of time.
_TIMEOUT_WORDS = ("timed out", "timeout")
# Paddle builds its CPU (gloo) process group with gloo's default timeout, which
# PADDLE_PG_TIMEOUT does not reach: measured, an all_reduce gave up after 30.0 s with
# PADDLE_PG_TIMEOUT at 10 minutes.
GLOO_TIMEOUT_SECONDS = 30
_barriers = itertools.count()


def collective_timeout(error: BaseException) -> Optional[str]:
    """One line for a data-parallel process that gave up waiting for the others, with what to
    change; None for any other error."""
    text = str(error).lower()
    if not launched() or not any(word in text for word in _TIMEOUT_WORDS):
        return None
    process = f"process {os.environ.get('PADDLE_TRAINER_ID', '?')}"
    if "gloo" in text:  # a collective inside a step: gloo's own limit, which no option changes
        return (f"{process} waited more than {GLOO_TIMEOUT_SECONDS} s for the other processes of the data-parallel "
                "job inside a training step and gave up (gloo's fixed limit on a CPU): give the job the machine to "
                "itself; finished folds and epochs are saved, so the same command continues the run")
    minutes = int(os.environ.get("PADDLE_PG_TIMEOUT", "0")) / 60_000
    return (f"{process} waited more than {minutes:g} minutes for the other processes of the data-parallel job and "
            "gave up: on a slow or loaded machine raise --dist_timeout_minutes, or give the job the machine to "
            "itself; finished folds and epochs are saved, so the same command continues the run")


def world_size() -> int:
    import paddle.distributed as dist

    return dist.get_world_size() if launched() and dist.is_initialized() else 1


def rank() -> int:
    import paddle.distributed as dist

    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """The process that writes files and prints progress."""
    return rank() == 0


def barrier() -> None:
    """Every process waits here for the others, for up to --dist_timeout_minutes (rank 0 may be
    writing a run's outputs or a checkpoint meanwhile). Not paddle.distributed.barrier: on a
    CPU that gives up after gloo's fixed 30 s. The processes count themselves in on the job's
    TCP store instead, and the waiting ones look at the count a few times a second."""
    if world_size() == 1:
        return
    from paddle.base import core

    store = core.create_or_get_global_tcp_store()
    key = f"paddle-kd-barrier-{next(_barriers)}"
    store.add(key, 1)
    deadline = time.monotonic() + int(os.environ["PADDLE_PG_TIMEOUT"]) / 1000
    while store.add(key, 0) < world_size():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out at barrier {key}")
        time.sleep(0.2)


def gather_rows(local: np.ndarray) -> list[np.ndarray]:
    """Every rank's `local` array (the same shape on every rank), in rank order."""
    if world_size() == 1:
        return [local]
    import paddle
    import paddle.distributed as dist

    parts: list = []
    dist.all_gather(parts, paddle.to_tensor(local))
    return [part.numpy() for part in parts]


def average_buffers(model) -> None:
    """BatchNorm statistics averaged over the ranks: without SyncBatchNorm (no CPU kernel) each
    rank gathers its own, and every rank must evaluate and save the same model. Paddle keeps
    them as parameters that take no gradient (not as buffers), so every float state entry that
    takes no gradient is averaged; those that do are the same on every rank already."""
    if world_size() == 1:
        return
    import paddle
    import paddle.distributed as dist

    for value in model.state_dict().values():
        if paddle.is_floating_point(value) and value.stop_gradient:
            total = value.clone()
            dist.all_reduce(total)
            value.set_value(total / world_size())


def shard(count: int, ranks: Optional[int] = None, index: Optional[int] = None) -> np.ndarray:
    """This rank's items of `count`: every world-th one, from its rank on."""
    ranks, index = ranks or world_size(), rank() if index is None else index
    return np.arange(index, count, ranks)
