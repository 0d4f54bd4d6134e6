"""The training recipe: the weight average, CutMix, RandAugment/TrivialAugment,
gradient clipping, and the recipe defaults that follow the weights setting."""
from __future__ import annotations

import argparse
import random

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from utils.data.augment import OPERATIONS, RandAugment, TrivialAugment
from utils.data.mixing import cutmix, mix_batch
from utils.data.transforms import seeded_augmentation
from utils.engine.ema import WeightAverage
from utils.engine.optimization import build_optimizer, warmup_cosine
from utils.runtime.config import DEFAULT_CONFIG, RECIPE_DIR, add_config_flags, read_yaml, resolve_config


def test_weight_average_update_arithmetic():
    layer = nn.Linear(2, 1)
    layer.weight.set_value(paddle.to_tensor([[1.0], [2.0]]))
    average = WeightAverage(layer, decay=0.9)
    start = layer.weight.numpy().copy()
    expected = start.copy()
    for step, value in enumerate([3.0, 5.0, -1.0, 0.5] * 25, start=1):
        layer.weight.set_value(paddle.full([2, 1], value))
        average.update(layer)
        d = min(0.9, (1 + step) / (10 + step))  # the ramp: 2/11, 3/12, ... until 0.9
        expected = d * expected + (1 - d) * value
        np.testing.assert_allclose(average.average["weight"].numpy(), expected, rtol=1e-6)
    assert average.current_decay() == 0.9


def test_weight_average_is_applied_for_a_while_then_the_own_weights_return():
    layer = nn.Linear(2, 2)
    average = WeightAverage(layer, decay=0.5)
    own = layer.weight.numpy().copy()
    layer.weight.set_value(paddle.zeros([2, 2]))
    average.update(layer)
    now = layer.weight.numpy().copy()
    with average.applied(layer):
        np.testing.assert_allclose(layer.weight.numpy(), average.average["weight"].numpy())
        assert not np.allclose(layer.weight.numpy(), now)
    np.testing.assert_array_equal(layer.weight.numpy(), now)
    assert not np.allclose(average.average["weight"].numpy(), own)


def test_cutmix_pastes_a_box_and_mixes_labels_by_its_exact_area():
    images = paddle.to_tensor(np.stack([np.full((1, 10, 20), i, np.float32) for i in range(4)]))
    labels = paddle.to_tensor(np.array([0, 1, 2, 3]))
    for seed in range(20):
        mixed, targets = cutmix(images, labels, 1.0, np.random.default_rng(seed))
        partner = targets.labels_b.numpy()  # labels are the image values here, so also the pairing
        for i in range(4):
            own = (mixed.numpy()[i, 0] == i)
            pasted = (mixed.numpy()[i, 0] == partner[i])
            if partner[i] == i:
                continue
            assert (own | pasted).all()
            assert own.mean() == pytest.approx(targets.lam)
        np.testing.assert_array_equal(targets.labels_a.numpy(), [0, 1, 2, 3])


def test_mix_batch_picks_mixup_or_cutmix_and_leaves_batches_alone_when_both_are_off():
    images = paddle.to_tensor(np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype("float32"))
    labels = paddle.to_tensor(np.arange(6))
    same, targets = mix_batch(images, labels, 0.0, 0.0, np.random.default_rng(0))
    assert same is images and targets.lam == 1.0 and targets.perm is None
    kinds = set()
    for seed in range(12):
        mixed, targets = mix_batch(images, labels, 0.4, 1.0, np.random.default_rng(seed))
        # CutMix leaves pixels exactly as they were somewhere; Mixup blends them all.
        unchanged = np.isclose(mixed.numpy(), images.numpy()).mean()
        kinds.add("cutmix" if unchanged > 0.01 else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("augment", [RandAugment(), TrivialAugment()])
def test_auto_augment_keeps_the_image_shape_and_replays_with_its_seed(augment):
    image = (np.random.default_rng(1).random((30, 40, 3)) * 255).astype(np.uint8)
    with seeded_augmentation(7, 0, 3):
        first = augment(image)
    with seeded_augmentation(7, 0, 3):
        again = augment(image)
    np.testing.assert_array_equal(first, again)
    outputs = []
    for seed in range(12):
        with seeded_augmentation(seed):
            outputs.append(augment(image))
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert sum(not np.array_equal(o, image) for o in outputs) >= 6


def test_every_augmentation_operation_changes_an_image_at_full_magnitude():
    image = (np.random.default_rng(2).random((24, 24, 3)) * 200 + 20).astype(np.uint8)
    random.seed(0)
    for name, operation in OPERATIONS.items():
        out = operation(image, 1.0)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert (name == "identity") == np.array_equal(out, image), name


def test_gradient_clipping_bounds_the_global_norm():
    layer = nn.Linear(4, 4, bias_attr=False)
    layer.weight.set_value(paddle.zeros([4, 4]))
    optimizer = build_optimizer(layer, warmup_cosine(1.0, 1, 0, 1), 0.0, clip_grad_norm=0.5)
    loss = (layer(paddle.full([1, 4], 100.0)) * 100).sum()
    loss.backward()
    grads = [(p, p.grad) for p in layer.parameters()]
    clipped = optimizer._grad_clip(grads)
    norm = float(paddle.sqrt(sum((g * g).sum() for _, g in clipped)))
    assert norm == pytest.approx(0.5, rel=1e-4)


def _resolve(*flags: str):
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return resolve_config(parser.parse_args(list(flags)))


def test_recipe_defaults_follow_the_weights_and_never_override_the_user():
    defaults, scratch = read_yaml(DEFAULT_CONFIG), read_yaml(RECIPE_DIR / "scratch.yaml")
    assert scratch["epochs"] != defaults["epochs"] and scratch["teacher_epochs"] != defaults["teacher_epochs"]
    finetune = _resolve()
    assert finetune.optim.epochs == defaults["epochs"] and finetune.teacher.teacher_epochs == defaults["teacher_epochs"]
    both = _resolve("--student_weights", "none", "--teacher_weights", "none")
    assert both.optim.epochs == scratch["epochs"] and both.teacher.teacher_epochs == scratch["teacher_epochs"]
    assert both.optim.label_smoothing == scratch["label_smoothing"]
    # keys that start with "teacher" follow the teacher's weights, the others the student's
    student_only = _resolve("--student_weights", "none")
    assert student_only.optim.epochs == scratch["epochs"]
    assert student_only.teacher.teacher_epochs == defaults["teacher_epochs"]
    assert _resolve("--student_weights", "none", "--epochs", "7").optim.epochs == 7
    assert _resolve("--recipe", "finetune", "--student_weights", "none").optim.epochs == defaults["epochs"]
    assert _resolve("--recipe", "scratch").teacher.teacher_epochs == scratch["teacher_epochs"]
