"""Every CPU speed-up of a model's training in one call: the compiled depthwise convolution,
MobileNetV3 gates and oneDNN convolutions (when `compiled`, the --fast_depthwise setting), and
small feature maps as one product per batch. Each leaves parameters, checkpoints and exported
models as they were, and does nothing on a GPU (kernels/layer_swap.py)."""
from __future__ import annotations

import paddle.nn as nn

from kernels.batched_conv import use_batched_conv
from kernels.fast_depthwise import fast_depthwise_operator, use_fast_depthwise
from kernels.fast_gates import gate_operators, use_fast_gates
from kernels.onednn_conv import onednn_operators, use_onednn_conv


def use_fast_cpu_kernels(model: nn.Layer, compiled: bool = True) -> dict[str, int]:
    """Switch `model`'s layers to the faster CPU kernels; returns how many layers of each kind."""
    switched = ({"depthwise": use_fast_depthwise(model), "gates": use_fast_gates(model),
                 "convolutions": use_onednn_conv(model)} if compiled else {})
    # After oneDNN's, which leaves 1x1 convolutions and the smallest maps to this one.
    switched["small maps"] = use_batched_conv(model)
    return switched


def compiled_operators_built() -> bool:
    """Build (or find built) every compiled CPU operator; False, after a one-line note, where
    one cannot be built."""
    return all(operators() is not None for operators in (fast_depthwise_operator, gate_operators, onednn_operators))
