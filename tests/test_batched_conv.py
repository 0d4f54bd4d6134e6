"""Small feature maps as one product per batch: the same outputs and gradients as
Paddle's convolution for every layer of the teachers and students that takes that
path, the same training, standard operators in exported models, and Paddle's
kernel for larger maps."""
from __future__ import annotations

import copy

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import kernels.batched_conv as batched_conv
from kernels.batched_conv import SMALL_MAP, BatchedConv2D, batched_conv2d, is_supported, output_size, use_batched_conv
from models.student import build_student
from models.teacher import TEACHERS, build_teacher
from tests.kernel_checks import (
    assert_operator_as_accurate_as_paddles,
    assert_training_steps_as_accurate_as_paddles,
    exported_program,
    layer_shapes,
)

# (in channels, out channels, height, width, kernel, stride, padding, bias)
Shape = tuple[int, int, int, int, int, int, int, bool]


def batched_shapes(model: paddle.nn.Layer, img_size: int) -> set[Shape]:
    """Every plain convolution of `model` at `img_size` whose output map is small enough to be batched."""
    def describe(layer, x, y):
        return ((x[1], layer._out_channels, x[2], x[3], layer._kernel_size[0], layer._stride[0], layer._padding,
                 layer.bias is not None) if y[2] * y[3] <= SMALL_MAP else None)

    return layer_shapes(model, img_size, is_supported, describe)


RESNETS = sorted(name for name in TEACHERS if name.startswith("resnet"))


@pytest.mark.parametrize("name", sorted(TEACHERS) + ["mobilenet_v3_small", "mobilenet_v2"])
def test_outputs_and_gradients_match_paddles_convolution(name):
    model = build_teacher(6, "none", name)[0] if name in TEACHERS else build_student(name, 6)
    shapes = set().union(*(batched_shapes(model, size) for size in (45, 64, 96, 112)))
    # ResNets batch 3x3 and 1x1 convolutions, strided or not; MobileNets and EfficientNet-Lite their
    # 1x1 convolutions (their strided layers are depthwise, or padded as TensorFlow's SAME).
    assert {shape[4] for shape in shapes} == ({1, 3} if name in RESNETS else {1})
    assert {shape[5] for shape in shapes} == ({1, 2} if name in RESNETS else {1})
    rng = np.random.default_rng(0)
    for c, out, h, w, kernel, stride, padding, has_bias in sorted(shapes):
        arrays = [rng.standard_normal((2, c, h, w)), rng.standard_normal((out, c, kernel, kernel))]
        arrays += [rng.standard_normal(out)] if has_bias else []

        def paddles(x, weight, bias=None, stride=stride, padding=padding):
            return F.conv2d(x, weight, bias, stride=stride, padding=padding)

        def batched(x, weight, bias=None, stride=stride, padding=padding):
            return batched_conv2d(x, weight, bias, stride, padding)

        assert_operator_as_accurate_as_paddles(batched, paddles, arrays, (c, out, h, w, kernel, stride, padding))


def test_training_steps_give_paddles_outputs_and_gradients():
    paddle.seed(0)
    plain, _ = build_teacher(4, "none", "resnet18")
    batched = copy.deepcopy(plain)
    assert use_batched_conv(batched) == 20
    images = np.random.default_rng(1).standard_normal((8, 3, 40, 40))
    assert_training_steps_as_accurate_as_paddles(plain, batched, images)


def test_only_small_maps_take_the_batched_path(monkeypatch):
    model, _ = build_teacher(3, "none", "resnet18")
    layers = use_batched_conv(model)
    assert layers == sum(isinstance(layer, BatchedConv2D) for layer in model.sublayers()) == 20
    calls = []
    monkeypatch.setattr(batched_conv, "batched_conv2d",
                        lambda x, *args: calls.append(x.shape) or batched_conv2d(x, *args))
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([2, 3, 64, 64]))
    # At 64 px ResNet18's maps are 32, 16, 8, 4 and 2 wide: the last two stages' layers, 4x4 and 2x2.
    assert calls and all(shape[2] <= 8 for shape in calls)
    assert len(calls) == 10
    assert output_size(64, 7, 2, 3) ** 2 > SMALL_MAP


def test_the_switch_keeps_parameters_and_exported_models_hold_standard_operators(tmp_path):
    model, _ = build_teacher(5, "none", "resnet18")
    names_before = [p.name for p in model.parameters()]
    use_batched_conv(model)
    assert [p.name for p in model.parameters()] == names_before
    program = exported_program(model, tmp_path)
    assert "unfold" not in program and "conv2d" in program
