"""Frozen layers: no gradients, and BatchNorm statistics that stay as loaded."""
from __future__ import annotations

import paddle.nn as nn

_FROZEN = "_kd_frozen"


def freeze(layer: nn.Layer) -> None:
    for param in layer.parameters():
        param.stop_gradient = True
    setattr(layer, _FROZEN, True)


def set_train_mode(model: nn.Layer) -> None:
    """model.train(), except that frozen parts stay in eval mode: a frozen block
    whose BatchNorm kept updating its running statistics would drift."""
    model.train()
    for layer in [model, *model.sublayers()]:
        if getattr(layer, _FROZEN, False):
            for part in [layer, *layer.sublayers()]:
                part.training = False


def trainable_parameters(model: nn.Layer) -> list:
    return [p for p in model.parameters() if not p.stop_gradient]
