"""MobileNetV3's gates as compiled operators: the same outputs and gradients as Paddle's
layers for every gate of both MobileNetV3 students, standard operators in exported models,
and Paddle's kernels, with a note, where the operators cannot be built."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

import models.compiled_ops as compiled_ops
import models.fast_gates as fast_gates
from models.fast_gates import FastHardswish, FastSqueezeExcitation, use_fast_gates
from models.student import build_student
from utils.deploy.export import exported_model_file, save_inference_model
from utils.deploy.inference import InferencePredictor


def outputs_and_gradients(model: paddle.nn.Layer, images: paddle.Tensor) -> list[np.ndarray]:
    model.train()
    paddle.seed(3)  # the classifier's dropout drops the same units
    logits = model(images)
    (logits * paddle.arange(logits.shape[1], dtype="float32")).sum().backward()
    found = [logits.numpy()] + [p.grad.numpy() for p in model.parameters() if p.grad is not None]
    model.clear_gradients()
    return found


@pytest.mark.parametrize("name,size", [("mobilenet_v3_small", 112), ("mobilenet_v3_large", 64)])
def test_every_gate_gives_paddles_outputs_and_gradients(name, size):
    paddle.seed(0)
    model = build_student(name, 6)
    images = paddle.to_tensor(np.random.default_rng(1).standard_normal((4, 3, size, size)).astype("float32"))
    plain = outputs_and_gradients(model, images)
    names_before = [p.name for p in model.parameters()]
    switched = use_fast_gates(model)
    assert switched == sum(isinstance(layer, (FastHardswish, FastSqueezeExcitation)) for layer in model.sublayers())
    assert switched > 10 and [p.name for p in model.parameters()] == names_before
    # Gradients that batch norm makes nearly zero differ in the order of their sums' terms only:
    # their tolerance is set by the largest gradient of the model.
    scale = max(np.abs(grad).max() for grad in plain[1:])
    fast = outputs_and_gradients(model, images)
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-4, atol=1e-5)
    for expected, actual in zip(plain[1:], fast[1:], strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-5 * scale)


def test_hardswish_gradient_at_its_corners_is_paddles():
    x = paddle.to_tensor([-4.0, -3.0, -1.5, 0.0, 2.999, 3.0, 5.0], stop_gradient=False)
    (expected,) = paddle.grad(paddle.nn.functional.hardswish(x), [x])
    (actual,) = paddle.grad(fast_gates.gate_operators().fast_hardswish(x), [x])
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6)


def test_exported_model_holds_standard_operators_only(tmp_path):
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    assert use_fast_gates(model) > 0
    model.eval()
    images = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype("float32")
    with paddle.no_grad():
        dynamic = model(paddle.to_tensor(images)).numpy()
    save_inference_model(model, 32, tmp_path)
    program = exported_model_file(tmp_path).read_text(encoding="utf-8")
    assert "channel_scale" not in program and "fast_hardswish" not in program and "hardswish" in program
    predictor = InferencePredictor(exported_model_file(tmp_path), tmp_path / "model.pdiparams", False, 1)
    np.testing.assert_allclose(predictor.logits(images), dynamic, rtol=1e-4, atol=1e-5)


def test_a_failed_build_keeps_paddles_kernels_with_a_note(tmp_path, monkeypatch, capsys):
    # Named apart from the real source, whose module this process may have loaded (and cached).
    (tmp_path / "broken_gates.cc").write_text("this is not C++\n")
    monkeypatch.setattr(fast_gates, "SOURCE_NAME", "broken_gates.cc")
    monkeypatch.setattr(compiled_ops, "CSRC", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    assert use_fast_gates(model) == 0
    note = capsys.readouterr().out
    assert "note: the fast gate operators could not be built" in note and "--fast_depthwise off" in note
    assert not any(isinstance(layer, FastHardswish) for layer in model.sublayers())
    model(paddle.randn([2, 3, 32, 32])).mean().backward()  # Paddle's own kernels train
