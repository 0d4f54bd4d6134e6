"""What a run shows while it trains and after: VisualDL records (scalars,
images, PR curves, hyper-parameters) and the one-line-per-epoch console log."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import paddle
from visualdl import LogWriter

from utils.data.dataset import ImageDataset
from utils.data.mixing import mix_batch
from utils.engine.loops import EpochRecord, Evaluation

GRID_COLUMNS = 8


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """The epoch's curves by VisualDL tag: train/val loss and accuracy, the loss's parts
    (not when the loss has just one part, which would repeat the loss), the weight
    average's validation scores, and the learning rate (the epoch's mean)."""
    scalars = {"train/loss": record.train_loss, "train/acc": record.train_acc,
               "val/loss": record.val_loss, "val/acc": record.val_acc, "lr": record.lr}
    if len(record.train_parts) > 1:
        scalars.update({f"train/{name}": value for name, value in record.train_parts.items()})
    if record.ema_val_acc is not None:
        scalars.update({"val_ema/loss": record.ema_val_loss, "val_ema/acc": record.ema_val_acc})
    return scalars


def epoch_logger(writer: Optional[LogWriter], prefix: str, fold: int, epochs: int, history: list, quiet: bool,
                 progress: Optional[Callable[[EpochRecord], str]] = None) -> Callable[[EpochRecord, bool], None]:
    """The per-epoch hook for `fit`: scalars under `prefix` in VisualDL, the record
    appended to `history`, and one console line for a newly trained epoch unless `quiet`,
    ending in what `progress` says of the run (its time left)."""
    best = {"acc": -1.0, "epoch": 0}
    name = prefix.rstrip("/") or "student"

    def on_epoch(record: EpochRecord, replayed: bool) -> None:
        history.append(dataclasses.asdict(record))
        if writer:
            for tag, value in epoch_scalars(record).items():
                writer.add_scalar(f"{prefix}{tag}", value, record.epoch)
        if record.score > best["acc"]:
            best.update(acc=record.score, epoch=record.epoch)
        if replayed:
            return
        run_note = progress(record) if progress else ""
        if quiet:
            return
        average = f" (average {record.ema_val_acc:.4f})" if record.ema_val_acc is not None else ""
        print(f"fold {fold} {name} epoch {record.epoch:>3}/{epochs}  train loss {record.train_loss:.4f} "
              f"acc {record.train_acc:.4f}  | val loss {record.val_loss:.4f} acc {record.val_acc:.4f}{average}"
              f"  | lr {record.lr:.2e}  | {record.seconds:.1f}s  | best {best['acc']:.4f} (epoch {best['epoch']})"
              + (f"  | {run_note}" if run_note else ""), flush=True)

    return on_epoch


def log_augmented_batch(writer: LogWriter, dataset: ImageDataset, mixup_alpha: float, cutmix_alpha: float,
                        rng: np.random.Generator, mean: Sequence[float], std: Sequence[float]) -> None:
    """Training images as the networks see them (augmented, then mixed), as a grid image:
    a wrong augmentation shows at a glance. Read from the dataset directly, not through a
    DataLoader, whose prefetching thread would go on drawing random numbers in the background."""
    samples = [dataset[i] for i in range(min(2 * GRID_COLUMNS, len(dataset)))]
    images = paddle.to_tensor(np.stack([image for image, *_ in samples]))
    labels = paddle.to_tensor(np.array([label for _, label, *_ in samples]))
    mixed, _ = mix_batch(images, labels, mixup_alpha, cutmix_alpha, rng)
    pixels = mixed.numpy().transpose(0, 2, 3, 1) * np.array(std) + np.array(mean)
    pixels = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    rows = -(-len(pixels) // GRID_COLUMNS)
    padded = np.zeros((rows * GRID_COLUMNS, *pixels.shape[1:]), np.uint8)
    padded[:len(pixels)] = pixels
    h, w = pixels.shape[1:3]
    grid = padded.reshape(rows, GRID_COLUMNS, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, GRID_COLUMNS * w, 3)
    writer.add_image("train/augmented_batch", grid, step=0)


@contextlib.contextmanager
def _numpy_float_alias():
    """VisualDL 2.5.3 computes PR curves with `np.float`, which NumPy removed in 1.24:
    provide the alias for the duration of the call only."""
    added = "float" not in np.__dict__
    if added:
        np.float = float
    try:
        yield
    finally:
        if added:
            del np.float


def log_best_epoch(writer: LogWriter, best: Evaluation, classes: Sequence[str], epoch: int,
                   confusion_png: Path) -> None:
    """The best epoch's confusion matrix as an image, and a precision-recall curve per class."""
    image = cv2.imread(str(confusion_png))
    writer.add_image("val/confusion_matrix", cv2.cvtColor(image, cv2.COLOR_BGR2RGB), step=epoch)
    with _numpy_float_alias():
        for index, name in enumerate(classes):
            writer.add_pr_curve(f"val/pr_curve/{name}", (best.labels == index).astype("int32"),
                                best.probs[:, index].astype("float32"), step=epoch, num_thresholds=50)


# The settings that shape a run's result, for VisualDL's hyper-parameter view: with all of them
# (42 columns of paths, worker counts and flags) its parallel-coordinates chart froze a browser tab.
HPARAM_KEYS = ("student", "student_width", "attention", "student_weights", "teacher", "teacher_weights",
               "teacher_epochs", "kd", "img_size", "epochs", "lr", "recipe", "mixup_alpha", "cutmix_alpha",
               "auto_augment", "label_smoothing", "ema_decay", "num_folds")


def log_run(log_dir: Path, settings: dict, metrics: dict[str, float], confusion_png: Path) -> None:
    """The run's main settings with its final metrics (as percentages with one decimal), for
    VisualDL's hyper-parameter view, and the out-of-fold confusion matrix."""
    with LogWriter(logdir=str(log_dir)) as writer:
        # VisualDL takes numbers and strings only: None goes in as text.
        hparams = {key: settings[key] if isinstance(settings[key], (int, float, str)) else str(settings[key])
                   for key in HPARAM_KEYS}
        writer.add_hparams(hparams, [f"summary/{name}" for name in metrics])
        for name, value in metrics.items():
            writer.add_scalar(f"summary/{name}", round(100 * value, 1), 0)
        image = cv2.imread(str(confusion_png))
        writer.add_image("oof/confusion_matrix", cv2.cvtColor(image, cv2.COLOR_BGR2RGB), step=0)


def visualdl_command(log_dir: str) -> str:
    """How to watch the logs, with run names relative to the log folder (VisualDL names runs by
    the path it is given). `--language en`: VisualDL 2.5.3's page fails (500) for browsers whose
    language is neither English nor Chinese unless a language is set."""
    folder = Path(log_dir)
    if folder.is_absolute():
        try:
            folder = folder.relative_to(Path.cwd())
        except ValueError:
            return f"cd {folder} && visualdl --logdir . --language en"
    return f"visualdl --logdir {folder} --language en"
