"""EfficientNet-Lite (Tan and Le, 2019; the "Lite" variants of TensorFlow's model garden):
EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem and head, for
devices where quantisation matters. Lite0-2 here, laid out as paddle.vision's MobileNetV3
(`conv`, `blocks`, `lastconv`, `avgpool`, `classifier`), so that the students' and
teachers' shared code (freezing, attention, Grad-CAM, feature distillation) finds its parts.

The ImageNet weights were trained in TensorFlow, whose "SAME" padding puts the extra row
and column of a strided convolution at the bottom and right: strided layers pad that way
here too (Paddle's padding="SAME" is TensorFlow's). Batch norm keeps TensorFlow's epsilon,
1e-3, which the weights' statistics assume. Where the weights come from and how they are
converted: models/pretrained.py.
"""
from __future__ import annotations

import math
from typing import Callable

import paddle
import paddle.nn as nn

from models.pretrained import imagenet_state
from utils.runtime.errors import ConfigError

# One stage: (repeats, kernel, stride, expansion, input channels, output channels), as in
# TensorFlow's efficientnet_lite_builder.py.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# name -> (width multiplier, depth multiplier, ImageNet resolution, dropout before the classifier)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # fixed in every Lite variant
BN_EPSILON = 1e-3
# Each block's residual branch is dropped for a whole image with a probability rising from 0
# at the first block to this at the last (stochastic depth), as the weights were trained.
DROP_CONNECT = 0.2


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's round_filters: channels x width, to a multiple of 8, never 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    """Convolution, batch norm and (unless `activation` is False) ReLU6. Strided layers pad
    as TensorFlow's SAME; the others by kernel // 2, which is the same there and which the
    compiled CPU depthwise convolution takes."""
    padding = "SAME" if stride > 1 else kernel // 2
    layers = [nn.Conv2D(in_channels, out_channels, kernel, stride, padding, groups=groups, bias_attr=False),
              nn.BatchNorm2D(out_channels, epsilon=BN_EPSILON)]
    return nn.Sequential(*layers, nn.ReLU6()) if activation else nn.Sequential(*layers)


def drop_connect(x: paddle.Tensor, rate: float, training: bool) -> paddle.Tensor:
    """Zero the residual branch of whole images with probability `rate` (kept ones scaled up)."""
    if not training or rate == 0:
        return x
    keep = paddle.bernoulli(paddle.full([x.shape[0], 1, 1, 1], 1 - rate, dtype=x.dtype))
    return x * keep / (1 - rate)


class MBConv(nn.Layer):
    """Inverted residual block: 1x1 expansion, depthwise convolution, 1x1 projection.
    `mid_se` is where EfficientNet had its squeeze-excitation (after the depthwise layer):
    empty in the Lite variants, and the place --attention puts a module (models/attention.py)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int,
                 drop_rate: float) -> None:
        super().__init__()
        self.mid_channels = in_channels * expansion
        self.expand = conv_bn(in_channels, self.mid_channels, 1) if expansion != 1 else None
        self.depthwise = conv_bn(self.mid_channels, self.mid_channels, kernel, stride, groups=self.mid_channels)
        self.mid_se = nn.Identity()
        self.project = conv_bn(self.mid_channels, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.mid_se(self.depthwise(y)))
        return x + drop_connect(y, self.drop_rate, self.training) if self.residual else y


class EfficientNetLite(nn.Layer):
    def __init__(self, width: float, depth: float, dropout: float, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = conv_bn(3, STEM_CHANNELS, 3, stride=2)
        plan = []  # (in, out, kernel, stride, expansion) per block
        for stage, (repeats, kernel, stride, expansion, in_channels, out_channels) in enumerate(STAGES):
            fixed = stage in (0, len(STAGES) - 1)  # the first and last stages keep their repeats
            repeats = repeats if fixed else math.ceil(depth * repeats)
            in_channels = STEM_CHANNELS if stage == 0 else round_channels(in_channels, width)
            out_channels = round_channels(out_channels, width)
            for index in range(repeats):
                plan.append((in_channels if index == 0 else out_channels, out_channels, kernel,
                             stride if index == 0 else 1, expansion))
        self.blocks = nn.Sequential(*(MBConv(*block, drop_rate=DROP_CONNECT * index / len(plan))
                                      for index, block in enumerate(plan)))
        self.lastconv = conv_bn(plan[-1][1], HEAD_CHANNELS, 1)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.avgpool(self.lastconv(self.blocks(self.conv(x))))
        return self.classifier(paddle.flatten(x, 1))


def constructor(name: str) -> Callable[..., nn.Layer]:
    """The named variant's constructor, called as paddle.vision's are: (pretrained, num_classes,
    scale). Its ImageNet weights come from an installed package (models/pretrained.py)."""
    width, depth, _, dropout = VARIANTS[name]

    def build(pretrained: bool = False, num_classes: int = 1000, scale: float = 1.0) -> nn.Layer:
        if scale != 1.0:
            raise ConfigError(f"{name} has no width multiplier: student_width must be 1.0, not {scale}")
        model = EfficientNetLite(width, depth, dropout, num_classes)
        if pretrained:
            missing, unexpected = model.set_state_dict(imagenet_state(name))
            if missing or unexpected:
                raise ConfigError(f"the ImageNet weights of {name} do not fit its layers ({len(missing)} missing, "
                                  f"{len(unexpected)} unexpected)")
        return model

    return build
