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

from typing import Callable, Optional

import paddle
import paddle.nn as nn

from kernels.compiled_ops import compiled
from kernels.layer_swap import on_cpu_training, swap_layers

SOURCE_NAME = "depthwise_conv2d.cc"
KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)


def fast_depthwise_operator() -> Optional[Callable]:
    """The compiled operator, or None (after a one-line note) where it cannot be built."""
    module = compiled(SOURCE_NAME, "the fast depthwise convolution", "--fast_depthwise off")
    return None if module is None else module.fast_depthwise_conv2d


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
        if on_cpu_training(x):
            return fast_depthwise_operator()(x.contiguous(), self.weight, self._stride[0])
        return super().forward(x)


def use_fast_depthwise(model: nn.Layer) -> int:
    """Switch `model`'s depthwise convolutions to the fast operator; returns how many.
    Does nothing (0) on a GPU, where cuDNN is fast, and where the operator cannot be built."""
    return swap_layers(model, lambda layer: FastDepthwiseConv2D if is_supported(layer) else None,
                       lambda: fast_depthwise_operator() is not None)
