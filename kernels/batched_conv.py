"""Convolutions over small feature maps as one matrix product for the whole batch.

Paddle's CPU convolution multiplies a layer's filters with each image's columns in turn
(im2col, then one matrix product per image). Where the output map is small, as in the
last stages of a ResNet teacher at 64-96 px (6x6 down to 2x2), each product has only a
handful of columns and reads all of the layer's weights again for every image of the
batch: ResNet18's 512-channel 3x3 convolutions at 3x3 took 63 ms forward and backward
for a batch of 32, against 27 ms as one product over the batch's columns (measured,
docs/speed-on-cpu.md). So on the CPU, in the dynamic graph, layers whose output has at
most SMALL_MAP positions gather the batch's columns (`F.unfold`) and multiply once.
Larger maps keep Paddle's kernel, which is faster there (or oneDNN's, kernels/onednn_conv.py,
which takes maps of more than 9 positions when it is built). It is made of Paddle's own
operators, so gradients are exact; weights and parameter names are those of the plain
layer, and exported models (`paddle.jit.save` traces outside the dynamic graph) hold the
standard convolution.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from kernels.layer_swap import on_cpu_training, swap_layers

# Output positions (height x width) up to which one product per batch is faster: measured on
# ResNet18/34 at 96 px and ResNet50 at 64 px, where 16 to 64 all gained and 144 lost.
SMALL_MAP = 36


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def batched_conv2d(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None, stride: int,
                   padding: int) -> paddle.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) (NCHW, no groups or dilation) as one matrix
    product over the whole batch."""
    n, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    out_h, out_w = output_size(height, kernel, stride, padding), output_size(width, kernel, stride, padding)
    if kernel == 1 and padding == 0:
        picked = x[:, :, ::stride, ::stride] if stride > 1 else x
        columns = picked.transpose([1, 0, 2, 3]).reshape([channels, n * out_h * out_w])
    else:
        columns = F.unfold(x, kernel, strides=stride, paddings=padding).transpose([1, 0, 2])
        columns = columns.reshape([channels * kernel * kernel, n * out_h * out_w])
    y = paddle.matmul(weight.reshape([out_channels, -1]), columns)
    y = y.reshape([out_channels, n, out_h, out_w]).transpose([1, 0, 2, 3])
    return y if bias is None else y + bias.reshape([1, -1, 1, 1])


def is_supported(layer: nn.Layer) -> bool:
    """A plain convolution batched_conv2d computes: square filter, one group, no dilation,
    the same padding on every side, zeros padding, NCHW."""
    if type(layer) is not nn.Conv2D:
        return False
    kernel, stride = layer._kernel_size, layer._stride
    return (layer._groups == 1 and kernel[0] == kernel[1] and stride[0] == stride[1]
            and isinstance(layer._padding, int) and list(layer._dilation) == [1, 1]
            and layer._data_format == "NCHW" and layer._padding_mode == "zeros")


class BatchedConv2D(nn.Conv2D):
    """An nn.Conv2D that computes small output maps as one product over the batch, in the
    dynamic graph on the CPU. It adds and renames no parameters."""

    def output_positions(self, x: paddle.Tensor) -> int:
        """Height times width of this layer's output for `x`."""
        kernel, stride, padding = self._kernel_size[0], self._stride[0], self._padding
        return output_size(x.shape[2], kernel, stride, padding) * output_size(x.shape[3], kernel, stride, padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if on_cpu_training(x) and self.output_positions(x) <= SMALL_MAP:
            return batched_conv2d(x, self.weight, self.bias, self._stride[0], self._padding)
        return super().forward(x)


def use_batched_conv(model: nn.Layer) -> int:
    """Let `model`'s plain convolutions compute small output maps as one product per batch;
    returns how many layers may. Does nothing (0) on a GPU, where cuDNN is fast."""
    return swap_layers(model, lambda layer: BatchedConv2D if is_supported(layer) else None)
