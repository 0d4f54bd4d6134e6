"""Every loss against a hand computation in NumPy on small tensors."""
import numpy as np
import paddle
import pytest

from utils.data.mixing import MixedTargets
from utils.distill.methods import DIST, DKD, KL, METHODS, create_method, decoupled_kd, kl_divergence
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss, balanced_class_weights
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(logits, labels):
    return float(np.mean(-np.log(_softmax(logits)[np.arange(len(labels)), labels])))


def _targets(labels_a, labels_b=None, lam=1.0):
    labels_b = labels_a if labels_b is None else labels_b
    return MixedTargets(paddle.to_tensor(labels_a), paddle.to_tensor(labels_b), lam)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(4, 5)).astype("float32")
    teacher = (rng.normal(size=(4, 5)) * 3).astype("float32")
    return student, teacher, np.array([0, 3, 2, 4])


def test_kl_matches_hand_computation_and_keeps_its_formula(batch):
    student, teacher, labels = batch
    alpha, temperature = 0.3, 4.0
    p_t, p_s = _softmax(teacher / temperature), _softmax(student / temperature)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1).mean()
    loss = KL(HardLabelLoss(), alpha, temperature)(paddle.to_tensor(student), paddle.to_tensor(teacher),
                                                    _targets(labels), epoch=1)
    assert float(loss.total) == pytest.approx(alpha * _ce(student, labels) + (1 - alpha) * temperature**2 * kl,
                                              rel=1e-5)
    assert set(loss.parts) == {"ce", "kl"}
    assert float(loss.parts["kl"]) == pytest.approx(temperature**2 * kl, rel=1e-5)
    assert float(loss.parts["ce"]) == pytest.approx(_ce(student, labels), rel=1e-5)


def test_kl_term_is_zero_when_student_equals_teacher():
    logits = paddle.to_tensor(np.random.default_rng(1).normal(size=(3, 4)).astype("float32"))
    assert float(kl_divergence(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)


def _dkd_by_hand(student, teacher, labels, temperature):
    p_s, p_t = _softmax(student / temperature), _softmax(teacher / temperature)
    rows = np.arange(len(labels))
    b_s = np.stack([p_s[rows, labels], 1 - p_s[rows, labels]], axis=1)
    b_t = np.stack([p_t[rows, labels], 1 - p_t[rows, labels]], axis=1)
    tckd = np.sum(b_t * np.log(b_t / b_s), axis=1).mean()
    mask = np.ones_like(p_s, dtype=bool)
    mask[rows, labels] = False
    q_s = p_s[mask].reshape(len(labels), -1) / b_s[:, 1:]
    q_t = p_t[mask].reshape(len(labels), -1) / b_t[:, 1:]
    nckd = np.sum(q_t * np.log(q_t / q_s), axis=1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


def test_dkd_terms_match_hand_computation(batch):
    student, teacher, labels = batch
    tckd, nckd = decoupled_kd(paddle.to_tensor(student), paddle.to_tensor(teacher), paddle.to_tensor(labels), 2.0)
    expected_tckd, expected_nckd = _dkd_by_hand(student, teacher, labels, 2.0)
    assert float(tckd) == pytest.approx(expected_tckd, rel=1e-4)
    assert float(nckd) == pytest.approx(expected_nckd, rel=1e-4)


def test_dkd_total_weights_its_terms_and_warms_up(batch):
    student, teacher, labels = batch
    method = DKD(HardLabelLoss(), dkd_alpha=1.5, dkd_beta=8.0, dkd_temperature=2.0, dkd_warmup=4)
    tckd, nckd = _dkd_by_hand(student, teacher, labels, 2.0)
    for epoch, ramp in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        loss = method(paddle.to_tensor(student), paddle.to_tensor(teacher), _targets(labels), epoch)
        expected = _ce(student, labels) + ramp * (1.5 * tckd + 8.0 * nckd)
        assert float(loss.total) == pytest.approx(expected, rel=1e-4), epoch
    assert set(loss.parts) == {"ce", "tckd", "nckd"}


def test_dkd_mixes_its_terms_with_the_images_lambda(batch):
    student, teacher, labels = batch
    other = np.array([1, 1, 0, 2])
    method = DKD(HardLabelLoss(), dkd_alpha=1.0, dkd_beta=8.0, dkd_temperature=4.0, dkd_warmup=0)
    loss = method(paddle.to_tensor(student), paddle.to_tensor(teacher), _targets(labels, other, 0.3), epoch=1)
    a, b = _dkd_by_hand(student, teacher, labels, 4.0), _dkd_by_hand(student, teacher, other, 4.0)
    assert float(loss.parts["tckd"]) == pytest.approx(0.3 * a[0] + 0.7 * b[0], rel=1e-4)
    assert float(loss.parts["nckd"]) == pytest.approx(0.3 * a[1] + 0.7 * b[1], rel=1e-4)


def test_dkd_on_two_classes_is_finite_and_its_non_target_term_is_zero():
    """With 2 classes the non-target distribution is one class: nothing to match."""
    student = paddle.to_tensor(np.array([[30.0, -30.0], [0.1, 0.2], [-50.0, 50.0]], dtype="float32"),
                               stop_gradient=False)
    teacher = paddle.to_tensor(np.array([[-20.0, 20.0], [3.0, -3.0], [60.0, -60.0]], dtype="float32"))
    labels = np.array([0, 1, 1])
    loss = DKD(HardLabelLoss(), 1.0, 8.0, 4.0, 0)(student, teacher, _targets(labels), epoch=1)
    assert np.isfinite(float(loss.total))
    assert float(loss.parts["nckd"]) == 0.0
    assert float(loss.parts["tckd"]) > 0
    loss.total.backward()
    assert np.isfinite(student.grad.numpy()).all()


def _pearson_distance(a, b):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return 1 - np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_dist_matches_hand_computation(batch):
    student, teacher, labels = batch
    temperature, beta, gamma = 2.0, 1.5, 0.5
    p_s, p_t = _softmax(student / temperature), _softmax(teacher / temperature)
    inter = temperature**2 * _pearson_distance(p_s, p_t)
    intra = temperature**2 * _pearson_distance(p_s.T, p_t.T)
    loss = DIST(HardLabelLoss(), beta, gamma, temperature)(paddle.to_tensor(student), paddle.to_tensor(teacher),
                                                          _targets(labels), epoch=1)
    assert float(loss.parts["inter"]) == pytest.approx(inter, rel=1e-4)
    assert float(loss.parts["intra"]) == pytest.approx(intra, rel=1e-4)
    assert float(loss.total) == pytest.approx(_ce(student, labels) + beta * inter + gamma * intra, rel=1e-4)


def test_dist_is_zero_for_a_student_that_copies_the_teacher(batch):
    _, teacher, labels = batch
    loss = DIST(HardLabelLoss(), 1.0, 1.0, 1.0)(paddle.to_tensor(teacher), paddle.to_tensor(teacher),
                                               _targets(labels), epoch=1)
    assert float(loss.parts["inter"]) == pytest.approx(0.0, abs=1e-5)
    assert float(loss.parts["intra"]) == pytest.approx(0.0, abs=1e-5)


def test_cross_entropy_mixes_both_labels_by_lambda():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 3)).astype("float32")
    labels_a, labels_b, lam = np.array([0, 1, 2, 0]), np.array([2, 2, 1, 1]), 0.7
    loss = CrossEntropyOnly(HardLabelLoss())(paddle.to_tensor(logits), None, _targets(labels_a, labels_b, lam), 1)
    assert float(loss.total) == pytest.approx(lam * _ce(logits, labels_a) + (1 - lam) * _ce(logits, labels_b),
                                              rel=1e-5)
    assert list(loss.parts) == ["ce"]


