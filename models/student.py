"""The students: paddle.vision's MobileNets, and EfficientNet-Lite (models/efficientnet_lite.py)."""
from __future__ import annotations

import paddle.nn as nn
from paddle.vision.models import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small

from models.attention import attach_attention
from models.efficientnet_lite import constructor as efficientnet_lite
from models.freeze import freeze
from models.weights import SIGNED_UNIT, Network, Normalization, build_classifier
from utils.runtime.errors import ConfigError
from utils.runtime.registry import lookup

STUDENTS: dict[str, Network] = {
    "mobilenet_v2": Network(mobilenet_v2, "classifier.1"),
    "mobilenet_v3_large": Network(mobilenet_v3_large, "classifier.3"),
    "mobilenet_v3_small": Network(mobilenet_v3_small, "classifier.3"),
    "efficientnet_lite0": Network(efficientnet_lite("efficientnet_lite0"), "classifier.1", SIGNED_UNIT),
}
# Paddle's MobileNetV3 keeps 99% of its BatchNorm running statistics at every step. On the
# few hundred steps a small dataset gives, the evaluation-mode statistics then still mostly
# reflect initialisation and validation collapses to one class; 0.9 is Paddle's default.
BN_MOMENTUM = 0.9


def head_name(name: str) -> str:
    """The student's classifier head, whose input is its pooled features."""
    return lookup(STUDENTS, name, "student").head.split(".")[0]


def input_normalization(name: str) -> Normalization:
    """How the student's inputs are normalised: as its ImageNet weights expect (the whole
    pipeline's images are normalised so; a teacher that expects otherwise adapts them)."""
    return lookup(STUDENTS, name, "student").normalization


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
    constructor, head, _ = lookup(STUDENTS, name, "student")
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
