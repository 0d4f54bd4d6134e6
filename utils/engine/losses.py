"""The hard-label loss every model trains with, and the shape of a training loss:
a total to minimise and its named, unweighted parts, which are logged by name."""
from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from utils.data.dataset import UNLABELED
from utils.data.mixing import MixedTargets


@dataclasses.dataclass
class LossParts:
    total: paddle.Tensor
    parts: dict[str, paddle.Tensor]  # unweighted terms by name, e.g. {"ce": ..., "kl": ...}


class TrainingLoss(Protocol):
    """What the training loop calls: (student logits, teacher logits or None, the
    batch's mixed targets, the epoch counted from 1) -> LossParts."""

    needs_teacher: bool

    def __call__(self, logits: paddle.Tensor, teacher_logits: Optional[paddle.Tensor], targets: MixedTargets,
                 epoch: int) -> LossParts: ...


@dataclasses.dataclass
class HardLabelLoss:
    """Cross-entropy with the hard labels, mixed with the images' lambda, with optional
    label smoothing, per-class weights (a weighted mean, as PyTorch's) and focal
    modulation (Lin et al., 2017: each image's term times (1 - p_true) ** focal_gamma).
    Images without a label (UNLABELED, --unlabeled_dir) take no part: the mean is over the
    labelled ones, and a batch without any gives 0."""

    label_smoothing: float = 0.0
    class_weights: Optional[Sequence[float]] = None
    focal_gamma: float = 0.0

    def __call__(self, logits: paddle.Tensor, targets: MixedTargets) -> paddle.Tensor:
        loss = self.for_labels(logits, targets.labels_a)
        if targets.lam < 1.0:
            loss = targets.lam * loss + (1.0 - targets.lam) * self.for_labels(logits, targets.labels_b)
        return loss

    def for_labels(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        num_classes = logits.shape[1]
        labelled = (labels != UNLABELED).astype("float32")
        every = bool(labelled.min() > 0)  # then the plain mean, as every run without unlabeled images computes it
        labels = paddle.clip(labels, min=0)  # an unlabeled image's row is computed, then weighted 0
        log_probs = F.log_softmax(logits, axis=1)
        one_hot = F.one_hot(labels, num_classes)
        target = (1.0 - self.label_smoothing) * one_hot + self.label_smoothing / num_classes
        per_image = -(target * log_probs).sum(axis=1)
        if self.focal_gamma > 0:
            p_true = (one_hot * log_probs).sum(axis=1).exp()
            per_image = per_image * (1.0 - p_true) ** self.focal_gamma
        if self.class_weights is None and every:
            return per_image.mean()
        weights = labelled if self.class_weights is None else labelled * paddle.gather(
            paddle.to_tensor(np.asarray(self.class_weights, dtype="float32")), labels)
        return (weights * per_image).sum() / weights.sum().clip(min=1e-12)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """n / (classes * count) per class, so that every class weighs the same in total."""
    return compute_class_weight("balanced", classes=np.arange(num_classes), y=labels).tolist()


class CrossEntropyOnly:
    """Hard labels only: how a teacher trains, and the baseline that shows what distillation adds."""

    needs_teacher = False

    def __init__(self, hard_loss: HardLabelLoss) -> None:
        self.hard_loss = hard_loss

    def __call__(self, logits: paddle.Tensor, teacher_logits: Optional[paddle.Tensor], targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        return LossParts(ce, {"ce": ce})
