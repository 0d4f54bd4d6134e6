"""Checks shared by the tests of the CPU speed-ups (compiled operators, batched convolution):
the error against Paddle's own result, a whole model's outputs and gradients, the loss curve
of a short training, exported models that hold standard operators only, and a compiled
operator whose build fails."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

import models.compiled_ops as compiled_ops
from utils.deploy.export import exported_model_file, save_inference_model
from utils.deploy.inference import InferencePredictor


def layer_shapes(model: paddle.nn.Layer, img_size: int, switched: Callable[[paddle.nn.Layer], bool],
                 describe: Callable[[paddle.nn.Layer, list[int], list[int]], Optional[tuple]]) -> set[tuple]:
    """What `describe(layer, input shape, output shape)` says of each layer of `model` that
    `switched` accepts, in one forward pass at `img_size` (None: left out)."""
    shapes = set()

    def record(layer, inputs, output):
        shape = describe(layer, inputs[0].shape, output.shape)
        if shape is not None:
            shapes.add(shape)

    hooks = [layer.register_forward_post_hook(record) for layer in model.sublayers() if switched(layer)]
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 3, img_size, img_size]))
    for hook in hooks:
        hook.remove()
    return shapes


def relative_error(actual: paddle.Tensor, expected: paddle.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clip(min=1e-12))


def outputs_and_gradients(model: paddle.nn.Layer, images: paddle.Tensor) -> list[np.ndarray]:
    """`model`'s logits for `images` in training mode and every parameter's gradient of a
    weighted sum of them."""
    model.train()
    paddle.seed(3)  # dropout drops the same units
    logits = model(images)
    (logits * paddle.arange(logits.shape[1], dtype="float32")).sum().backward()
    found = [logits.numpy()] + [p.grad.numpy() for p in model.parameters() if p.grad is not None]
    model.clear_gradients()
    return found


def assert_same_outputs_and_gradients(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """outputs_and_gradients' results agree. Gradients that batch norm makes nearly zero differ
    in the order of their sums' terms only: their tolerance is set by the largest gradient."""
    scale = max(np.abs(grad).max() for grad in expected[1:])
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(actual[1:], expected[1:], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * scale)


def train_losses(build: Callable[[], paddle.nn.Layer], switch: Optional[Callable[[paddle.nn.Layer], int]],
                 img_size: int, steps: int = 4) -> list[float]:
    """The losses of `steps` AdamW steps of the model `build` gives (seeded, so that every call
    starts from the same weights), its layers first switched by `switch` when given."""
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = build()
    if switch is not None:
        assert switch(model) > 0
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters())
    rng = np.random.default_rng(1)
    model.train()
    losses = []
    for _ in range(steps):
        images = paddle.to_tensor(rng.standard_normal((8, 3, img_size, img_size)).astype("float32"))
        labels = paddle.to_tensor(rng.integers(0, 4, 8))
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    return losses


def exported_program(model: paddle.nn.Layer, out_dir: Path) -> str:
    """`model` exported at 32 px to `out_dir`, checked to give the dynamic graph's logits through
    Paddle Inference; the exported program's text."""
    model.eval()
    images = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype("float32")
    with paddle.no_grad():
        dynamic = model(paddle.to_tensor(images)).numpy()
    save_inference_model(model, 32, out_dir)
    predictor = InferencePredictor(exported_model_file(out_dir), out_dir / "model.pdiparams", False, 1)
    np.testing.assert_allclose(predictor.logits(images), dynamic, rtol=1e-4, atol=1e-5)
    return exported_model_file(out_dir).read_text(encoding="utf-8")


def break_the_build(module: ModuleType, tmp_path: Path, monkeypatch) -> None:
    """Make `module`'s compiled operators fail to build. The broken source is named apart from
    the real one, whose module this process may have loaded (and cached)."""
    broken = f"broken_{module.SOURCE_NAME}"
    (tmp_path / broken).write_text("this is not C++\n")
    monkeypatch.setattr(module, "SOURCE_NAME", broken)
    monkeypatch.setattr(compiled_ops, "CSRC", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
