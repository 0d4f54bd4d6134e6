"""Checks shared by the tests of the CPU speed-ups (compiled operators, batched convolution):
an operator's and a whole model's outputs and gradients as accurate as Paddle's own (both
measured against Paddle's float64 result), over training steps too, exported models that hold
standard operators only, and a compiled operator whose build fails."""
from __future__ import annotations

import copy
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

import numpy as np
import paddle

import kernels.compiled_ops as compiled_ops
from utils.deploy.export import exported_model_file, save_inference_model
from utils.deploy.inference import InferencePredictor

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


# Tolerances from the arithmetic, not from one CPU. A compiled operator adds the same float32
# terms as Paddle's kernel in another order (another blocking, other vector widths: oneDNN and
# MKL choose theirs per CPU at run time), so its rounding errors are not Paddle's, but of the
# same size. Both results are therefore measured against Paddle's own result in float64, and the
# operator's error may be ORDER times the larger of Paddle's own error and the typical error of
# adding the longest sum involved one term after another: for n terms of random sign, about
# sqrt(n) units of float32 rounding relative to the sum (Higham, Accuracy and Stability of
# Numerical Algorithms, section 4.2). Paddle's error alone would not do: MKL's blocked sums can be
# ten times more accurate than a sequential one (2.8e-7 against oneDNN's 2.9e-6 for the stem's
# weight gradient, 6,272 terms, on an AMD EPYC where MKL took its generic path). A real mistake
# (a stale weight, a wrong index or stride) is off by orders of magnitude more.
ORDER = 10
EPS32 = float(np.finfo(np.float32).eps)


def error_against(result: np.ndarray, exact: np.ndarray) -> float:
    """The largest difference from the float64 `exact`, relative to exact's largest magnitude."""
    return float(np.abs(result - exact).max() / max(float(np.abs(exact).max()), 1e-30))


def assert_as_accurate_as_paddles(fast: Sequence[np.ndarray], paddles: Sequence[np.ndarray],
                                  exact: Sequence[np.ndarray], terms: Sequence[int], what: object) -> None:
    """Each of the operator's float32 results (`fast`) is as accurate as Paddle's float32 result
    (`paddles`), both measured against the float64 one (`exact`); `terms`: how many terms the
    longest sum behind each result adds up."""
    for index, (got, own, want, count) in enumerate(zip(fast, paddles, exact, terms, strict=True)):
        error, paddles_error, typical = error_against(got, want), error_against(own, want), math.sqrt(count) * EPS32
        if error > ORDER * max(paddles_error, typical):
            raise AssertionError(f"{what}, result {index} {list(want.shape)}: error {error:.2e} against the float64 "
                                 f"result; Paddle's own float32 error {paddles_error:.2e}, a sum of {count} terms' "
                                 f"{typical:.2e} (allowed: {ORDER}x the larger); {machine_description()}")


def machine_description() -> str:
    """The CPU, and the instruction set and convolution kernels oneDNN chooses on it (from its
    verbose log, in a process of its own): what a failure on one kind of machine needs said."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    probe = ("import paddle; from kernels.onednn_conv import onednn_operators; ops = onednn_operators(); "
             "x = paddle.randn([2, 8, 12, 12]); x.stop_gradient = False; w = paddle.randn([8, 8, 3, 3]); "
             "w.stop_gradient = False; ops.onednn_conv2d(x, w, 1, 1).sum().backward()")
    try:
        log = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "ONEDNN_VERBOSE": "1"}).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"CPU {model}; oneDNN not probed ({error})"
    fields = [line.split(",") for line in log.splitlines() if line.startswith("onednn_verbose")]
    isa = next((part[4:] for row in fields for part in row if part.startswith("isa:")), "unknown")
    kernels = sorted({row[6] for row in fields if len(row) > 7 and row[4:6] == ["cpu", "convolution"]})
    mkl = os.environ.get("MKL_DEBUG_CPU_TYPE", "unset")
    return (f"CPU {model}; MKL_DEBUG_CPU_TYPE {mkl}; oneDNN ISA: {isa}; "
            f"oneDNN convolution kernels: {', '.join(kernels) or 'none'}")


def float64_copy(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """`model` with its parameters and buffers in float64, computed by Paddle's own kernels."""
    exact = copy.deepcopy(model)
    exact.to(dtype="float64")
    return exact


def outputs_and_gradients(model: paddle.nn.Layer, images: paddle.Tensor) -> list[np.ndarray]:
    """`model`'s logits for `images` in training mode and every parameter's gradient of a
    weighted sum of them."""
    model.train()
    paddle.seed(3)  # dropout drops the same units
    logits = model(images)
    (logits * paddle.arange(logits.shape[1], dtype=logits.dtype)).sum().backward()
    found = [logits.numpy()] + [p.grad.numpy() for p in model.parameters() if p.grad is not None]
    model.clear_gradients()
    return found


