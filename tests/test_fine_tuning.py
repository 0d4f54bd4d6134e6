"""Fine-tuning as the design's sources describe it: the head alone on a frozen backbone
first (batch-norm statistics included), then everything; a lower learning rate for the
backbone; cosine with warm restarts; and a run resumed in the middle of stage 2."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import paddle
import pytest

from models.freeze import freeze, hold_backbone
from models.student import build_student
from tests.conftest import random_tensor_loaders
from utils.engine.loops import TrainingSettings, train_model
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss
from utils.engine.optimization import build_optimizer, warmup_cosine

STAGED = TrainingSettings(lr=0.01, epochs=3, warmup_epochs=0, weight_decay=0.01, mixup_alpha=0.0, amp=False,
                          patience=None, head="classifier", head_epochs=1, backbone_lr_scale=0.1)


def _state(model) -> dict[str, np.ndarray]:
    return {name: value.numpy().copy() for name, value in model.state_dict().items()}


def _train(settings: TrainingSettings, checkpoint: Path | None = None, on_epoch=lambda record, replayed: None):
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = build_student("mobilenet_v3_small", 3, "none")
        before = _state(model)
        result = train_model(model, None, CrossEntropyOnly(HardLabelLoss()), *random_tensor_loaders(), settings,
                             (1, 2, 3), on_epoch, checkpoint)
    return model, before, result


def test_stage_one_trains_the_head_alone_and_keeps_the_backbones_batch_norm_statistics():
    model, before, _ = _train(dataclasses.replace(STAGED, epochs=1))
    after = _state(model)
    backbone = [name for name in before if not name.startswith("classifier.")]
    assert any("_mean" in name for name in backbone)  # batch-norm running statistics are among them
    for name in backbone:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert any(not np.array_equal(after[name], before[name]) for name in before if name.startswith("classifier."))


def test_stage_two_trains_everything_but_what_was_frozen_for_good():
    paddle.seed(0)
    model = build_student("mobilenet_v3_small", 3, "none")
    freeze(model.conv)  # --freeze_student_blocks 1
    hold_backbone(model, "classifier", held=True)
    assert all(p.stop_gradient for p in model.blocks.parameters())
    hold_backbone(model, "classifier", held=False)
    assert not any(p.stop_gradient for p in model.blocks.parameters())
    assert all(p.stop_gradient for p in model.conv.parameters())
    _, before, result = _train(STAGED)
    assert len(result.history) == 3
    assert any(not np.array_equal(result.best_state[name], before[name]) for name in before
               if name.startswith("blocks.") and "_mean" in name)  # released: statistics update again


def test_the_backbone_learns_at_its_share_of_the_schedules_rate():
    """Adam's first step moves every weight with a gradient by exactly the learning rate (its
    update is lr * g / |g| once bias-corrected): so, at several points of the schedule, a fresh
    optimizer's first step shows each group's rate."""
    images = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype("float32"))
    labels = paddle.to_tensor(np.array([0, 1, 2, 0]))
    for position in (2, 5, 9):  # in warmup, at the peak, in the decay
        paddle.seed(0)
        model = build_student("mobilenet_v3_small", 3, "none")
        schedule = warmup_cosine(1e-3, 4, 1, 5)
        for _ in range(position):
            schedule.step()
        optimizer = build_optimizer(model, schedule, 0.0, head="classifier", backbone_lr_scale=0.01)
        head_ids = {id(p) for p in model.classifier.parameters()}
        assert {id(p) for p in optimizer._param_groups[0]["params"]} == head_ids
        head_weight, backbone_weight = model.classifier[3].weight, model.conv[0].weight
        before = head_weight.numpy().copy(), backbone_weight.numpy().copy()
        paddle.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        rate = schedule.get_lr()
        for weight, old, share in ((head_weight, before[0], 1.0), (backbone_weight, before[1], 0.01)):
            moved = np.abs(weight.numpy() - old)
            assert np.median(moved[moved > 0]) == pytest.approx(share * rate, rel=1e-2), (position, share)


def test_cosine_with_warm_restarts_starts_again_every_period():
    schedule = warmup_cosine(1.0, 10, 1, 2, restart_epochs=2)  # 2 steps per epoch: warmup 2 steps, period 4
    rates = []
    for _ in range(12):
        rates.append(schedule.get_lr())
        schedule.step()
    assert rates[:2] == pytest.approx([0.0, 0.5])  # warmup
    period = [1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2]
    assert rates[2:6] == pytest.approx(period) and rates[6:10] == pytest.approx(period)
    assert rates[10] == pytest.approx(1.0)  # restarted


class Interrupt(Exception):
    pass


def test_a_run_interrupted_in_stage_two_resumes_to_the_same_weights(tmp_path):
    settings = dataclasses.replace(STAGED, epochs=4)
    uninterrupted, _, expected = _train(settings, tmp_path / "a.pdparams")

    def stop_after_epoch_3(record, replayed):
        if record.epoch == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        _train(settings, tmp_path / "b.pdparams", stop_after_epoch_3)
    resumed, _, result = _train(settings, tmp_path / "b.pdparams")
    assert [r.lr for r in result.history] == [r.lr for r in expected.history]
    for name, value in uninterrupted.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[name].numpy(), value.numpy(), rtol=0, atol=1e-6,
                                   err_msg=name)
