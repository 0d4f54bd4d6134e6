"""The teacher view cache replays exactly the views the teacher labelled, mixes the stored
teacher targets as the images were mixed, and is never used for another fold or setting."""
import os

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

import main
from models.teacher import freeze_teacher
from models.weights import IMAGENET
from tests.conftest import tiny_run_args
from utils.data.dataset import ImageDataset, make_loader
from utils.data.mixing import MixedTargets, mixup
from utils.data.transforms import build_train_transform
from utils.distill.signal import StoredViews
from utils.distill.teachers import teacher_cache_key
from utils.distill.view_cache import label_views, prepare_views, view_cache_path, view_count
from utils.pipeline.folds import teacher_setup
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml
from utils.runtime.errors import ConfigError


def _config(**overrides):
    return build_config({**read_yaml(DEFAULT_CONFIG), "img_size": 32, "teacher_cache": "views", **overrides})


def _dataset(n=10, views=None, seed=(42, 0, 1)):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8) for _ in range(n)]
    cfg = _config()
    transform = build_train_transform(cfg.augment, cfg.data.img_size, IMAGENET)
    return ImageDataset(images, rng.integers(0, 3, size=n), transform, seed, views)


def _prepare(cfg, teacher, teacher_is_new, dataset, teacher_path, num_classes, device):
    """prepare_views with the settings of `cfg`, as a run's fold does."""
    return prepare_views(cfg.teacher, view_count(cfg.teacher, cfg.optim.epochs), teacher, teacher_is_new, dataset,
                         teacher_path, num_classes, cfg.data.img_size, device)


def _teacher():
    paddle.seed(0)
    teacher = nn.Sequential(nn.Conv2D(3, 8, 3, stride=2), nn.BatchNorm2D(8), nn.ReLU(), nn.AdaptiveAvgPool2D(1),
                            nn.Flatten(), nn.Linear(8, 3))
    freeze_teacher(teacher)
    return teacher


def test_a_view_is_the_same_picture_every_time_and_views_differ():
    dataset = _dataset()
    dataset.set_epoch(1)
    first = dataset[3][0]
    np.random.random(), dataset[5]  # other draws in between change nothing
    np.testing.assert_array_equal(first, dataset[3][0])
    fresh = _dataset()
    fresh.set_epoch(1)
    np.testing.assert_array_equal(first, fresh[3][0])
    fresh.set_epoch(2)
    assert not np.array_equal(first, fresh[3][0])
    assert not np.array_equal(_dataset(seed=(42, 1, 1))[3][0], _dataset()[3][0])  # another fold, other views


def test_epochs_cycle_through_the_stored_views():
    dataset = _dataset(views=3)
    dataset.set_epoch(4)
    assert dataset[0][3] == 1


def test_student_batches_replay_exactly_what_the_teacher_labelled():
    """Through the training loader (shuffled, batched), every image's stored logits are the
    teacher's logits for that very image: labelled through Paddle Inference, checked in the
    dynamic graph."""
    teacher, dataset = _teacher(), _dataset(views=2)
    stored = label_views(teacher, dataset, 2, 32, "cpu")
    assert stored.shape == (2, 10, 3) and stored.dtype == np.float16
    replay = StoredViews(stored, temperature=lambda epoch: 4.0)
    loader = make_loader(dataset, 4, train=True, num_workers=0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for images, labels, indices, views in loader:
            assert (views.numpy() == epoch % 2).all()
            targets = MixedTargets(labels, labels, 1.0)
            with paddle.no_grad():
                live = teacher(images).numpy()
            replayed = replay(images, indices, views, targets, epoch + 1).logits.numpy()
            np.testing.assert_allclose(replayed, live, rtol=2e-3, atol=2e-3)


def test_mixed_teacher_targets_use_the_images_lambda_and_pairs():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 6, 4)).astype(np.float16) * 3
    temperature = 2.0
    images = paddle.to_tensor(rng.normal(size=(6, 3, 2, 2)).astype("float32"))
    labels = paddle.to_tensor(np.arange(6))
    mixed_images, targets = mixup(images, labels, 0.4, np.random.default_rng(5))
    indices, views = paddle.to_tensor(np.arange(6)), paddle.zeros([6], dtype="int64")
    out = StoredViews(logits, lambda epoch: temperature)(mixed_images, indices, views, targets, 1).logits

    probs = F.softmax(paddle.to_tensor(logits[0].astype("float32")) / temperature, axis=1).numpy()
    partner = targets.labels_b.numpy()  # labels are indices here, so also the image pairing
    expected = targets.lam * probs + (1 - targets.lam) * probs[partner]
    np.testing.assert_allclose(F.softmax(out / temperature, axis=1).numpy(), expected, rtol=1e-5, atol=1e-7)
    image_partner = (mixed_images.numpy() - targets.lam * images.numpy()) / (1 - targets.lam)
    np.testing.assert_allclose(image_partner, images.numpy()[partner], rtol=1e-4, atol=1e-4)


