"""Frozen layers: no gradients, and BatchNorm statistics that stay as loaded. A layer is
frozen for good (`freeze`: a frozen teacher, --freeze_student_blocks) or held still for
the first stage of staged fine-tuning (`hold_backbone`), and released after it."""
from __future__ import annotations

import paddle.nn as nn

_FROZEN = "_kd_frozen"
_HELD = "_kd_held"


def freeze(layer: nn.Layer) -> None:
    for param in layer.parameters():
        param.stop_gradient = True
    setattr(layer, _FROZEN, True)


def set_train_mode(model: nn.Layer) -> None:
    """model.train(), except that frozen parts stay in eval mode: a frozen block
    whose BatchNorm kept updating its running statistics would drift."""
    model.train()
    for layer in [model, *model.sublayers()]:
        if getattr(layer, _FROZEN, False) or getattr(layer, _HELD, False):
            for part in [layer, *layer.sublayers()]:
                part.training = False


def trainable_parameters(model: nn.Layer) -> list:
    return [p for p in model.parameters() if not p.stop_gradient]


def hold_backbone(model: nn.Layer, head: str, held: bool) -> None:
    """Staged fine-tuning: with `held`, every layer but the `head` child gets no gradients and
    keeps its BatchNorm statistics (the head alone trains on a frozen backbone); without, they
    train again. Layers frozen for good stay frozen."""
    for name, layer in model.named_children():
        if name == head:
            continue
        frozen_for_good = {id(p) for part in [layer, *layer.sublayers()] if getattr(part, _FROZEN, False)
                           for p in part.parameters()}
        setattr(layer, _HELD, held)
        for param in layer.parameters():
            if id(param) not in frozen_for_good:
                param.stop_gradient = held
