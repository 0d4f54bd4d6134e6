"""A fast CPU depthwise convolution for the students' training.

Paddle's CPU depthwise kernel takes about 1.2 µs per (image, channel) pair,
whatever the spatial size, and made up 78% of a MobileNet training step. The
custom operator in csrc/depthwise_conv2d.cc (forward and exact backward) is
compiled with `paddle.utils.cpp_extension` on first use, cached per machine, and
swapped into a student's depthwise layers by `use_fast_depthwise`. It runs only
in the dynamic graph on the CPU: on a GPU, and when a model is traced for export
(`paddle.jit.save`), the same layer runs Paddle's own kernel, so exported models
hold standard operators only. Where no compiler is available or the build fails,
Paddle's kernel is used, with a one-line note.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import platform
from pathlib import Path
from typing import Callable, Optional

import paddle
import paddle.nn as nn

SOURCE = Path(__file__).resolve().parent / "csrc" / "depthwise_conv2d.cc"
OP_NAME = "fast_depthwise_conv2d"
KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)
# -march=native: the build is cached per machine (the CPU's flags are in the cache key).
COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp-simd"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def build_directory(source: Path = SOURCE) -> Path:
    """Where the operator is built: one directory per source, compiler flags, Paddle
    version and CPU, under the user's cache directory."""
    key = hashlib.sha256("\n".join([
        source.read_text(encoding="utf-8"), " ".join(COMPILE_FLAGS), paddle.__version__, platform.machine(),
        platform.python_version(), _cpu_flags(),
    ]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "paddle-kd-students" / f"{OP_NAME}-{key}"


def build_operator(source: Path, directory: Path) -> Callable:
    """Compile (or reuse) the operator in `directory` and return it. Raises on any failure.
    A lock file keeps two processes (two runs, or fold workers) from building at once."""
    from paddle.utils.cpp_extension import load

    directory.mkdir(parents=True, exist_ok=True)
    # Paddle's builder prints progress and logs INFO lines; only failure matters here.
    quiet = io.StringIO()
    with open(directory / "build.lock", "w") as lock, contextlib.redirect_stdout(quiet):
        fcntl.flock(lock, fcntl.LOCK_EX)
        level = logging.root.manager.disable
        logging.disable(logging.INFO)
        # Paddle's builder signs a build with its sources' paths: building from a copy inside the
        # (content-keyed) directory lets every checkout of the project share one build.
        local_source = directory / source.name
        if not local_source.is_file() or local_source.read_bytes() != source.read_bytes():
            local_source.write_bytes(source.read_bytes())
        try:
            module = load(name=OP_NAME, sources=[str(local_source)], extra_cxx_cflags=COMPILE_FLAGS,
                          build_directory=str(directory))
        finally:
            logging.disable(level)
    return getattr(module, OP_NAME)


@functools.cache
def fast_depthwise_operator() -> Optional[Callable]:
    """The compiled operator, or None (after a one-line note) where it cannot be built."""
    directory = build_directory()
    if not (directory / OP_NAME).is_dir():
        print("compiling the fast depthwise convolution for this machine (once, about 20 s)", flush=True)
    try:
        return build_operator(SOURCE, directory)
    except Exception as error:  # a missing compiler, a failed build or load: Paddle's kernel still works
        reason = str(error).strip().splitlines()[-1:] or [type(error).__name__]
        print(f"note: the fast depthwise convolution could not be built ({reason[0][:200]}); "
              "training with Paddle's own kernel (--fast_depthwise off skips the attempt)", flush=True)
        return None


def is_supported(layer: nn.Layer) -> bool:
    """A depthwise convolution the operator computes: one square filter per channel of
    an odd size it knows, padding size // 2, no dilation, no bias, NCHW."""
    if type(layer) is not nn.Conv2D:
        return False
    kernel, stride = layer._kernel_size, layer._stride
    return (layer._groups == layer._in_channels == layer._out_channels > 1
            and kernel[0] == kernel[1] and kernel[0] in KERNEL_SIZES
            and stride[0] == stride[1] and stride[0] in STRIDES
            and layer._padding == kernel[0] // 2 and list(layer._dilation) == [1, 1]
            and layer.bias is None and layer._data_format == "NCHW" and layer._padding_mode == "zeros")


class FastDepthwiseConv2D(nn.Conv2D):
    """An nn.Conv2D whose forward uses the fast operator in the dynamic graph on the CPU.
    It adds no parameters and renames none, so checkpoints, optimizer states and
    exported models are those of the plain layer."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32:
            return fast_depthwise_operator()(x.contiguous(), self.weight, self._stride[0])
        return super().forward(x)


def use_fast_depthwise(model: nn.Layer) -> int:
    """Switch `model`'s depthwise convolutions to the fast operator; returns how many.
    Does nothing (0) on a GPU, where cuDNN is fast, and where the operator cannot be built."""
    layers = [layer for layer in model.sublayers() if is_supported(layer)]
    if not layers or paddle.get_device().startswith("gpu") or fast_depthwise_operator() is None:
        return 0
    for layer in layers:
        # The layer keeps its parameters (and their names); only its forward changes.
        layer.__class__ = FastDepthwiseConv2D
    return len(layers)
