"""The compiled depthwise convolution: the same outputs and gradients as Paddle's
kernel for every depthwise layer of the students, the same training, standard
operators in exported models, and Paddle's kernel when it cannot be built."""
from __future__ import annotations

import copy

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

import kernels.compiled_ops as compiled_ops
import kernels.fast_depthwise as fast_depthwise
from kernels.fast_depthwise import FastDepthwiseConv2D, fast_depthwise_operator, is_supported, use_fast_depthwise
from models.student import build_student
from tests.kernel_checks import (
    assert_operator_as_accurate_as_paddles,
    assert_training_steps_as_accurate_as_paddles,
    break_the_build,
    exported_program,
    layer_shapes,
)

STUDENTS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def depthwise_shapes(name: str, img_size: int) -> set[tuple[int, int, int, int, int]]:
    """(channels, height, width, kernel, stride) of every depthwise layer of `name` at `img_size`."""
    def describe(layer, x, y):
        return x[1], x[2], x[3], layer._kernel_size[0], layer._stride[0]

    return layer_shapes(build_student(name, 6), img_size, is_supported, describe)


@pytest.mark.parametrize("name", STUDENTS)
def test_outputs_and_gradients_match_paddles_depthwise_convolution(name):
    operator = fast_depthwise_operator()
    assert operator is not None, "the fast depthwise convolution did not build on this machine"
    shapes = depthwise_shapes(name, 32) | depthwise_shapes(name, 64) | depthwise_shapes(name, 45)
    assert {kernel for *_, kernel, _ in shapes} >= ({3, 5} if name != "mobilenet_v2" else {3})
    assert {stride for *_, stride in shapes} == {1, 2}
    assert any(h % 2 for _, h, *_ in shapes), "odd sizes are covered"
    rng = np.random.default_rng(0)
    for channels, height, width, kernel, stride in sorted(shapes):
        arrays = [rng.standard_normal((2, channels, height, width)), rng.standard_normal((channels, 1, kernel, kernel))]

        def paddles(x, weight, kernel=kernel, stride=stride, channels=channels):
            return F.conv2d(x, weight, stride=stride, padding=kernel // 2, groups=channels)

        def fast(x, weight, stride=stride):
            return operator(x, weight, stride)

        assert_operator_as_accurate_as_paddles(fast, paddles, arrays, (channels, height, width, kernel, stride))


def test_training_steps_give_paddles_outputs_and_gradients():
    paddle.seed(0)
    plain = build_student("mobilenet_v3_small", 4, width=0.5)
    fast = copy.deepcopy(plain)
    assert use_fast_depthwise(fast) > 0
    images = np.random.default_rng(1).standard_normal((8, 3, 33, 33))
    assert_training_steps_as_accurate_as_paddles(plain, fast, images)


def test_the_switch_keeps_parameters_and_exported_models_hold_standard_operators(tmp_path):
    model = build_student("mobilenet_v3_small", 5, width=0.5)
    names_before = [p.name for p in model.parameters()]
    switched = use_fast_depthwise(model)
    assert switched == sum(isinstance(layer, FastDepthwiseConv2D) for layer in model.sublayers()) > 0
    assert [p.name for p in model.parameters()] == names_before
    program = exported_program(model, tmp_path)
    assert "fast_depthwise" not in program
    assert "depthwise_conv2d" in program


def test_a_failed_build_falls_back_to_paddles_kernel_with_a_note(tmp_path, monkeypatch, capsys):
    break_the_build(fast_depthwise, tmp_path, monkeypatch)
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    assert use_fast_depthwise(model) == 0
    note = capsys.readouterr().out
    assert "note: the fast depthwise convolution could not be built" in note
    assert "--fast_depthwise off" in note
    assert not any(isinstance(layer, FastDepthwiseConv2D) for layer in model.sublayers())
    loss = model(paddle.randn([2, 3, 32, 32])).mean()
    loss.backward()  # Paddle's own kernel trains


def test_only_depthwise_layers_it_computes_are_switched():
    assert is_supported(nn.Conv2D(8, 8, 3, padding=1, groups=8, bias_attr=False))
    assert is_supported(nn.Conv2D(8, 8, 5, stride=2, padding=2, groups=8, bias_attr=False))
    assert not is_supported(nn.Conv2D(8, 8, 3, padding=1, bias_attr=False))  # not depthwise
    assert not is_supported(nn.Conv2D(8, 16, 3, padding=1, groups=8, bias_attr=False))  # channel multiplier
    assert not is_supported(nn.Conv2D(8, 8, 3, padding=0, groups=8, bias_attr=False))
    assert not is_supported(nn.Conv2D(8, 8, 3, padding=1, groups=8))  # with a bias
    assert not is_supported(nn.Conv2D(8, 8, 3, padding=2, dilation=2, groups=8, bias_attr=False))
    assert not is_supported(nn.Conv2D(8, 8, 4, padding=2, groups=8, bias_attr=False))


def test_two_checkouts_share_one_build(tmp_path):
    """The build is keyed by the source's content, not its path: a second copy of the project
    (another checkout, a fresh clone) loads the same build without compiling again."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = compiled_ops.CSRC / fast_depthwise.SOURCE_NAME
    directory = compiled_ops.build_directory(source)

    def build_from(source: Path) -> None:  # in a process of its own, as a run of each checkout would
        code = (f"import sys; sys.path.insert(0, {str(root)!r}); import kernels.compiled_ops as c; "
                f"from pathlib import Path; c.build_operators(Path({str(source)!r}), Path({str(directory)!r}))")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)

    build_from(source)
    built = sorted(directory.rglob("*.so"))
    stamps = [path.stat().st_mtime_ns for path in built]
    other_checkout = tmp_path / "other" / "models" / "csrc" / source.name
    other_checkout.parent.mkdir(parents=True)
    other_checkout.write_bytes(source.read_bytes())
    assert compiled_ops.build_directory(other_checkout) == directory
    build_from(other_checkout)
    assert built and [path.stat().st_mtime_ns for path in sorted(directory.rglob("*.so"))] == stamps


def test_a_finished_build_loads_without_paddles_builder():
    """Paddle's `load` runs its builder in a new Python process even when nothing changed (about
    1 s per operator library, in every fold worker of every run): once a build has finished,
    later processes load its library directly."""
    import subprocess
    import sys
    from pathlib import Path

    assert fast_depthwise.fast_depthwise_operator() is not None  # built, or found built
    root = Path(__file__).resolve().parent.parent
    source = compiled_ops.CSRC / fast_depthwise.SOURCE_NAME
    code = ("import sys; sys.path.insert(0, {root!r}); import paddle.utils.cpp_extension as builder\n"
            "def no_builder(*args, **kwargs): raise AssertionError('the builder ran')\n"
            "builder.load = no_builder\n"
            "import kernels.compiled_ops as c; from pathlib import Path\n"
            "module = c.build_operators(Path({source!r}), c.build_directory(Path({source!r})))\n"
            "print(module.fast_depthwise_conv2d.__name__)").format(root=str(root), source=str(source))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and "fast_depthwise_conv2d" in loaded.stdout, loaded.stderr[-2000:]
