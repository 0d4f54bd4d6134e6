"""Distillation methods, looked up by name (`--kd`). A method is one class: it
takes the student's and the teacher's logits, the batch's (mixed) hard targets
and the epoch, and returns the loss to minimise with its unweighted parts, which
are logged by name. Its settings are keys of configs/default.yaml. To add one,
write the class (with `from_config`) and add a line to METHODS.

Under Mixup or CutMix the images are mixed; the teacher's logits are those of
the mixed image (teacher in the loop) or the mixture of its two stored
distributions at the method's `temperature` (the view cache), and terms that
need a class label are mixed with the images' lambda.
"""
from __future__ import annotations

from typing import Callable, Optional

import paddle
import paddle.nn.functional as F

from utils.data.mixing import MixedTargets
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss, LossParts
from utils.runtime.config import Config
from utils.runtime.registry import lookup


def kl_divergence(student_logits: paddle.Tensor, teacher_logits: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, axis=1)
    teacher_probs = F.softmax(teacher_logits / temperature, axis=1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


class KL:
    """alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher || student) (Hinton et al., 2015)."""

    needs_teacher = True

    def __init__(self, hard_loss: HardLabelLoss, alpha: float, temperature: float) -> None:
        self.hard_loss, self.alpha, self.temperature = hard_loss, alpha, temperature

    @classmethod
    def from_config(cls, cfg: Config, hard_loss: HardLabelLoss) -> KL:
        return cls(hard_loss, cfg.alpha, cfg.temperature)

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        kl = kl_divergence(logits, teacher_logits, self.temperature)
        return LossParts(self.alpha * ce + (1.0 - self.alpha) * kl, {"ce": ce, "kl": kl})


# Logit offset that takes a class out of a softmax (exp(-1e4) is exactly 0 in float32).
_EXCLUDED = 1e4


def decoupled_kd(logits: paddle.Tensor, teacher_logits: paddle.Tensor, labels: paddle.Tensor,
                 temperature: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    """DKD's two terms, each times T^2 and averaged over the batch (Zhao et al., CVPR 2022).

    TCKD: KL between the teacher's and the student's binary (target class, all
    others) probabilities. NCKD: KL between their distributions over the
    non-target classes alone. Computed from log-softmaxes and log-sum-exps, so
    that a probability of 0 or 1 never meets a logarithm; with 2 classes the
    non-target distribution is a single class, and NCKD is exactly 0.
    """
    target = F.one_hot(labels, logits.shape[1])
    terms = []
    for scaled in (logits / temperature, teacher_logits / temperature):
        log_all = paddle.logsumexp(scaled, axis=1)
        log_target = (scaled * target).sum(axis=1) - log_all
        log_rest = paddle.logsumexp(scaled - _EXCLUDED * target, axis=1) - log_all
        log_non_target = F.log_softmax(scaled - _EXCLUDED * target, axis=1)
        terms.append((paddle.stack([log_target, log_rest], axis=1), log_non_target))
    (student_binary, student_rest), (teacher_binary, teacher_rest) = terms
    tckd = (teacher_binary.exp() * (teacher_binary - student_binary)).sum(axis=1).mean()
    nckd = ((1.0 - target) * teacher_rest.exp() * (teacher_rest - student_rest)).sum(axis=1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


class DKD:
    """CE(student, y) + w * (dkd_alpha * TCKD + dkd_beta * NCKD), where w rises linearly
    from 1 / dkd_warmup at epoch 1 to 1 at epoch dkd_warmup (Decoupled KD, Zhao et al.,
    CVPR 2022; mdistiller's defaults for CIFAR-100: alpha 1, beta 8, T 4)."""

    needs_teacher = True

    def __init__(self, hard_loss: HardLabelLoss, alpha: float, beta: float, temperature: float, warmup: int) -> None:
        self.hard_loss, self.alpha, self.beta = hard_loss, alpha, beta
        self.temperature, self.warmup = temperature, warmup

    @classmethod
    def from_config(cls, cfg: Config, hard_loss: HardLabelLoss) -> DKD:
        return cls(hard_loss, cfg.dkd_alpha, cfg.dkd_beta, cfg.dkd_temperature, cfg.dkd_warmup)

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        tckd, nckd = decoupled_kd(logits, teacher_logits, targets.labels_a, self.temperature)
        if targets.lam < 1.0:
            tckd_b, nckd_b = decoupled_kd(logits, teacher_logits, targets.labels_b, self.temperature)
            tckd = targets.lam * tckd + (1.0 - targets.lam) * tckd_b
            nckd = targets.lam * nckd + (1.0 - targets.lam) * nckd_b
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        total = ce + ramp * (self.alpha * tckd + self.beta * nckd)
        return LossParts(total, {"ce": ce, "tckd": tckd, "nckd": nckd})


def _pearson_distance(a: paddle.Tensor, b: paddle.Tensor, eps: float = 1e-8) -> paddle.Tensor:
    """1 - the mean over rows of the Pearson correlation between rows of `a` and `b`."""
    a = a - a.mean(axis=1, keepdim=True)
    b = b - b.mean(axis=1, keepdim=True)
    correlation = (a * b).sum(axis=1) / (a.norm(axis=1) * b.norm(axis=1) + eps)
    return 1.0 - correlation.mean()


class DIST:
    """CE(student, y) + dist_beta * inter + dist_gamma * intra, each times T^2 (DIST,
    Huang et al., NeurIPS 2022). Inter-class: 1 - the Pearson correlation of the
    student's and the teacher's probabilities over the classes of each image;
    intra-class: the same over the images of the batch for each class. Matching
    relations rather than exact probabilities tolerates a large teacher-student gap."""

    needs_teacher = True

    def __init__(self, hard_loss: HardLabelLoss, beta: float, gamma: float, temperature: float) -> None:
        self.hard_loss, self.beta, self.gamma, self.temperature = hard_loss, beta, gamma, temperature

    @classmethod
    def from_config(cls, cfg: Config, hard_loss: HardLabelLoss) -> DIST:
        return cls(hard_loss, cfg.dist_beta, cfg.dist_gamma, cfg.dist_temperature)

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        student = F.softmax(logits / self.temperature, axis=1)
        teacher = F.softmax(teacher_logits / self.temperature, axis=1)
        inter = self.temperature**2 * _pearson_distance(student, teacher)
        intra = self.temperature**2 * _pearson_distance(student.transpose([1, 0]), teacher.transpose([1, 0]))
        return LossParts(ce + self.beta * inter + self.gamma * intra, {"ce": ce, "inter": inter, "intra": intra})


METHODS: dict[str, Callable[[Config, HardLabelLoss], object]] = {
    "none": lambda cfg, hard_loss: CrossEntropyOnly(hard_loss),
    "kl": KL.from_config,
    "dkd": DKD.from_config,
    "dist": DIST.from_config,
}


def create_method(cfg: Config, hard_loss: Optional[HardLabelLoss] = None):
    """The `--kd` method, with the hard-label loss (label smoothing, class weights, focal) it adds to."""
    hard_loss = hard_loss or HardLabelLoss(cfg.label_smoothing, None, cfg.focal_gamma)
    return lookup(METHODS, cfg.kd, "kd")(cfg, hard_loss)
