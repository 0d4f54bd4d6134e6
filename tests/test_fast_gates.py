"""MobileNetV3's gates as compiled operators: the same outputs and gradients as Paddle's
layers for every gate of both MobileNetV3 students, standard operators in exported models,
and Paddle's kernels, with a note, where the operators cannot be built."""
from __future__ import annotations

import copy

import numpy as np
import paddle
import pytest

import kernels.fast_gates as fast_gates
from kernels.fast_gates import FastHardswish, FastSqueezeExcitation, use_fast_gates
from models.student import build_student
from tests.kernel_checks import assert_training_steps_as_accurate_as_paddles, break_the_build, exported_program


@pytest.mark.parametrize("name,size", [("mobilenet_v3_small", 112), ("mobilenet_v3_large", 64)])
def test_every_gate_gives_paddles_outputs_and_gradients(name, size):
    paddle.seed(0)
    plain = build_student(name, 6)
    fast = copy.deepcopy(plain)
    names_before = [p.name for p in fast.parameters()]
    switched = use_fast_gates(fast)
    assert switched == sum(isinstance(layer, (FastHardswish, FastSqueezeExcitation)) for layer in fast.sublayers())
    assert switched > 10 and [p.name for p in fast.parameters()] == names_before
    images = np.random.default_rng(1).standard_normal((4, 3, size, size))
    assert_training_steps_as_accurate_as_paddles(plain, fast, images, steps=1)


def test_hardswish_gradient_at_its_corners_is_paddles():
    x = paddle.to_tensor([-4.0, -3.0, -1.5, 0.0, 2.999, 3.0, 5.0], stop_gradient=False)
    (expected,) = paddle.grad(paddle.nn.functional.hardswish(x), [x])
    (actual,) = paddle.grad(fast_gates.gate_operators().fast_hardswish(x), [x])
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6)


def test_exported_model_holds_standard_operators_only(tmp_path):
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    assert use_fast_gates(model) > 0
    program = exported_program(model, tmp_path)
    assert "channel_scale" not in program and "fast_hardswish" not in program and "hardswish" in program


def test_a_failed_build_keeps_paddles_kernels_with_a_note(tmp_path, monkeypatch, capsys):
    break_the_build(fast_gates, tmp_path, monkeypatch)
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    assert use_fast_gates(model) == 0
    note = capsys.readouterr().out
    assert "note: the fast gate operators could not be built" in note and "--fast_depthwise off" in note
    assert not any(isinstance(layer, FastHardswish) for layer in model.sublayers())
    model(paddle.randn([2, 3, 32, 32])).mean().backward()  # Paddle's own kernels train
