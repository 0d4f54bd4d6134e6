"""Attention modules that plug into the student, looked up by name.

Every module maps (N, C, H, W) to the same shape. To add one: write the class
(its constructor takes the channel count) and add one line to ATTENTIONS.
"""
from __future__ import annotations

import math
from typing import Callable

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from utils.runtime.registry import lookup

# Gates that end in a bias start at sigmoid(GATE_BIAS) ~ 0.95, so that a
# pretrained block with new attention starts close to what it was.
GATE_BIAS = 3.0


def _start_open(gate: nn.Layer) -> None:
    """Zero weights and a positive bias: the gate passes its input almost unchanged at first."""
    gate.weight.set_value(paddle.zeros_like(gate.weight))
    gate.bias.set_value(paddle.full_like(gate.bias, GATE_BIAS))


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel: |log2(C) / gamma + b / gamma|, rounded to the nearest odd number above."""
    k = int(abs(math.log2(channels) / gamma + b / gamma))
    return k if k % 2 else k + 1


class ECA(nn.Layer):
    """Efficient Channel Attention (Wang et al., CVPR 2020): a 1-D convolution across channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kernel_size = eca_kernel_size(channels)
        self.conv = nn.Conv1D(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n, c = x.shape[0], x.shape[1]
        weights = self.conv(x.mean(axis=[2, 3]).reshape([n, 1, c]))
        return x * F.sigmoid(weights).reshape([n, c, 1, 1])


class SimAM(nn.Layer):
    """SimAM (Yang et al., ICML 2021): parameter-free weights from each neuron's energy."""

    def __init__(self, channels: int, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(axis=[2, 3], keepdim=True)) ** 2
        variance = d.sum(axis=[2, 3], keepdim=True) / max(n, 1)
        return x * F.sigmoid(d / (4 * (variance + self.lam)) + 0.5)


class SE(nn.Layer):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Conv2D(channels, hidden, 1)
        self.excite = nn.Conv2D(hidden, channels, 1)
        _start_open(self.excite)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        scale = self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1))))
        return x * F.sigmoid(scale)


class CBAM(nn.Layer):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2D(channels, hidden, 1), nn.ReLU(), nn.Conv2D(hidden, channels, 1))
        self.spatial = nn.Conv2D(2, 1, kernel_size, padding=kernel_size // 2)
        _start_open(self.mlp[2])  # the shared MLP's bias counts twice: avg and max
        self.mlp[2].bias.set_value(paddle.full_like(self.mlp[2].bias, GATE_BIAS / 2))
        _start_open(self.spatial)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        channel = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * F.sigmoid(channel)
        pooled = paddle.concat([x.mean(axis=1, keepdim=True), x.max(axis=1, keepdim=True)], axis=1)
        return x * F.sigmoid(self.spatial(pooled))


class CoordAttention(nn.Layer):
    """Coordinate Attention (Hou et al., CVPR 2021): pooling along height and width separately."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.reduce = nn.Sequential(nn.Conv2D(channels, hidden, 1), nn.BatchNorm2D(hidden), nn.Hardswish())
        self.gate_h = nn.Conv2D(hidden, channels, 1)
        self.gate_w = nn.Conv2D(hidden, channels, 1)
        _start_open(self.gate_h)
        _start_open(self.gate_w)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h, w = x.shape[2], x.shape[3]
        along_h = x.mean(axis=3, keepdim=True)  # N, C, H, 1
        along_w = x.mean(axis=2, keepdim=True).transpose([0, 1, 3, 2])  # N, C, W, 1
        mixed = self.reduce(paddle.concat([along_h, along_w], axis=2))
        mixed_h, mixed_w = paddle.split(mixed, [h, w], axis=2)
        gate_h = F.sigmoid(self.gate_h(mixed_h))
        gate_w = F.sigmoid(self.gate_w(mixed_w.transpose([0, 1, 3, 2])))
        return x * gate_h * gate_w


ATTENTIONS: dict[str, Callable[[int], nn.Layer]] = {
    "eca": ECA,
    "simam": SimAM,
    "cbam": CBAM,
    "se": SE,
    "coord": CoordAttention,
}


def check_attention(name: str) -> None:
    if name != "none":
        lookup(ATTENTIONS, name, "attention", also=("none",))


def create_attention(name: str, channels: int) -> nn.Layer:
    return lookup(ATTENTIONS, name, "attention", also=("none",))(channels)


def _last(items: list, blocks: str) -> list:
    return items if blocks == "all" else items[len(items) - int(blocks):] if int(blocks) else []


def attach_attention(model: nn.Layer, name: str, blocks: str) -> None:
    """Put the named attention into a student built by models/student.py.

    MobileNetV2: after the output of each inverted-residual block (or of the
    last `blocks` of them). MobileNetV3: in place of the built-in SE modules
    (of the last `blocks` blocks that have one). EfficientNet-Lite: where
    EfficientNet had its SE modules, after each block's depthwise layer. `none`
    adds nothing, and on MobileNetV3 `se` keeps the built-in modules: both leave
    the published architecture, and its pretrained SE weights, as they are.
    """
    if name == "none":
        return
    if hasattr(model, "features"):
        for index in _last(list(range(1, len(model.features) - 1)), blocks):
            block = model.features[index]
            channels = block.conv[-1].weight.shape[0]
            model.features[index] = nn.Sequential(block, create_attention(name, channels))
        return
    built_in = [block for block in model.blocks if getattr(block, "use_se", False)]
    if name == "se" and built_in:
        return
    for block in _last(built_in or list(model.blocks), blocks):
        channels = block.mid_channels if not built_in else block.mid_se.fc1.weight.shape[1]
        block.mid_se = create_attention(name, channels)
