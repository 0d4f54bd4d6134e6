"""Convolutions through oneDNN: the same outputs and gradients as Paddle's convolution for
every layer of the teachers and students that takes that path, the same training, the
smallest maps and 1x1 layers left to the other kernels, standard operators in exported
models, and Paddle's kernels, with a note, where the operator cannot be built or fails
its check."""
from __future__ import annotations

import copy

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import kernels.onednn_conv as onednn_conv
from kernels.batched_conv import BatchedConv2D, use_batched_conv
from kernels.onednn_conv import BATCHED_UP_TO, OneDNNConv2D, is_supported, onednn_operators, use_onednn_conv
from models.student import build_student
from models.teacher import TEACHERS, build_teacher
from tests.kernel_checks import (
    assert_operator_as_accurate_as_paddles,
    assert_training_steps_as_accurate_as_paddles,
    break_the_build,
    exported_program,
    layer_shapes,
)

# (in channels, out channels, height, width, kernel, stride, padding, first layer)
Shape = tuple[int, int, int, int, int, int, int, bool]


def onednn_shapes(model: paddle.nn.Layer, img_size: int) -> set[Shape]:
    """Every convolution of `model` at `img_size` that oneDNN computes."""
    def describe(layer, x, y):
        return ((x[1], layer._out_channels, x[2], x[3], layer._kernel_size[0], layer._stride[0], layer._padding,
                 x[1] == 3) if y[2] * y[3] > BATCHED_UP_TO else None)

    return layer_shapes(model, img_size, is_supported, describe)


RESNETS = sorted(name for name in TEACHERS if name.startswith("resnet"))


@pytest.mark.parametrize("name", RESNETS + ["mobilenet_v3_small", "mobilenet_v2"])
def test_outputs_and_gradients_match_paddles_convolution(name):
    model = build_teacher(6, "none", name)[0] if name in RESNETS else build_student(name, 6)
    shapes = set().union(*(onednn_shapes(model, size) for size in (45, 64, 96, 112)))
    # Teachers: the 7x7 stem and 3x3 layers, strided or not; students: their 3x3 stem only.
    assert {shape[4] for shape in shapes} == ({3, 7} if name in RESNETS else {3})
    assert sum(shape[7] for shape in shapes) == 4, "the first layer, at each size"
    operators = onednn_operators()
    rng = np.random.default_rng(0)
    for c, out, h, w, kernel, stride, padding, first in sorted(shapes):
        arrays = [rng.standard_normal((2, c, h, w)), rng.standard_normal((out, c, kernel, kernel))]
        operator = operators.onednn_conv2d_fixed_input if first else operators.onednn_conv2d

        def paddles(x, weight, stride=stride, padding=padding):
            return F.conv2d(x, weight, stride=stride, padding=padding)

        def onednn(x, weight, stride=stride, padding=padding, operator=operator):
            return operator(x, weight, stride, padding)

        assert_operator_as_accurate_as_paddles(onednn, paddles, arrays, (c, out, h, w, kernel, stride, padding),
                                               fixed=[0] if first else [])


def test_training_steps_give_paddles_outputs_and_gradients():
    """Two steps, the weights changed in place between them: the operator keeps its primitives
    per shape, and must read the new weights."""
    paddle.seed(0)
    plain, _ = build_teacher(4, "none", "resnet18")
    fast = copy.deepcopy(plain)
    assert use_onednn_conv(fast) == 17
    images = np.random.default_rng(1).standard_normal((4, 3, 40, 40))
    assert_training_steps_as_accurate_as_paddles(plain, fast, images)


def test_larger_maps_take_onednn_the_smallest_and_1x1_layers_the_other_kernels(monkeypatch):
    model, _ = build_teacher(3, "none", "resnet18")
    assert use_onednn_conv(model) == 17  # the stem and sixteen 3x3 layers; three 1x1 shortcuts stay
    assert use_batched_conv(model) == 3
    operators = onednn_operators()
    calls = []
    for name in ("onednn_conv2d", "onednn_conv2d_fixed_input"):
        operator = getattr(operators, name)
        monkeypatch.setattr(operators, name, lambda x, *args, _op=operator: calls.append(x.shape) or _op(x, *args))
    model.train()
    model(paddle.zeros([2, 3, 96, 96])).mean().backward()
    # At 96 px: the stem's output is 48 wide, the stages' 24, 12, 6 and 3; the last stage's 3x3
    # maps stay batched (its first layer reads a 6x6 map), every other 3x3 layer is oneDNN's.
    assert sorted({shape[2] for shape in calls}) == [6, 12, 24, 96]
    assert len(calls) == 1 + 4 + 4 + 4
    assert sum(isinstance(layer, OneDNNConv2D) for layer in model.sublayers()) == 17
    assert sum(type(layer) is BatchedConv2D for layer in model.sublayers()) == 3


def test_efficientnet_lites_convolutions_stay_paddles():
    """Its stem is strided with TensorFlow's SAME padding (not one the operator takes), the rest
    depthwise or 1x1."""
    assert use_onednn_conv(build_teacher(3, "none", "efficientnet_lite0")[0]) == 0


def test_exported_model_holds_standard_operators_only(tmp_path):
    model, _ = build_teacher(5, "none", "resnet18")
    names_before = [p.name for p in model.parameters()]
    assert use_onednn_conv(model) > 0
    assert [p.name for p in model.parameters()] == names_before
    program = exported_program(model, tmp_path)
    assert "onednn" not in program and "conv2d" in program


def test_a_failed_build_keeps_paddles_kernels_with_a_note(tmp_path, monkeypatch, capsys):
    break_the_build(onednn_conv, tmp_path, monkeypatch)
    model, _ = build_teacher(3, "none", "resnet18")
    assert use_onednn_conv(model) == 0
    note = capsys.readouterr().out
    assert "note: the oneDNN convolution could not be built" in note and "--fast_depthwise off" in note
    assert not any(isinstance(layer, OneDNNConv2D) for layer in model.sublayers())
    model(paddle.randn([2, 3, 32, 32])).mean().backward()  # Paddle's own kernels train


def test_an_operator_that_disagrees_with_paddle_is_not_used(monkeypatch, capsys):
    real = onednn_operators()

    class Wrong:
        """A build whose convolution is off by one: as a oneDNN with another interface could be."""

        @staticmethod
        def onednn_conv2d(x, w, stride, padding):
            return real.onednn_conv2d(x, w, stride, padding) + 1

    monkeypatch.setattr(onednn_conv, "compiled", lambda *args: Wrong)
    assert onednn_conv.onednn_operators() is None
    assert "note: the oneDNN convolution disagreed with Paddle's" in capsys.readouterr().out
