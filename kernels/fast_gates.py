"""MobileNetV3's gates on the CPU: the squeeze-excitation scaling (x times a per-channel
gate) and hard-swish as compiled operators (csrc/gates.cc), forward and exact backward.

Paddle's broadcast multiply and its gradient took 18%, and hard-swish with its gradient
12%, of a MobileNetV3-Small training step at 112 px (one thread, batch 32,
paddle.profiler, docs/speed-on-cpu.md). As with the depthwise operator, they run only in
the dynamic graph on the CPU in float32: on a GPU and in exported models the layers
compute as Paddle's own, and where the operators cannot be built, Paddle's kernels train,
after a one-line note.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import paddle
import paddle.nn as nn
from paddle.vision.models.mobilenetv3 import SqueezeExcitation

from kernels.compiled_ops import compiled
from kernels.layer_swap import on_cpu_training, swap_layers

SOURCE_NAME = "gates.cc"


def gate_operators() -> Optional[ModuleType]:
    """The compiled module (channel_scale, fast_hardswish), or None where it cannot be built."""
    return compiled(SOURCE_NAME, "the fast gate operators", "--fast_depthwise off")


class FastHardswish(nn.Hardswish):
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return gate_operators().fast_hardswish(x.contiguous()) if on_cpu_training(x) else super().forward(x)


class FastSqueezeExcitation(SqueezeExcitation):
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not on_cpu_training(x):
            return super().forward(x)
        return gate_operators().channel_scale(x.contiguous(), self._scale_of_mean(x))

    def _scale_of_mean(self, x: paddle.Tensor) -> paddle.Tensor:
        """SqueezeExcitation._scale with the squeeze as a mean over each flattened plane:
        Paddle's adaptive average pooling took 2-3x as long forward and backward on these
        small maps (32x576x2x2: 0.44 against 0.19 ms)."""
        n, c = x.shape[:2]
        scale = self.activation(self.fc1(x.reshape([n, c, -1]).mean(-1, keepdim=True).unsqueeze(-1)))
        return self.scale_activation(self.fc2(scale))


FAST_LAYERS = {nn.Hardswish: FastHardswish, SqueezeExcitation: FastSqueezeExcitation}


def use_fast_gates(model: nn.Layer) -> int:
    """Switch `model`'s hard-swish and squeeze-excitation layers to the compiled operators;
    returns how many. Does nothing (0) on a GPU or where the operators cannot be built."""
    return swap_layers(model, lambda layer: FAST_LAYERS.get(type(layer)), lambda: gate_operators() is not None)