def test_label_smoothing_matches_hand_computation(batch):
    logits, _, labels = batch
    eps = 0.1
    log_p = np.log(_softmax(logits))
    target = np.full(log_p.shape, eps / 5)
    target[np.arange(4), labels] += 1 - eps
    expected = float(np.mean(-(target * log_p).sum(axis=1)))
    assert float(HardLabelLoss(label_smoothing=eps)(paddle.to_tensor(logits), _targets(labels))) == \
        pytest.approx(expected, rel=1e-5)


def test_focal_loss_matches_hand_computation(batch):
    logits, _, labels = batch
    p_true = _softmax(logits)[np.arange(4), labels]
    expected = float(np.mean(-((1 - p_true) ** 2) * np.log(p_true)))
    assert float(HardLabelLoss(focal_gamma=2.0)(paddle.to_tensor(logits), _targets(labels))) == \
        pytest.approx(expected, rel=1e-5)


def test_class_weights_are_balanced_and_weigh_each_image_by_its_class(batch):
    logits, _, labels = batch
    train_labels = np.array([0] * 6 + [1] * 2 + [2] * 2 + [3] * 1 + [4] * 1)
    weights = balanced_class_weights(train_labels, 5)
    assert weights == pytest.approx([12 / 30, 12 / 10, 12 / 10, 12 / 5, 12 / 5])
    per_image = -np.log(_softmax(logits)[np.arange(4), labels])
    w = np.array(weights)[labels]
    expected = float((w * per_image).sum() / w.sum())
    assert float(HardLabelLoss(class_weights=weights)(paddle.to_tensor(logits), _targets(labels))) == \
        pytest.approx(expected, rel=1e-5)


def test_every_method_is_found_by_name_and_says_whether_it_needs_a_teacher():
    values = read_yaml(DEFAULT_CONFIG)
    for name in METHODS:
        cfg = build_config({**values, "kd": name})
        method = create_method(cfg.distill, HardLabelLoss(cfg.optim.label_smoothing), cfg.optim.epochs)
        assert method.needs_teacher == (name != "none")
        if method.needs_teacher:
            assert method.temperature > 0
