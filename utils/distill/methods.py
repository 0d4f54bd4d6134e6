"""Training losses, looked up by name (`--kd`). Each returns the total loss and
its cross-entropy and distillation parts, for logging."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import paddle
import paddle.nn.functional as F

from utils.data.mixing import MixedTargets
from utils.runtime.config import Config
from utils.runtime.registry import lookup


@dataclasses.dataclass
class LossParts:
    total: paddle.Tensor
    ce: paddle.Tensor
    kd: paddle.Tensor


def mixed_cross_entropy(logits: paddle.Tensor, targets: MixedTargets) -> paddle.Tensor:
    loss = F.cross_entropy(logits, targets.labels_a)
    if targets.lam < 1.0:
        loss = targets.lam * loss + (1.0 - targets.lam) * F.cross_entropy(logits, targets.labels_b)
    return loss


def kd_kl_divergence(student_logits: paddle.Tensor, teacher_logits: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, axis=1)
    teacher_probs = F.softmax(teacher_logits / temperature, axis=1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


class CrossEntropyLoss:
    """Hard labels only: the baseline that shows what distillation adds."""

    needs_teacher = False

    def __call__(self, student_logits: paddle.Tensor, teacher_logits: Optional[paddle.Tensor],
                 targets: MixedTargets) -> LossParts:
        ce = mixed_cross_entropy(student_logits, targets)
        return LossParts(ce, ce, paddle.zeros([]))


class KLDistillationLoss:
    """alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher || student)."""

    needs_teacher = True

    def __init__(self, alpha: float, temperature: float) -> None:
        self.alpha = alpha
        self.temperature = temperature

    def __call__(self, student_logits: paddle.Tensor, teacher_logits: Optional[paddle.Tensor],
                 targets: MixedTargets) -> LossParts:
        ce = mixed_cross_entropy(student_logits, targets)
        kd = kd_kl_divergence(student_logits, teacher_logits, self.temperature)
        return LossParts(self.alpha * ce + (1.0 - self.alpha) * kd, ce, kd)


LOSSES: dict[str, Callable[[Config], object]] = {
    "none": lambda cfg: CrossEntropyLoss(),
    "kl": lambda cfg: KLDistillationLoss(cfg.alpha, cfg.temperature),
}


def create_loss(cfg: Config):
    return lookup(LOSSES, cfg.kd, "kd")(cfg)
