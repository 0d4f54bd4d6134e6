"""The teacher: a paddle.vision ResNet, looked up by name (ResNet50 by default)."""
from __future__ import annotations

from typing import Callable

import paddle.nn as nn
from paddle.vision.models import resnet18, resnet34, resnet50, resnet101

from models.freeze import freeze
from models.weights import build_classifier
from utils.runtime.registry import lookup

TEACHERS: dict[str, Callable[..., nn.Layer]] = {
    "resnet50": resnet50,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet101": resnet101,
}
HEAD = "fc"


def build_teacher(num_classes: int, weights: str, name: str = "resnet50") -> tuple[nn.Layer, bool]:
    """The named ResNet and whether its head already carries these classes (see build_classifier)."""
    constructor = lookup(TEACHERS, name, "teacher")
    return build_classifier(
        lambda pretrained, classes: constructor(pretrained=pretrained, num_classes=classes),
        HEAD, num_classes, weights, flag="teacher_weights",
    )


def last_stage(teacher: nn.Layer) -> nn.Layer:
    """The ResNet's last convolutional stage (where Grad-CAM looks)."""
    return teacher.layer4


def freeze_backbone(teacher: nn.Layer) -> None:
    """For `--teacher_train head`: everything but the fc layer is frozen."""
    for name, layer in teacher.named_children():
        if name != HEAD:
            freeze(layer)


def freeze_teacher(teacher: nn.Layer) -> None:
    """The distillation teacher: eval mode and no gradients, for good."""
    freeze(teacher)
    teacher.eval()
