"""The ResNet50 teacher."""
from __future__ import annotations

import paddle.nn as nn
from paddle.vision.models import resnet50

from models.freeze import freeze
from models.weights import build_classifier

HEAD = "fc"


def build_teacher(num_classes: int, weights: str) -> tuple[nn.Layer, bool]:
    """ResNet50 and whether its head already carries these classes (see build_classifier)."""
    return build_classifier(
        lambda pretrained, classes: resnet50(pretrained=pretrained, num_classes=classes),
        HEAD, num_classes, weights, flag="teacher_weights",
    )


def freeze_backbone(teacher: nn.Layer) -> None:
    """For `--teacher_train head`: everything but the fc layer is frozen."""
    for name, layer in teacher.named_children():
        if name != HEAD:
            freeze(layer)


def freeze_teacher(teacher: nn.Layer) -> None:
    """The distillation teacher: eval mode and no gradients, for good."""
    freeze(teacher)
    teacher.eval()
