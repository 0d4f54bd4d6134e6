"""Learning from photos nobody labelled (--unlabeled_dir): the teacher labels them, the student
learns its answers on them (the distillation term only), a copy of a labelled image is left out,
stored views of them replay exactly, and runs with them train, report and resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import paddle
import pytest

import main
from models.teacher import adapt_inputs, build_teacher, freeze_teacher
from models.weights import IMAGENET
from tests.conftest import make_class_folders, tiny_run_args, write_image
from utils.data.dataset import UNLABELED, ImageDataset, LabelledAndUnlabeledSampler, with_unlabeled
from utils.data.mixing import MixedTargets
from utils.data.transforms import build_train_transform
from utils.distill.methods import DKD, KL
from utils.distill.view_cache import label_views
from utils.engine.losses import HardLabelLoss
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml


def test_unlabeled_images_never_reach_the_hard_label_loss():
    rng = np.random.default_rng(0)
    logits = paddle.to_tensor(rng.standard_normal((4, 3)).astype("float32"), stop_gradient=False)
    labels = paddle.to_tensor(np.array([0, UNLABELED, 2, UNLABELED]))
    loss = HardLabelLoss(label_smoothing=0.1)(logits, MixedTargets(labels, labels, 1.0))
    labelled = HardLabelLoss(label_smoothing=0.1)(logits[::2], MixedTargets(labels[::2], labels[::2], 1.0))
    np.testing.assert_allclose(float(loss), float(labelled), rtol=1e-6)
    (gradient,) = paddle.grad(loss, [logits])
    assert np.all(gradient.numpy()[1::2] == 0) and np.abs(gradient.numpy()[::2]).sum() > 0
    # The distillation term reaches them: KL's gradient does.
    teacher = paddle.to_tensor(rng.standard_normal((4, 3)).astype("float32"))
    for method in (KL(HardLabelLoss(), 0.5, 4.0), DKD(HardLabelLoss(), 1.0, 8.0, 4.0, 0)):
        (gradient,) = paddle.grad(method(logits, teacher, MixedTargets(labels, labels, 1.0), 1).total, [logits])
        assert np.abs(gradient.numpy()[1]).sum() > 0
    only_unlabeled = paddle.to_tensor(np.array([UNLABELED, UNLABELED]))
    assert float(HardLabelLoss()(logits[:2], MixedTargets(only_unlabeled, only_unlabeled, 1.0))) == 0.0


def test_each_epoch_serves_every_labelled_image_and_the_ratio_of_unlabeled_ones():
    labels = np.array([0, 1, 2, 0, 1, 2] + [UNLABELED] * 20)
    sampler = LabelledAndUnlabeledSampler(labels, ratio=2.0, batch_size=4, seed=(1, 2))
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        served = [index for batch in sampler for index in batch]
        # 6 labelled and 12 unlabeled ones make 18, filled up to 5 whole batches: 20 different images
        assert len(served) == 20 and set(range(6)) <= set(served) and len(set(served)) == 20
        epochs.append(served)
    assert epochs[0] != epochs[1]  # fresh unlabeled ones, drawn by the epoch
    sampler.set_epoch(1)
    assert [index for batch in sampler for index in batch] == epochs[1]  # as a resumed run draws them


def test_stored_views_of_unlabeled_images_replay_what_the_teacher_sees(tmp_path):
    """Their views are labelled with the training split's (also through a teacher with a resolution
    of its own, which Paddle Inference cannot export: it labels in the dynamic graph then)."""
    cfg = build_config({**read_yaml(DEFAULT_CONFIG), "data_dir": "x", "img_size": 32})
    rng = np.random.default_rng(0)
    labelled = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(4)]
    unlabeled = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    images, labels = with_unlabeled(labelled, np.array([0, 1, 2, 0]), unlabeled)
    dataset = ImageDataset(images, labels, build_train_transform(cfg.augment, 32, IMAGENET), (42, 0, 1), 2)
    teacher, _ = build_teacher(3, "imagenet", "efficientnet_lite0")
    freeze_teacher(teacher)
    adapt_inputs(teacher, "efficientnet_lite0", IMAGENET, 48)
    stored = label_views(teacher, dataset, 2, 32, "cpu")
    assert stored.shape == (2, 7, 3)
    for view in range(2):
        dataset.set_epoch(view)
        for index in (4, 6):  # unlabeled
            image, label, served_index, served_view = dataset[index]
            assert label == UNLABELED and served_index == index and served_view == view
            with paddle.no_grad():
                expected = teacher(paddle.to_tensor(image[None])).numpy()[0]
            np.testing.assert_allclose(stored[view, index], expected, rtol=2e-3, atol=2e-3)


@pytest.fixture
def photos(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=8)
    pool = make_class_folders(tmp_path / "pool", per_class=5, seed=5)
    unlabeled = tmp_path / "unlabeled"
    for path in pool.rglob("*.png"):  # class folders in it are not labels
        target = unlabeled / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    shutil.copy(data / "red" / "red_0.png", unlabeled / "copy_of_red_0.png")
    shutil.copy(pool / "blue" / "blue_0.png", unlabeled / "blue_0_again.png")
    (unlabeled / "notes.txt").write_text("not an image")
    return data, unlabeled


@pytest.mark.parametrize("cache", ["views", "off"])
def test_a_run_learns_from_unlabeled_photos_and_leaves_out_copies(photos, tmp_path, cache, capsys):
    data, unlabeled = photos
    args = tiny_run_args(data, tmp_path, "u", "--kd", "kl", "--teacher_cache", cache, "--unlabeled_dir",
                         str(unlabeled), "--baseline", "--final_model", "true", "--epochs", "2")
    assert main.main(args) == 0
    out = capsys.readouterr().out
    assert "24 images in 3 classes" in out and "15 unlabeled images from" in out
    run_dir = tmp_path / "models_saved" / "u"
    skipped = (run_dir / "skipped.txt").read_text()
    assert "copy_of_red_0.png\tthe same image as the labelled red/red_0.png" in skipped
    assert ": counted once" in skipped and "blue_0" in skipped and "notes.txt\tnot an image file" in skipped
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["unlabeled"]["images"] == 15
    assert summary["verdict"]["sentence"].startswith(("the unlabeled photos", "cannot tell whether the unlabeled"))
    assert all(fold["n_train"] == 12 for fold in summary["folds"])  # the labelled ones
    report = (run_dir / "report.md").read_text()
    assert "## Did the unlabeled photos help?" in report and "Unlabeled photos: 15 from" in report
    final = json.loads((run_dir / "final" / "best.json").read_text())
    assert final["trained_on"] == 24 and final["unlabeled"] == 15


def test_a_run_with_unlabeled_photos_resumes(photos, tmp_path, capsys):
    data, unlabeled = photos
    args = tiny_run_args(data, tmp_path, "r", "--kd", "kl", "--teacher_cache", "views", "--unlabeled_dir",
                         str(unlabeled), "--epochs", "3", "--folds", "0")
    assert main.main(args) == 0  # fold 1 is left for later
    run_dir = tmp_path / "models_saved" / "r"
    assert (run_dir / "fold0" / "result.json").is_file() and not (run_dir / "summary.json").exists()
    capsys.readouterr()
    assert main.main(["--resume", "r", "--output_dir", str(tmp_path / "models_saved"), "--folds", "1"]) == 0
    out = capsys.readouterr().out
    assert "15 unlabeled images from" in out and "fold 0 teacher views" not in out
    assert json.loads((run_dir / "summary.json").read_text())["unlabeled"]["images"] == 15


def test_unlabeled_photos_inside_the_class_folders_are_refused(photos, tmp_path, capsys):
    data, _ = photos
    inside = data / "more"
    write_image(inside / "x.png", np.zeros((20, 20, 3), np.uint8))
    code = main.main(tiny_run_args(data, tmp_path, "in", "--unlabeled_dir", str(inside)))
    assert code == 2 and "is inside --data_dir" in capsys.readouterr().err
    assert not (tmp_path / "models_saved").exists()
