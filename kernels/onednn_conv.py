"""Plain convolutions trained through oneDNN on the CPU (csrc/onednn_conv2d.cc).

Paddle's CPU convolution computes im2col and one matrix product per image; PyTorch
calls oneDNN's convolutions, which were 1.4-1.9x faster forward and backward on the
3x3 layers of a ResNet teacher (docs/speed-on-cpu.md). Paddle's wheel ships oneDNN
(paddle/libs/libdnnl.so.3) but its dynamic graph does not use it for convolutions, so
the compiled operator links it directly. As with the depthwise operator, it runs only
in the dynamic graph on the CPU in float32; on a GPU and in exported models the layer
is Paddle's own, and where the operator cannot be built (or its self-check fails)
training keeps Paddle's kernels, after a one-line note.

1x1 convolutions stay with Paddle, whose kernel for them is one matrix product per
image (oneDNN ran them at 0.7x), and the smallest maps with `kernels/batched_conv.py`.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from kernels.batched_conv import BatchedConv2D
from kernels.batched_conv import is_supported as is_plain_convolution
from kernels.compiled_ops import compiled
from kernels.layer_swap import on_cpu_training, swap_layers

SOURCE_NAME = "onednn_conv2d.cc"
LIBRARIES = ("libdnnl.so.3",)
# Output maps of at most this many positions stay one product per batch: whole ResNet18
# (96 px) and ResNet50 (64 px) steps were fastest with 9, against 0, 4, 16 and 36.
BATCHED_UP_TO = 9


def onednn_operators() -> Optional[ModuleType]:
    """The compiled module (onednn_conv2d, onednn_conv2d_fixed_input), or None (after a
    one-line note) where it cannot be built or disagrees with Paddle's convolution."""
    module = compiled(SOURCE_NAME, "the oneDNN convolution", "--fast_depthwise off", LIBRARIES)
    return None if module is None else _checked(module)


@functools.cache
def _checked(module: ModuleType) -> Optional[ModuleType]:
    try:
        agrees = _agrees_with_paddle(module)
    except Exception as error:  # e.g. a oneDNN of another major version than the operator was written for
        print(f"note: the oneDNN convolution failed its check ({str(error).strip().splitlines()[-1][:200]}); "
              "training with Paddle's own convolution", flush=True)
        return None
    if not agrees:
        print("note: the oneDNN convolution disagreed with Paddle's on a test input; training with Paddle's "
              "own convolution", flush=True)
    return module if agrees else None


def _agrees_with_paddle(module: ModuleType) -> bool:
    """One small convolution, forward and both gradients, against Paddle's kernel: the
    operator declares oneDNN's interface itself, so a library that differs is caught here."""
    rng = np.random.default_rng(0)
    x_values = rng.standard_normal([2, 5, 9, 9], dtype=np.float32)
    w_values = rng.standard_normal([7, 5, 3, 3], dtype=np.float32)
    paddle_conv = functools.partial(F.conv2d, bias=None)
    results = []
    for operator in (paddle_conv, module.onednn_conv2d):
        x = paddle.to_tensor(x_values, stop_gradient=False)
        w = paddle.to_tensor(w_values, stop_gradient=False)
        with paddle.set_grad_enabled(True):  # the first use may come under paddle.no_grad()
            y = operator(x, w, stride=2, padding=1)
            (y * y).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy()])
    return all(np.allclose(actual, expected, rtol=1e-4, atol=1e-4) for expected, actual in zip(*results))


def is_supported(layer: nn.Layer) -> bool:
    """A plain convolution the operator computes: one of batched_conv's, with a filter
    larger than 1x1 and no bias."""
    return is_plain_convolution(layer) and layer._kernel_size[0] > 1 and layer.bias is None


class OneDNNConv2D(BatchedConv2D):
    """An nn.Conv2D trained through oneDNN in the dynamic graph on the CPU, except on the
    small maps BatchedConv2D computes as one product. It adds and renames no parameters."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if on_cpu_training(x) and self.output_positions(x) > BATCHED_UP_TO:
            operators = onednn_operators()
            # A model's first layer: its input needs no gradient, so none is computed.
            operator = operators.onednn_conv2d_fixed_input if x.stop_gradient else operators.onednn_conv2d
            return operator(x.contiguous(), self.weight, self._stride[0], self._padding)
        return super().forward(x)


def use_onednn_conv(model: nn.Layer) -> int:
    """Switch `model`'s plain convolutions larger than 1x1 to oneDNN; returns how many.
    Does nothing (0) on a GPU or where the operator cannot be built."""
    return swap_layers(model, lambda layer: OneDNNConv2D if is_supported(layer) else None,
                       lambda: onednn_operators() is not None)
