"""The teacher sees exactly the student's (mixed) images, and never changes while it teaches."""
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from models.teacher import build_teacher, freeze_teacher
from utils.data.dataset import ImageDataset, make_loader
from utils.data.mixing import mixup
from utils.distill.methods import KL
from utils.distill.signal import LiveTeacher
from utils.engine.loops import TrainingDiverged, TrainingSettings, train_one_epoch
from utils.engine.losses import HardLabelLoss
from utils.engine.optimization import build_optimizer, warmup_cosine


class Recorder(nn.Layer):
    """A small classifier that remembers every batch it was given."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.AdaptiveAvgPool2D(1),
                                 nn.Flatten(), nn.Linear(4, num_classes))
        self.inputs: list[np.ndarray] = []

    def forward(self, x):
        self.inputs.append(x.numpy().copy())
        return self.net(x)


def _loader(n=12, batch=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = list(rng.normal(size=(n, 3, size, size)).astype("float32"))
    labels = rng.integers(0, 3, size=n).astype("int64")
    return make_loader(ImageDataset(images, labels, transform=lambda image: image), batch, train=True, num_workers=0)


def _settings(mixup_alpha=0.4, cutmix_alpha=0.0):
    return TrainingSettings(0.01, 1, 0, 0.01, mixup_alpha, False, None, cutmix_alpha)


def _one_epoch(student, teacher, loader, mixup_alpha=0.4, cutmix_alpha=0.0):
    schedule = warmup_cosine(0.01, 1, 0, len(loader))
    optimizer = build_optimizer(student, schedule, 0.01)
    return train_one_epoch(student, LiveTeacher(teacher), loader, optimizer, schedule, KL(HardLabelLoss(), 0.5, 4.0),
                           _settings(mixup_alpha, cutmix_alpha), np.random.default_rng(0),
                           paddle.amp.GradScaler(enable=False), epoch=1)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.4, 0.0), (0.0, 1.0)])
def test_teacher_sees_the_same_mixed_batch_as_the_student(mixup_alpha, cutmix_alpha):
    student, teacher = Recorder(), Recorder()
    freeze_teacher(teacher)
    loader = _loader()
    _one_epoch(student, teacher, loader, mixup_alpha, cutmix_alpha)
    assert len(teacher.inputs) == len(student.inputs) == len(loader)
    for seen_by_teacher, seen_by_student in zip(teacher.inputs, student.inputs):
        np.testing.assert_array_equal(seen_by_teacher, seen_by_student)
    # And the batches really were mixed: no batch equals an unmixed input batch.
    originals = {row.tobytes() for images, *_ in loader for row in images.numpy()}
    assert not all(row.tobytes() in originals for batch in student.inputs for row in batch)


def test_mixup_uses_one_lambda_and_pairing_for_images_and_labels():
    images = paddle.to_tensor(np.arange(4, dtype="float32").reshape(4, 1, 1, 1))
    labels = paddle.to_tensor(np.array([0, 1, 2, 3]))
    mixed, targets = mixup(images, labels, 0.4, np.random.default_rng(3))
    lam = targets.lam
    partner = targets.labels_b.numpy()  # the labels are the indices here, so also the pairing
    expected = lam * np.arange(4) + (1 - lam) * partner
    np.testing.assert_allclose(mixed.numpy().ravel(), expected, rtol=1e-6)
    np.testing.assert_array_equal(targets.labels_a.numpy(), [0, 1, 2, 3])


def test_a_loss_that_is_not_finite_stops_training_with_advice():
    class NanLoss(KL):
        def __call__(self, student_logits, teacher_logits, targets, epoch):
            loss = super().__call__(student_logits, teacher_logits, targets, epoch)
            loss.total = loss.total * float("nan")
            return loss

    student, teacher = Recorder(), Recorder()
    loader = _loader()
    schedule = warmup_cosine(0.01, 1, 0, len(loader))
    optimizer = build_optimizer(student, schedule, 0.01)
    with pytest.raises(TrainingDiverged, match="the loss became nan at step 1.*try a lower --lr"):
        train_one_epoch(student, LiveTeacher(teacher), loader, optimizer, schedule, NanLoss(HardLabelLoss(), 0.5, 4.0),
                        _settings(0.0), np.random.default_rng(0), paddle.amp.GradScaler(enable=False), epoch=1)


def test_frozen_teacher_does_not_change_during_distillation():
    teacher, _ = build_teacher(3, "none")
    freeze_teacher(teacher)
    before = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    student = Recorder()
    stats = _one_epoch(student, teacher, _loader(size=32))
    assert stats.parts["kl"] > 0
    after = teacher.state_dict()
    # Parameters and BatchNorm running statistics alike.
    for name, value in before.items():
        np.testing.assert_array_equal(value, after[name].numpy(), err_msg=name)
    assert not teacher.training


@pytest.mark.parametrize("method,extra", [
    ("dkd", ["--teacher_cache", "views", "--teacher_views", "2"]),
    ("dist", ["--cutmix_alpha", "1.0", "--ema_decay", "0.9", "--auto_augment", "trivialaugment",
              "--label_smoothing", "0.1", "--class_weights", "balanced", "--clip_grad_norm", "1.0"]),
])
def test_a_tiny_run_with_each_method_logs_its_parts_and_gives_a_verdict(method, extra, tiny_data, tmp_path, capsys):
    import json

    import main
    from tests.conftest import tiny_run_args

    args = tiny_run_args(tiny_data, tmp_path, method, "--kd", method, "--baseline", "--epochs", "2", *extra)
    assert main.main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "models_saved" / method
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"]["outcome"] in ("helped", "did not help", "cannot tell")
    assert summary["verdict"]["sentence"] in out
    assert len(summary["verdict"]["differences"]) == 2
    parts = {"dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"}}[method]
    history = json.loads((run_dir / "fold0" / "history.json").read_text())
    assert set(history["student"][-1]["train_parts"]) == parts
    assert set(history["baseline"][-1]["train_parts"]) == {"ce"}
    assert "Did distillation help?" in (run_dir / "report.md").read_text()
