"""Process set-up: CPU math-library settings (before Paddle loads), seeding,
and the device."""
from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from typing import Iterator

MAX_IMAGE_PIXELS = 2**27  # about 134 megapixels, 400 MB as RGB

# Starts of library warnings that tell a user of this tool nothing they can act on.
QUIET_WARNINGS = (
    "No ccache found",  # Paddle's C++-extension builder, never used here
    "When training",  # Paddle BatchNorm: "..., we now always track global mean and variance"
    # Paddle's LinearWarmup restoring its own state: the wrapped schedule's entry, which it does use.
    "There are some unused values in state_dict",
    # Matplotlib, for class names in scripts its font lacks (CJK): the plot shows boxes instead.
    "Glyph",
    # Python's multiprocessing after an interrupted run ends its fold workers: nothing is lost.
    "resource_tracker",
)


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def prepare_process() -> None:
    """Process set-up that must happen before Paddle is imported: quiet
    warnings and the CPU math-library settings."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # The same rules for worker processes, which start with fresh interpreters.
    os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore:{m}" for m in QUIET_WARNINGS))
    # Paddle's C++ log: errors only, not its INFO and WARNING lines about internals.
    os.environ.setdefault("GLOG_minloglevel", "2")
    # Refuse to decode images over 2**27 pixels (decompression bombs); OpenCV's own limit is 2**30.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    tune_cpu_environment()
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the system.

    A training step allocates and frees activations of tens of MB. By default glibc
    serves blocks over 32 MB with mmap and unmaps them on free, so every step pays
    the page faults of touching fresh memory again. Measured (benchmarks/train_speed.py,
    MobileNetV2 at 112 px, batch 32): 53 -> 65 img/s with the fast depthwise kernel,
    23.5 -> 24.9 with Paddle's. A process's memory then stays at its peak. Elsewhere
    than glibc, a no-op.
    """
    import ctypes

    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**30)
    except (OSError, AttributeError):
        pass


def tune_cpu_environment() -> None:
    """Set math-library variables that must be in place before Paddle is imported.

    The MKL that Paddle ships takes slow generic code paths on AMD CPUs; with
    MKL_DEBUG_CPU_TYPE=5 a ResNet50 forward at 112 px on a 2-core EPYC went
    from 8.2 to 24.2 img/s (one thread). OpenMP threads are left at Paddle's one per
    process: two threads were measured slower for these models, so the cores
    train folds in parallel instead (see `parallel_folds`). A value the user
    already set is always kept.
    """
    if "paddle" in sys.modules:
        return
    if _cpu_vendor() == "AuthenticAMD":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


def seed_everything(*key: int) -> None:
    """Seed Python, NumPy and Paddle from one integer, or from a tuple such as (seed, fold, epoch)."""
    import numpy as np
    import paddle

    seed = key[0] if len(key) == 1 else int(np.random.SeedSequence(key).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def launched() -> bool:
    """Started by paddle.distributed.launch with more than one process."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def die_with_parent() -> None:
    """Ask Linux to end this worker process when its parent dies, so that a killed
    run leaves no orphaned fold still training. Elsewhere, a no-op."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def select_device(requested: str) -> str:
    """'gpu' when Paddle has CUDA and the user allows it, else 'cpu'."""
    import paddle

    from utils.runtime.errors import ConfigError

    has_cuda = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_cuda:
        raise ConfigError("--device gpu was asked for, but this Paddle has no CUDA GPU; use --device cpu")
    device = "gpu" if has_cuda and requested in ("auto", "gpu") else "cpu"
    if device == "gpu" and launched():
        # One GPU per data-parallel process, as paddle.distributed.launch assigned them.
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    else:
        paddle.set_device(device)
    return device


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Lines that C++ libraries (paddle2onnx, Paddle's static-graph passes) print straight to the
    process's stdout and stderr are dropped for the block; Python's own output is kept apart."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
