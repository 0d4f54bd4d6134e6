"""The training and evaluation loops, in the manner of torchvision's
references/classification/train.py: one epoch of training, one evaluation,
`fit`, which runs epochs with early stopping and keeps the best state, and
`train_model`, which sets up the optimizer and schedule and resumes a run."""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from tqdm import tqdm

from models.freeze import hold_backbone, set_train_mode
from utils.data.dataset import UNLABELED, set_loader_epoch
from utils.data.mixing import MixedTargets, mix_batch
from utils.engine.ema import WeightAverage
from utils.engine.losses import LossParts, TrainingLoss
from utils.engine.optimization import build_optimizer, warmup_cosine
from utils.engine.training_state import EpochCheckpoint
from utils.runtime.config import OptimSettings
from utils.runtime.distributed import average_buffers, barrier, gather_rows, rank, world_size
from utils.runtime.errors import UserError
from utils.runtime.process import seed_everything


@dataclasses.dataclass
class Teaching:
    """A batch's teacher signal: its logits, and its pooled features when feature
    distillation asks for them."""
    logits: paddle.Tensor
    features: Optional[paddle.Tensor] = None


# What the distillation loss learns from: the teaching for a batch, given the (mixed)
# images, their dataset indices and views, the mixing and the epoch (the teacher
# signals of utils/distill/signal.py).
Teacher = Callable[[paddle.Tensor, paddle.Tensor, paddle.Tensor, MixedTargets, int], Teaching]


class FeatureTerm(Protocol):
    """Feature distillation (utils/distill/features.py): a term added to the loss from the
    student's features and the teacher's, through a layer that trains with the student."""
    method: nn.Layer

    def add_to(self, loss: LossParts, teacher_features: paddle.Tensor) -> LossParts: ...


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


@dataclasses.dataclass
class EpochStats:
    loss: float
    parts: dict[str, float]  # the loss's named parts, averaged over the epoch
    acc: float
    lr: float  # averaged over the epoch's steps
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
class EpochRecord:
    """One epoch as logged and kept in history.json. With a weight average (EMA), its
    validation scores too; the epoch counts with the better of the two."""
    epoch: int
    train_loss: float
    train_acc: float
    train_parts: dict[str, float]
    val_loss: Optional[float]  # None without validation images (the final student)
    val_acc: Optional[float]
    lr: float
    seconds: float
    ema_val_loss: Optional[float] = None
    ema_val_acc: Optional[float] = None

    @property
    def score(self) -> float:
        return max(-1.0 if self.val_acc is None else self.val_acc,
                   -1.0 if self.ema_val_acc is None else self.ema_val_acc)


@dataclasses.dataclass
class Progress:
    """Where `fit` stands after its last finished epoch: all it needs to go on from there."""
    epoch: int = 0
    best_epoch: int = 0
    best: Optional[Evaluation] = None
    best_state: dict = dataclasses.field(default_factory=dict)
    best_is_average: bool = False
    stale: int = 0  # epochs since the best one
    history: list[EpochRecord] = dataclasses.field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(**{**state, "best": state["best"] and Evaluation(**state["best"]),
                      "history": [EpochRecord(**record) for record in state["history"]]})


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    best: Evaluation
    best_state: dict
    best_is_average: bool  # the best state is the weight average's
    epochs_run: int
    history: list[EpochRecord]


@dataclasses.dataclass
class TrainingSettings:
    """What `train_model` needs of the configuration, for the student or the teacher."""
    lr: float
    epochs: int
    warmup_epochs: int
    weight_decay: float
    mixup_alpha: float
    amp: bool
    patience: Optional[int]  # None: no early stopping, keep the last epoch
    cutmix_alpha: float = 0.0
    clip_grad_norm: float = 0.0  # 0: no clipping
    ema_decay: float = 0.0  # 0: no weight average
    # Fine-tuning: the name of the model's classifier layer; the first head_epochs epochs train it
    # alone on a held backbone; the backbone learns at backbone_lr_scale x the learning rate.
    head: str = ""
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    restart_epochs: int = 0  # > 0: cosine with warm restarts of this period (after warmup)


def fine_tuning_settings(optim: OptimSettings, head: str) -> dict[str, Any]:
    """TrainingSettings' fine-tuning fields from the optimisation settings, for a model whose
    classifier layer is `head`."""
    return {"head": head, "head_epochs": optim.head_epochs, "backbone_lr_scale": optim.backbone_lr_scale,
            "restart_epochs": optim.restart_epochs if optim.lr_schedule == "cosine_restarts" else 0}


def grad_scaler(amp: bool) -> paddle.amp.GradScaler:
    """Loss scaling for mixed precision, which only a GPU has; a pass-through elsewhere."""
    return paddle.amp.GradScaler(enable=amp and paddle.get_device().startswith("gpu"))