def test_cache_keys_separate_contents_labels_folds_settings_and_view_counts(tmp_path):
    digests, labels = [f"{i:064x}" for i in range(6)], [i % 2 for i in range(6)]
    train = np.arange(4)
    cfg = _config()
    base = teacher_cache_key(teacher_setup(cfg), digests, labels, train, 0)
    assert teacher_cache_key(teacher_setup(cfg), digests, labels, train, 1) != base
    assert teacher_cache_key(teacher_setup(cfg), digests, labels, np.arange(1, 5), 0) != base
    assert teacher_cache_key(teacher_setup(cfg), digests[::-1], labels, train, 0) != base
    assert teacher_cache_key(teacher_setup(cfg), digests, labels[::-1], train, 0) != base
    for change in ({"crop": "pad"}, {"rotation": 5.0}, {"seed": 1}, {"img_size": 48}, {"teacher": "resnet18"},
                   {"label_smoothing": 0.1}, {"auto_augment": "randaugment"}):
        assert teacher_cache_key(teacher_setup(cfg.replace(**change)), digests, labels, train, 0) != base, change
    path = tmp_path / f"{base}.pdparams"
    assert view_cache_path(path, 4) != view_cache_path(path, 5)
    assert view_cache_path(path, 4).name.startswith(base)


def test_views_are_reused_only_for_the_same_teacher_and_shape(tmp_path):
    cfg = _config(epochs=2, teacher_views=2)
    teacher, dataset = _teacher(), _dataset()
    teacher_path = tmp_path / "abc.pdparams"
    first = _prepare(cfg, teacher, True, dataset, teacher_path, 3, "cpu")
    assert not first.from_cache and first.path.is_file()
    again = _prepare(cfg, teacher, False, dataset, teacher_path, 3, "cpu")
    assert again.from_cache
    np.testing.assert_array_equal(np.asarray(again.logits), first.logits)
    # A retrained teacher labels again; so does a dataset of another size.
    assert not _prepare(cfg, teacher, True, dataset, teacher_path, 3, "cpu").from_cache
    assert not _prepare(cfg, teacher, False, _dataset(n=8), teacher_path, 3, "cpu").from_cache


def test_damaged_stored_views_or_features_are_labelled_again(tmp_path, capsys):
    cfg = _config(epochs=2, teacher_views=2)
    teacher, dataset = _teacher(), _dataset()
    teacher_path = tmp_path / "abc.pdparams"
    first = _prepare(cfg, teacher, True, dataset, teacher_path, 3, "cpu")
    first.path.write_bytes(first.path.read_bytes()[:90])  # cut short, as by a full disk
    again = _prepare(cfg, teacher, False, dataset, teacher_path, 3, "cpu")
    assert not again.from_cache and "are damaged (ValueError): not used" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(again.logits), np.asarray(first.logits))
    assert _prepare(cfg, teacher, False, dataset, teacher_path, 3, "cpu").from_cache  # repaired


def test_stored_views_stay_within_their_disk_bound(tmp_path):
    cfg = _config(epochs=2, teacher_views=2, teacher_cache_max_mb=1)
    old = [tmp_path / f"old{i}.views-x.npy" for i in range(3)]
    for i, path in enumerate(old):
        np.save(path, np.zeros(2**20 // 4, np.float16))  # 0.5 MB each
        os.utime(path, (1000 + i, 1000 + i))
    made = _prepare(cfg, _teacher(), True, _dataset(), tmp_path / "new.pdparams", 3, "cpu")
    kept = sorted(p.name for p in tmp_path.glob("*.views-*.npy"))
    assert made.path.name in kept and "old2.views-x.npy" in kept  # the newest old one survives
    assert "old0.views-x.npy" not in kept and "old1.views-x.npy" not in kept
    with pytest.raises(ConfigError, match="lower --teacher_views"):
        _prepare(cfg.replace(teacher_cache_max_mb=1), _teacher(), True, _dataset(n=10),
                      tmp_path / "big.pdparams", 2**17, "cpu")


def test_a_run_distils_from_stored_views_and_a_later_run_reuses_them(tiny_data, tmp_path, capsys):
    args = ["--teacher_cache", "views", "--teacher_views", "2", "--epochs", "2"]
    assert main.main(tiny_run_args(tiny_data, tmp_path, "views", *args)) == 0
    first = capsys.readouterr().out
    assert first.count("labelled 2 views of 15 images") == 2
    assert main.main(tiny_run_args(tiny_data, tmp_path, "views-again", *args, "--attention", "eca")) == 0
    second = capsys.readouterr().out
    assert second.count("teacher views") == 2 and second.count(": reused in") == 2
    assert (tmp_path / "models_saved" / "views-again" / "summary.json").is_file()