def assert_training_steps_as_accurate_as_paddles(plain: paddle.nn.Layer, fast: paddle.nn.Layer,
                                                 images: np.ndarray, steps: int = 2) -> None:
    """`fast` (a copy of `plain` with layers switched to an operator) gives outputs and
    gradients as accurate as Paddle's over `steps` steps, the weights changed in place between
    them (an operator that keeps state per shape must read the new weights).

    A loss curve would not do: AdamW's first steps move every weight by about the learning rate
    whatever its gradient's size, so the last digits of gradients near zero (which differ with
    the order of a sum's terms) decide the next losses, and one CPU's rounding grows into a 1%
    difference by the fourth step. Here every step starts from the same weights on each path."""
    exact = float64_copy(plain)
    longest = longest_sum(plain, images.shape)
    rng = np.random.default_rng(1)
    for step in range(steps):
        found = [outputs_and_gradients(model, paddle.to_tensor(images.astype(dtype)))
                 for model, dtype in ((fast, "float32"), (plain, "float32"), (exact, "float64"))]
        assert_as_accurate_as_paddles(*found, [longest] * len(found[0]), f"training step {step}")
        for parameter, same, exact_one in zip(plain.parameters(), fast.parameters(), exact.parameters(), strict=True):
            change = 0.1 * rng.standard_normal(parameter.shape)
            exact_one.set_value(exact_one.numpy() + change)
            parameter.set_value(exact_one.numpy().astype("float32"))
            same.set_value(exact_one.numpy().astype("float32"))


def longest_sum(model: paddle.nn.Layer, images_shape: Sequence[int]) -> int:
    """The most terms one sum of `model`'s forward or backward pass adds up, for a batch of
    `images_shape`: a layer's output over its inputs and taps, an input gradient over the
    outputs and taps, or a weight gradient over the batch's output positions."""
    batch, _, height, width = images_shape

    def sums(layer, x, y):
        weight = layer.weight.shape  # a convolution's [out, in / groups, kh, kw], a linear layer's [in, out]
        if len(weight) == 2:
            return weight[0], weight[1], batch
        taps = weight[2] * weight[3]
        return weight[1] * taps, weight[0] // layer._groups * taps, batch * y[2] * y[3]

    found = layer_shapes(model, height, lambda layer: isinstance(layer, (paddle.nn.Conv2D, paddle.nn.Linear)), sums)
    return max(max(lengths) for lengths in found)


def function_results(function: Callable[..., paddle.Tensor], arrays: Sequence[np.ndarray], grad_out: np.ndarray,
                     dtype: str, fixed: Sequence[int] = ()) -> list[np.ndarray]:
    """`function`'s output for `arrays` (as `dtype` tensors) and its gradients, for `grad_out`,
    with respect to every array but those at the `fixed` positions."""
    tensors = [paddle.to_tensor(array.astype(dtype), stop_gradient=index in fixed) for index, array in
               enumerate(arrays)]
    output = function(*tensors)
    wanted = [tensor for tensor in tensors if not tensor.stop_gradient]
    return [output.numpy()] + [grad.numpy() for grad in
                               paddle.grad(output, wanted, paddle.to_tensor(grad_out.astype(dtype)))]


def assert_operator_as_accurate_as_paddles(operator: Callable[..., paddle.Tensor],
                                           paddles: Callable[..., paddle.Tensor], arrays: Sequence[np.ndarray],
                                           what: object, fixed: Sequence[int] = ()) -> None:
    """`operator` and Paddle's `paddles` (the same convolution of `arrays`: input, weight and
    perhaps bias), output and gradients, measured against Paddle's in float64
    (assert_as_accurate_as_paddles)."""
    with paddle.no_grad():
        shape = paddles(*[paddle.to_tensor(array) for array in arrays]).shape
    grad_out = np.random.default_rng(7).standard_normal(shape)
    batch, _, out_height, out_width = shape
    out_channels, in_channels, kernel_height, kernel_width = arrays[1].shape
    taps = kernel_height * kernel_width
    # The output sums over inputs and taps, the input gradient over outputs and taps, the weight
    # and bias gradients over the batch's output positions.
    terms = [in_channels * taps, out_channels * taps] + [batch * out_height * out_width] * (len(arrays) - 1)
    assert_as_accurate_as_paddles(function_results(operator, arrays, grad_out, "float32", fixed),
                                  function_results(paddles, arrays, grad_out, "float32", fixed),
                                  function_results(paddles, arrays, grad_out, "float64", fixed),
                                  [count for index, count in enumerate(terms) if index - 1 not in fixed], what)


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
