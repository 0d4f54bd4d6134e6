"""The MobileNet students, built on paddle.vision.models."""
from __future__ import annotations

from typing import Callable

import paddle.nn as nn
from paddle.vision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small

from models.attention import attach_attention
from models.freeze import freeze
from models.weights import build_classifier
from utils.runtime.errors import ConfigError
from utils.runtime.registry import lookup

# name -> (constructor, path of the final linear layer)
STUDENTS: dict[str, tuple[Callable[..., nn.Layer], str]] = {
    "mobilenet_v2": (mobilenet_v2, "classifier.1"),
    "mobilenet_v3_large": (mobilenet_v3_large, "classifier.3"),
    "mobilenet_v3_small": (mobilenet_v3_small, "classifier.3"),
}
# Paddle's MobileNetV3 keeps 99% of its BatchNorm running statistics at every step. On the
# few hundred steps a small dataset gives, the evaluation-mode statistics then still mostly
# reflect initialisation and validation collapses to one class; 0.9 is Paddle's default.
BN_MOMENTUM = 0.9


def head_name(name: str) -> str:
    """The student's classifier head, whose input is its pooled features."""
    return lookup(STUDENTS, name, "student")[1].split(".")[0]


def feature_stages(model: nn.Layer) -> list[nn.Layer]:
    """The feature extractor as an ordered list: stem, inverted-residual blocks, last conv."""
    if hasattr(model, "features"):
        return list(model.features)
    return [model.conv, *model.blocks, model.lastconv]


def build_student(
    name: str,
    num_classes: int,
    weights: str = "none",
    freeze_blocks: int = 0,
    attention: str = "none",
    attention_blocks: str = "all",
    width: float = 1.0,
) -> nn.Layer:
    """`width` is MobileNet's width multiplier: every layer's channels times `width`."""
    constructor, head = lookup(STUDENTS, name, "student")
    if weights == "imagenet" and width != 1.0:
        raise ConfigError(f"ImageNet weights exist for student_width 1.0 only, not {width}; "
                          "use --student_weights none or a .pdparams file of that width")
    model, _ = build_classifier(
        lambda pretrained, classes: constructor(pretrained=pretrained, num_classes=classes, scale=width),
        head, num_classes, weights, flag="student_weights",
    )
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            layer._momentum = BN_MOMENTUM
    # After the weights are loaded, so every layer attention leaves alone keeps them.
    attach_attention(model, attention, attention_blocks)
    stages = feature_stages(model)
    if freeze_blocks > len(stages):
        raise ConfigError(f"freeze_student_blocks={freeze_blocks}, but {name} has {len(stages)} feature blocks")
    for stage in stages[:freeze_blocks]:
        freeze(stage)
    return model
