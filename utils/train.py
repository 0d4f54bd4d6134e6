"""The training and evaluation loops, in the manner of torchvision's
references/classification/train.py: one epoch of training, one evaluation,
and `fit`, which runs epochs with early stopping and keeps the best state."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from tqdm import tqdm

from models.freeze import set_train_mode
from utils.errors import UserError
from utils.mixup import MixedTargets, mixup

# What the distillation loss learns from: teacher logits for a batch, given the
# (mixed) images, their dataset indices and views, and the mixing.
Teacher = Callable[[paddle.Tensor, paddle.Tensor, paddle.Tensor, MixedTargets], paddle.Tensor]


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


@dataclasses.dataclass
class EpochStats:
    loss: float
    ce: float
    kd: float
    acc: float
    lr: float  # at the epoch's last step
    seconds: float


@dataclasses.dataclass
class Evaluation:
    loss: float
    acc: float
    probs: np.ndarray
    labels: np.ndarray

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    best: Evaluation
    best_state: dict
    epochs_run: int


class LiveTeacher:
    """A frozen teacher run on every batch: it labels exactly the (mixed) images the student sees."""

    def __init__(self, model: nn.Layer) -> None:
        self.model = model

    @paddle.no_grad()
    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets) -> paddle.Tensor:
        return self.model(images)


def grad_scaler(amp: bool) -> paddle.amp.GradScaler:
    """Loss scaling for mixed precision, which only a GPU has; a pass-through elsewhere."""
    return paddle.amp.GradScaler(enable=amp and paddle.get_device().startswith("gpu"))


def train_one_epoch(
    model: nn.Layer,
    teacher: Optional[Teacher],
    loader: paddle.io.DataLoader,
    optimizer: paddle.optimizer.Optimizer,
    schedule: paddle.optimizer.lr.LRScheduler,
    loss_fn: Callable,
    mixup_alpha: float,
    rng: np.random.Generator,
    scaler: paddle.amp.GradScaler,
    epoch: int,
    desc: str = "train",
) -> EpochStats:
    """One pass over `loader`, whose ImageDataset serves view `epoch` (from 1) of its images."""
    loader.dataset.set_epoch(epoch - 1)
    set_train_mode(model)
    start = time.perf_counter()
    totals = np.zeros(4)  # loss, ce, kd, correct (all weighted by batch size)
    seen = 0
    progress = tqdm(loader, desc=desc, leave=False, disable=None)
    for images, labels, indices, views in progress:
        images, targets = mixup(images, labels, mixup_alpha, rng)
        with paddle.amp.auto_cast(enable=scaler.is_enable()):
            teacher_logits = None if teacher is None else teacher(images, indices, views, targets)
            logits = model(images)
            parts = loss_fn(logits, teacher_logits, targets)
        loss_value = float(parts.total)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"{desc}: the loss became {loss_value} at step {seen // labels.shape[0] + 1} "
                f"(learning rate {optimizer.get_lr():.2e}); try a lower --lr (--teacher_lr for the teacher)"
            )
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.clear_grad()
        schedule.step()

        batch = labels.shape[0]
        preds = logits.argmax(axis=1)
        correct = targets.lam * (preds == targets.labels_a).astype("float32").sum() + \
            (1 - targets.lam) * (preds == targets.labels_b).astype("float32").sum()
        totals += batch * np.array([loss_value, float(parts.ce), float(parts.kd), 0.0])
        totals[3] += float(correct)
        seen += batch
        progress.set_postfix(loss=f"{totals[0] / seen:.3f}", acc=f"{totals[3] / seen:.3f}")
    loss, ce, kd, correct = totals / max(seen, 1)
    return EpochStats(loss, ce, kd, correct, optimizer.get_lr(), time.perf_counter() - start)


@paddle.no_grad()
def predict(model: nn.Layer, loader: paddle.io.DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels for every sample of `loader`, in order."""
    model.eval()
    probs, labels = [], []
    for images, batch_labels, *_ in loader:
        probs.append(F.softmax(model(images), axis=1).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate(model: nn.Layer, loader: paddle.io.DataLoader) -> Evaluation:
    probs, labels = predict(model, loader)
    picked = probs[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return Evaluation(loss, float((probs.argmax(axis=1) == labels).mean()), probs, labels)


def fit(
    model: nn.Layer,
    train_epoch: Callable[[int], EpochStats],
    val_loader: paddle.io.DataLoader,
    epochs: int,
    patience: Optional[int],
    on_epoch: Callable[[int, EpochStats, Evaluation, bool], None],
) -> FitResult:
    """Run `epochs` epochs, evaluating after each.

    With `patience`, keep the state of the epoch with the best validation
    accuracy and stop after `patience` epochs without improvement. Without it
    (the teacher, which must not be selected on validation images), keep the
    last epoch's state.
    """
    best: Optional[Evaluation] = None
    best_epoch, best_state, stale = 0, {}, 0
    for epoch in range(1, epochs + 1):
        stats = train_epoch(epoch)
        evaluation = evaluate(model, val_loader)
        improved = best is None or evaluation.acc > best.acc or patience is None
        if improved:
            best, best_epoch, stale = evaluation, epoch, 0
            best_state = {name: value.numpy().copy() for name, value in model.state_dict().items()}
        else:
            stale += 1
        on_epoch(epoch, stats, evaluation, improved)
        if patience is not None and stale >= patience:
            break
    return FitResult(best_epoch, best, best_state, epoch)
