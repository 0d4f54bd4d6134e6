"""Feature distillation, the temperature schedule and the Grad-CAM agreement: each against a
hand computation, the teacher's stored features against its live ones, and tiny runs with
feature distillation from the view cache and with the teacher in the loop."""
import json
import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

import main
from models.student import build_student, head_name
from models.teacher import build_teacher, last_stage
from models.weights import IMAGENET
from tests.conftest import tiny_run_args
from utils.data.dataset import ImageDataset, make_loader
from utils.data.mixing import MixedTargets, mixup
from utils.data.transforms import build_train_transform
from utils.deploy.explain import cam_agreement, grad_cam, grad_cams, map_correlation
from utils.distill.features import FeatureDistillation, FitNet, LogitsAndFeatures
from utils.distill.methods import DIST, TemperatureSchedule, create_method
from utils.distill.signal import LiveTeacher, StoredViews
from utils.distill.view_cache import label_views
from utils.engine.losses import HardLabelLoss, LossParts
from utils.pipeline.demo import resolve_run_config


def test_fitnet_loss_and_projection_match_a_hand_computation():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(4, 5)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    paddle.seed(0)
    fitnet = FitNet(5, 3, feature_kd_weight=0.5)
    weight, bias = fitnet.projection.weight.numpy(), fitnet.projection.bias.numpy()  # Paddle: (in, out)
    projected = student @ weight + bias
    expected = ((projected - teacher) ** 2).mean() / (teacher**2).mean()
    loss = fitnet(paddle.to_tensor(student), paddle.to_tensor(teacher))
    assert float(loss.parts["feature"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss.total) == pytest.approx(0.5 * expected, rel=1e-5)
    loss.total.backward()  # the projection learns
    assert np.abs(fitnet.projection.weight.grad.numpy()).sum() > 0


def test_the_feature_term_taps_the_students_pooled_features_and_adds_to_the_loss():
    paddle.seed(0)
    student = build_student("mobilenet_v3_small", 3)
    term = FeatureDistillation(student, head_name("mobilenet_v3_small"), FitNet, 7, {"feature_kd_weight": 1.0})
    assert term.tap.dim == 576  # MobileNetV3-Small's pooled last stage
    student(paddle.rand([2, 3, 32, 32]))
    assert term.tap.value.shape == [2, 576]
    base = LossParts(paddle.to_tensor(1.0), {"ce": paddle.to_tensor(1.0)})
    total = term.add_to(base, paddle.rand([2, 7]))
    assert set(total.parts) == {"ce", "feature"}
    assert float(total.total) == pytest.approx(1.0 + float(total.parts["feature"]), rel=1e-6)


@pytest.mark.parametrize("shape,expected", [
    ("constant", (10.0, 10.0, 10.0)),
    ("linear", (10.0, 6.0, 2.0)),
    ("cosine", (10.0, 6.0, 2.0)),
])
def test_the_temperature_schedule_at_the_first_middle_and_last_epoch(shape, expected):
    schedule = TemperatureSchedule(10.0, 2.0, shape, epochs=5)
    assert (schedule(1), schedule(3), schedule(5)) == pytest.approx(expected)


def test_the_cosine_schedule_falls_slowly_at_first_and_the_linear_one_evenly():
    linear, cosine = TemperatureSchedule(10.0, 2.0, "linear", 5), TemperatureSchedule(10.0, 2.0, "cosine", 5)
    assert linear(2) == pytest.approx(8.0)
    assert cosine(2) == pytest.approx(2.0 + 8.0 * (1 + math.cos(math.pi / 4)) / 2)


def test_every_method_uses_the_scheduled_temperature_and_gives_it_to_the_stored_views():
    cfg = resolve_run_config(main.parse_args(["--data_dir", "x", "--kd", "dist", "--dist_temperature", "8",
                                              "--temperature_schedule", "linear", "--temperature_end", "2",
                                              "--epochs", "4"]))
    method = create_method(cfg.distill, HardLabelLoss(), cfg.optim.epochs)
    assert isinstance(method, DIST)
    assert [method.temperature_at(e) for e in (1, 4)] == pytest.approx([8.0, 2.0])
    assert create_method(cfg.distill, HardLabelLoss(), 7).temperature_at(7) == pytest.approx(2.0)  # the final student's

    rng = np.random.default_rng(0)
    logits = paddle.to_tensor(rng.normal(size=(3, 4)).astype("float32"))
    teacher = paddle.to_tensor(rng.normal(size=(3, 4)).astype("float32"))
    targets = MixedTargets(paddle.to_tensor(np.array([0, 1, 2])), paddle.to_tensor(np.array([0, 1, 2])), 1.0)
    fixed = DIST(HardLabelLoss(), 2.0, 2.0, 2.0)
    assert float(method(logits, teacher, targets, 4).total) == pytest.approx(float(fixed(logits, teacher, targets,
                                                                                          1).total), rel=1e-5)


class _TinyResNetLike(nn.Layer):
    """A teacher shaped like paddle.vision's ResNet at its end: pooled features into `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2D(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x))


def test_stored_features_replay_the_teachers_features_of_that_very_view():
    paddle.seed(0)
    teacher = _TinyResNetLike()
    teacher.eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 28, 3), dtype=np.uint8) for _ in range(10)]
    cfg = resolve_run_config(main.parse_args(["--data_dir", "x", "--img_size", "32"]))
    transform = build_train_transform(cfg.augment, cfg.data.img_size, IMAGENET)
    dataset = ImageDataset(images, np.arange(10) % 3, transform, (42, 0, 1), views=2)
    live = LiveTeacher(teacher, 3, features_from="fc")
    assert live.feature_dim == 8 and isinstance(teacher.fc, LogitsAndFeatures)
    stored = label_views(teacher, dataset, 2, 32, "cpu")
    assert stored.shape == (2, 10, 3 + 8)
    replay = StoredViews(np.ascontiguousarray(stored[..., :3]), lambda epoch: 4.0,
                         np.ascontiguousarray(stored[..., 3:]))
    assert replay.feature_dim == 8
    loader = make_loader(dataset, 4, train=True, num_workers=0)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for batch, labels, indices, views in loader:
            unmixed = MixedTargets(labels, labels, 1.0)
            expected = live(batch, indices, views, unmixed, epoch + 1)
            replayed = replay(batch, indices, views, unmixed, epoch + 1)
            np.testing.assert_allclose(replayed.features.numpy(), expected.features.numpy(), rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(replayed.logits.numpy(), expected.logits.numpy(), rtol=2e-3, atol=2e-3)
    # Mixed images get their two images' features mixed with the same lambda.
    batch, labels, indices, views = next(iter(loader))
    mixed, targets = mixup(batch, labels, 0.4, np.random.default_rng(3))
    features = replay(mixed, indices, views, targets, 1).features.numpy()
    own = replay(batch, indices, views, MixedTargets(labels, labels, 1.0), 1).features.numpy()
    np.testing.assert_allclose(features, targets.lam * own + (1 - targets.lam) * own[targets.perm.numpy()], rtol=1e-5)


def test_grad_cam_agreement_is_one_for_identical_maps_and_models():
    cam = np.random.default_rng(0).random((8, 8))
    assert map_correlation(cam, cam) == pytest.approx(1.0)
    assert map_correlation(cam, 1 - cam) == pytest.approx(-1.0)
    assert map_correlation(cam, np.zeros_like(cam)) == 0.0
    paddle.seed(0)
    student = build_student("mobilenet_v3_small", 3)
    images = np.random.default_rng(0).normal(size=(3, 3, 96, 96)).astype("float32")  # 3x3 last maps
    maps, classes = grad_cams(student, images)
    assert cam_agreement(student, maps, classes, images) == pytest.approx(1.0, abs=1e-5)


def test_grad_cam_of_a_batch_equals_grad_cam_of_each_image(monkeypatch):
    """One backward pass for many images (in chunks) gives each image its own map."""
    import utils.deploy.explain as explain

    monkeypatch.setattr(explain, "CAM_BATCH", 3)  # 5 images: a full chunk and a short one
    paddle.seed(0)
    teacher, _ = build_teacher(3, "none", "resnet18")
    images = np.random.default_rng(1).normal(size=(5, 3, 96, 96)).astype("float32")  # 3x3 last maps
    maps, classes = grad_cams(teacher, images, stage=last_stage(teacher))
    assert maps.shape == (5, 96, 96)
    for image, batch_map, predicted in zip(images, maps, classes):
        single_map, single_class = grad_cam(teacher, image, stage=last_stage(teacher))
        assert single_class == predicted
        np.testing.assert_allclose(batch_map, single_map, atol=1e-4)
        assert batch_map.max() == pytest.approx(1.0) and batch_map.min() == pytest.approx(0.0)


@pytest.mark.parametrize("cache", ["views", "off"])
def test_a_tiny_run_with_feature_distillation(tiny_data, tmp_path, cache):
    code = main.main(tiny_run_args(tiny_data, tmp_path, f"features-{cache}", "--kd", "dist", "--feature_kd", "fitnet",
                                   "--teacher_cache", cache, "--baseline", "--epochs", "2",
                                   "--temperature_schedule", "linear", "--temperature_end", "1",
                                   "--img_size", "96"))  # Grad-CAM needs last maps of 3x3 or more
    assert code == 0
    run = tmp_path / "models_saved" / f"features-{cache}"
    history = json.loads((run / "fold0" / "history.json").read_text())
    feature_terms = [epoch["train_parts"]["feature"] for epoch in history["student"]]
    assert len(feature_terms) == 2 and all(math.isfinite(term) and term > 0 for term in feature_terms)
    summary = json.loads((run / "summary.json").read_text())
    assert -1.0 <= summary["student_cam_agreement_mean"] <= 1.0
    assert -1.0 <= summary["baseline_cam_agreement_mean"] <= 1.0
    if cache == "views":
        assert list((tmp_path / "models_saved" / "teachers").glob("*.features-*.npy"))
