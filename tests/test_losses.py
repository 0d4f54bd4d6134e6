import numpy as np
import paddle
import pytest

from utils.data.mixing import MixedTargets
from utils.distill.methods import CrossEntropyLoss, KLDistillationLoss, kd_kl_divergence


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(logits, labels):
    return float(np.mean(-np.log(_softmax(logits)[np.arange(len(labels)), labels])))


def test_kd_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(4, 5)).astype("float32")
    teacher = rng.normal(size=(4, 5)).astype("float32") * 3
    labels = np.array([0, 3, 2, 4])
    alpha, temperature = 0.3, 4.0

    p_t = _softmax(teacher / temperature)
    p_s = _softmax(student / temperature)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1).mean()
    expected = alpha * _ce(student, labels) + (1 - alpha) * temperature**2 * kl

    loss = KLDistillationLoss(alpha, temperature)
    targets = MixedTargets(paddle.to_tensor(labels), paddle.to_tensor(labels), 1.0)
    parts = loss(paddle.to_tensor(student), paddle.to_tensor(teacher), targets)
    assert float(parts.total) == pytest.approx(expected, rel=1e-5)
    assert float(parts.kd) == pytest.approx(temperature**2 * kl, rel=1e-5)


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = paddle.to_tensor(np.random.default_rng(1).normal(size=(3, 4)).astype("float32"))
    assert float(kd_kl_divergence(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_mixed_cross_entropy_weights_both_labels_by_lambda():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 3)).astype("float32")
    labels_a, labels_b, lam = np.array([0, 1, 2, 0]), np.array([2, 2, 1, 1]), 0.7
    targets = MixedTargets(paddle.to_tensor(labels_a), paddle.to_tensor(labels_b), lam)
    parts = CrossEntropyLoss()(paddle.to_tensor(logits), None, targets)
    expected = lam * _ce(logits, labels_a) + (1 - lam) * _ce(logits, labels_b)
    assert float(parts.total) == pytest.approx(expected, rel=1e-5)
