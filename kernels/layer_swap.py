"""What the CPU speed-ups (batched_conv, fast_depthwise, fast_gates, onednn_conv) share:
where their layers compute differently, and how a model's layers are switched to them.

A switched layer keeps its parameters and their names, so checkpoints, optimizer states
and exported models are those of the plain layer: only its forward changes, and only in
the dynamic graph on the CPU in float32. On a GPU, and when a model is traced for export
(`paddle.jit.save`), it computes as Paddle's own."""
from __future__ import annotations

from typing import Callable, Optional

import paddle
import paddle.nn as nn


def on_cpu_training(x: paddle.Tensor) -> bool:
    """Whether a switched layer computes `x` its own way: dynamic graph, CPU, float32."""
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


def swap_layers(model: nn.Layer, new_class: Callable[[nn.Layer], Optional[type]],
                available: Callable[[], bool] = lambda: True) -> int:
    """Give every layer of `model` for which `new_class` names a class that class; how many.
    Nothing (0) on a GPU, where cuDNN is fast, or where `available()` (asked only when some
    layer would switch: it may build an operator) says the kernels cannot run."""
    layers = [(layer, cls) for layer in model.sublayers() if (cls := new_class(layer)) is not None]
    if not layers or paddle.get_device().startswith("gpu") or not available():
        return 0
    for layer, cls in layers:
        layer.__class__ = cls
    return len(layers)