def train_one_epoch(
    model: nn.Layer,
    teacher: Optional[Teacher],
    loader: paddle.io.DataLoader,
    optimizer: paddle.optimizer.Optimizer,
    schedule: paddle.optimizer.lr.LRScheduler,
    loss_fn: TrainingLoss,
    hyper: TrainingSettings,
    rng: np.random.Generator,
    scaler: paddle.amp.GradScaler,
    epoch: int,
    average: Optional[WeightAverage] = None,
    desc: str = "train",
    trainer: Optional[nn.Layer] = None,
    feature_term: Optional[FeatureTerm] = None,
) -> EpochStats:
    """One pass over `loader`, whose ImageDataset serves view `epoch` (from 1) of its images.
    `trainer` runs the forward pass: `model`, or its paddle.DataParallel wrapper, whose
    backward pass averages the gradients of the ranks."""
    trainer = trainer or model
    set_loader_epoch(loader, epoch - 1)
    set_train_mode(model)
    start = time.perf_counter()
    totals: dict[str, float] = collections.defaultdict(float)  # weighted by batch size
    seen = steps = 0
    progress = tqdm(loader, desc=desc, leave=False, disable=None)
    for images, labels, indices, views in progress:
        images, targets = mix_batch(images, labels, hyper.mixup_alpha, hyper.cutmix_alpha, rng)
        with paddle.amp.auto_cast(enable=scaler.is_enable()):
            teaching = None if teacher is None else teacher(images, indices, views, targets, epoch)
            logits = trainer(images)
            loss = loss_fn(logits, teaching and teaching.logits, targets, epoch)
            if feature_term is not None:
                loss = feature_term.add_to(loss, teaching.features)
        loss_value = float(loss.total)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"{desc}: the loss became {loss_value} at step {steps + 1} "
                f"(learning rate {optimizer.get_lr():.2e}); try a lower --lr (--teacher_lr for the teacher)"
            )
        totals["lr"] += optimizer.get_lr()
        scaler.scale(loss.total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.clear_grad()
        schedule.step()
        if average is not None:
            average.update(model)

        batch = labels.shape[0]
        preds = logits.argmax(axis=1)
        correct = targets.lam * (preds == targets.labels_a).astype("float32").sum() + \
            (1 - targets.lam) * (preds == targets.labels_b).astype("float32").sum()
        totals["loss"] += batch * loss_value
        totals["correct"] += float(correct)  # an unlabeled image (UNLABELED) is never counted right
        totals["labelled"] += int((labels != UNLABELED).sum())
        for name, part in loss.parts.items():
            totals[f"part/{name}"] += batch * float(part)
        seen += batch
        steps += 1
        progress.set_postfix(loss=f"{totals['loss'] / seen:.3f}",
                             acc=f"{totals['correct'] / max(totals['labelled'], 1):.3f}")
    seen = max(seen, 1)
    parts = {name[len("part/"):]: value / seen for name, value in totals.items() if name.startswith("part/")}
    return EpochStats(totals["loss"] / seen, parts, totals["correct"] / max(totals["labelled"], 1),
                      totals["lr"] / max(steps, 1), time.perf_counter() - start)


@paddle.no_grad()
def predict(model: nn.Layer, loader: paddle.io.DataLoader, flip_tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels for every sample of `loader`, in order; with
    `flip_tta`, the mean of the image's and its mirror image's probabilities."""
    model.eval()
    probs, labels, indices = [], [], []
    for images, batch_labels, batch_indices, _ in loader:
        batch_probs = F.softmax(model(images), axis=1)
        if flip_tta:
            batch_probs = 0.5 * (batch_probs + F.softmax(model(paddle.flip(images, axis=[3])), axis=1))
        probs.append(batch_probs.numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    if world_size() == 1:
        return probs, labels
    # Every rank scored its share; the sampler's padding repeats a few images, which land on themselves.
    ordered_probs = np.empty((len(loader.dataset), probs.shape[1]), np.float32)
    ordered_labels = np.empty(len(loader.dataset), labels.dtype)
    for part_probs, part_labels, part_indices in zip(gather_rows(probs), gather_rows(labels),
                                                     gather_rows(np.concatenate(indices))):
        ordered_probs[part_indices], ordered_labels[part_indices] = part_probs, part_labels
    return ordered_probs, ordered_labels


def evaluate(model: nn.Layer, loader: paddle.io.DataLoader) -> Evaluation:
    probs, labels = predict(model, loader)
    picked = probs[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return Evaluation(loss, float((probs.argmax(axis=1) == labels).mean()), probs, labels)


def model_state(model: nn.Layer) -> dict[str, np.ndarray]:
    return {name: value.numpy().copy() for name, value in model.state_dict().items()}


def fit(
    model: nn.Layer,
    train_epoch: Callable[[int], EpochStats],
    val_loader: Optional[paddle.io.DataLoader],
    epochs: int,
    patience: Optional[int],
    on_epoch: Callable[[EpochRecord, bool], None],
    checkpoint: Optional[EpochCheckpoint] = None,
    average: Optional[WeightAverage] = None,
) -> FitResult:
    """Run `epochs` epochs, evaluating after each (the model, and its weight average
    when there is one).

    With `patience`, keep the state of the epoch with the best validation accuracy
    (the average's when it is better) and stop after `patience` epochs without
    improvement. Without it (the teacher, which must not be selected on validation
    images), keep the last epoch's state (the average's, when there is one). With a
    `checkpoint`, save everything after every epoch and start from what it holds;
    its earlier epochs go to `on_epoch` again, marked as replayed, so that logs are
    complete. Without a `val_loader` (and then without patience) nothing is evaluated.
    """
    saved = checkpoint.load() if checkpoint else None
    progress = Progress.from_state(saved) if saved else Progress()
    for record in progress.history:
        on_epoch(record, True)
    while progress.epoch < epochs and (patience is None or progress.stale < patience):
        epoch = progress.epoch + 1
        stats = train_epoch(epoch)
        evaluation, averaged, averaged_state = None, None, None
        if val_loader is not None:
            evaluation = evaluate(model, val_loader)
        if average is not None and val_loader is not None:
            with average.applied(model):
                averaged = evaluate(model, val_loader)
                averaged_state = model_state(model) if patience is not None else None
        record = EpochRecord(epoch, stats.loss, stats.acc, stats.parts, evaluation and evaluation.loss,
                             evaluation and evaluation.acc, stats.lr, stats.seconds, averaged and averaged.loss,
                             averaged and averaged.acc)
        use_average = average is not None and (patience is None or averaged.acc > evaluation.acc)
        candidate = averaged if use_average else evaluation
        if patience is None or progress.best is None or candidate.acc > progress.best.acc:
            progress.best, progress.best_epoch, progress.stale = candidate, epoch, 0
            progress.best_is_average = use_average
            # Without early stopping the last state is kept: taken once, after the loop.
            progress.best_state = {} if patience is None else averaged_state if use_average else model_state(model)
        else:
            progress.stale += 1
        progress.epoch = epoch
        progress.history.append(record)
        if checkpoint:
            checkpoint.save(progress.to_state())
        on_epoch(record, False)
        barrier()  # data-parallel: the others wait out rank 0's saving and logging here, not in the next step
    if patience is None:
        if average is not None:
            with average.applied(model):
                progress.best_state = model_state(model)
        else:
            progress.best_state = model_state(model)
    return FitResult(progress.best_epoch, progress.best, progress.best_state, progress.best_is_average,
                     progress.epoch, progress.history)


def train_model(
    model: nn.Layer,
    teacher: Optional[Teacher],
    loss_fn: TrainingLoss,
    train_loader: paddle.io.DataLoader,
    val_loader: Optional[paddle.io.DataLoader],
    hyper: TrainingSettings,
    seed_key: tuple[int, ...],
    on_epoch: Callable[[EpochRecord, bool], None],
    checkpoint_path: Optional[Path] = None,
    desc: str = "train",
    feature_term: Optional[FeatureTerm] = None,
) -> FitResult:
    """AdamW with warmup and cosine decay, then `fit`. Every epoch reseeds Python, NumPy
    and Paddle (shuffling, dropout, Mixup) from `seed_key` and its number, so that a run
    resumed from `checkpoint_path` draws exactly what the uninterrupted run would have.
    Build `model` and call this inside `paddle.utils.unique_name.guard()` (see EpochCheckpoint)."""
    schedule = warmup_cosine(hyper.lr, hyper.epochs, hyper.warmup_epochs, len(train_loader), hyper.restart_epochs)
    companions = {"feature_term": feature_term.method} if feature_term is not None else {}
    optimizer = build_optimizer(model, schedule, hyper.weight_decay, hyper.clip_grad_norm, list(companions.values()),
                                hyper.head, hyper.backbone_lr_scale)
    scaler = grad_scaler(hyper.amp)
    average = WeightAverage(model, hyper.ema_decay) if hyper.ema_decay > 0 else None
    trainer = paddle.DataParallel(model) if world_size() > 1 else model
    # Data-parallel ranks draw their own dropout and mixing: the rank joins the seed key.
    rank_key = (rank(),) if world_size() > 1 else ()

    def train_epoch(epoch: int) -> EpochStats:
        if hyper.head_epochs > 0:  # staged fine-tuning: the stage follows the epoch, so a resumed run is in it too
            hold_backbone(model, hyper.head, held=epoch <= hyper.head_epochs)
        seed_everything(*seed_key, epoch, *rank_key)
        stats = train_one_epoch(model, teacher, train_loader, optimizer, schedule, loss_fn, hyper,
                                np.random.default_rng([*seed_key, epoch, *rank_key]), scaler, epoch, average,
                                f"{desc} {epoch}", trainer, feature_term)
        average_buffers(model)
        if average is not None:
            average.synchronize()
        return stats

    checkpoint = EpochCheckpoint(checkpoint_path, model, optimizer, average, companions) if checkpoint_path else None
    return fit(model, train_epoch, val_loader, hyper.epochs, hyper.patience, on_epoch, checkpoint, average)
