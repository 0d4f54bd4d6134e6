"""What a run shows while it trains and after: VisualDL records (scalars,
images, PR curves, hyper-parameters) and the one-line-per-epoch console log."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import paddle
from visualdl import LogWriter

from utils.data.dataset import ImageDataset
from utils.data.mixing import mix_batch
from utils.engine.loops import EpochRecord, Evaluation
from utils.runtime.distributed import is_main

GRID_COLUMNS = 8


@contextlib.contextmanager
def fresh_log(log_dir: Path) -> Iterator[Optional[LogWriter]]:
    """A VisualDL writer for `log_dir`, which starts empty: VisualDL reads only a directory's
    newest log file, and a resumed fold replays its earlier epochs into the new one. In a
    data-parallel job only rank 0 logs (the others get None)."""
    if not is_main():
        yield None
        return
    for interrupted_log in Path(log_dir).glob("vdlrecords.*"):
        interrupted_log.unlink()
    with LogWriter(logdir=str(log_dir)) as writer:
        yield writer


def epoch_scalars(record: EpochRecord, role: str = "") -> dict[str, float]:
    """The epoch's curves by VisualDL tag. Tags are grouped by split, so that VisualDL's scalar
    page (which orders groups by name) opens on train and val: train/loss, val/acc for the
    student, train/teacher_loss, val/baseline_acc for the others. The loss's parts appear only
    when there are several (one part would repeat the loss); the learning rate is the epoch's mean,
    times 1000 (VisualDL's axis cuts 0.00299 short; 2.99 reads whole)."""
    name = f"{role}_" if role else ""
    scalars = {f"train/{name}loss": record.train_loss, f"train/{name}acc": record.train_acc,
               f"train/{name}lr_x1000": 1000 * record.lr, f"val/{name}loss": record.val_loss,
               f"val/{name}acc": record.val_acc}
    if len(record.train_parts) > 1:
        scalars.update({f"train/{name}{part}": value for part, value in record.train_parts.items()})
    if record.ema_val_acc is not None:
        scalars.update({f"val/{name}ema_loss": record.ema_val_loss, f"val/{name}ema_acc": record.ema_val_acc})
    return {tag: value for tag, value in scalars.items() if value is not None}


def fold_name(fold: int | str) -> str:
    return fold if isinstance(fold, str) else f"fold {fold}"


# Said once per run (by the pipeline, before the epoch lines), not once per fold process.
EMA_NOTE = ("note: EMA is the accuracy of the weights' exponential moving average (--ema_decay), evaluated every "
            "epoch beside the weights themselves; the better of the two counts")


def epoch_logger(writer: Optional[LogWriter], role: str, fold: int | str, epochs: int, history: list, quiet: bool,
                 progress: Optional[Callable[[EpochRecord], str]] = None) -> Callable[[EpochRecord, bool], None]:
    """The per-epoch hook for `fit`: scalars of `role` ("" for the student, "teacher",
    "baseline") in VisualDL (epoch_scalars), the record
    appended to `history`, and one console line for a newly trained epoch unless `quiet`,
    ending in what `progress` says of the run (its time left)."""
    best: dict = {"acc": -1.0, "epoch": 0}
    name = role or "student"

    def on_epoch(record: EpochRecord, replayed: bool) -> None:
        history.append(dataclasses.asdict(record))
        if writer:
            for tag, value in epoch_scalars(record, role).items():
                writer.add_scalar(tag, value, record.epoch)
        if record.val_acc is not None and record.score > best["acc"]:
            best.update(acc=record.score, epoch=record.epoch)
        if replayed:
            return
        run_note = progress(record) if progress else ""
        if quiet:
            return
        average = f" (EMA {record.ema_val_acc:.4f})" if record.ema_val_acc is not None else ""
        validation = (f"val loss {record.val_loss:.4f} acc {record.val_acc:.4f}{average}" if record.val_acc is not None
                      else "no validation images")
        print(f"{fold_name(fold)} {name} epoch {record.epoch:>3}/{epochs}  train loss {record.train_loss:.4f} "
              f"acc {record.train_acc:.4f}  | {validation}"
              f"  | lr {record.lr:.2e}  | {record.seconds:.1f}s"
              + (f"  | best {best['acc']:.4f} (epoch {best['epoch']})" if record.val_acc is not None else "")
              + (f"  | {run_note}" if run_note else ""), flush=True)

    return on_epoch


def log_augmented_batch(writer: Optional[LogWriter], dataset: ImageDataset, mixup_alpha: float, cutmix_alpha: float,
                        rng: np.random.Generator, mean: Sequence[float], std: Sequence[float]) -> None:
    """Training images as the networks see them (augmented, then mixed), as a grid image:
    a wrong augmentation shows at a glance. Read from the dataset directly, not through a
    DataLoader, whose prefetching thread would go on drawing random numbers in the background."""
    if writer is None:
        return
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


def log_best_epoch(writer: Optional[LogWriter], best: Evaluation, classes: Sequence[str], epoch: int,
                   confusion_png: Path) -> None:
    """The best epoch's confusion matrix as an image, and a precision-recall curve per class."""
    if writer is None:
        return
    image = cv2.imread(str(confusion_png))
    writer.add_image("val/confusion_matrix", cv2.cvtColor(image, cv2.COLOR_BGR2RGB), step=epoch)
    with _numpy_float_alias():
        for index, name in enumerate(classes):
            writer.add_pr_curve(f"val/pr_curve/{name}", (best.labels == index).astype("int32"),
                                best.probs[:, index].astype("float32"), step=epoch, num_thresholds=50)


# The settings that shape a run's result most, for VisualDL's hyper-parameter view, and its two
# headline metrics. VisualDL 2.5.3's parallel-coordinates chart freezes the browser tab beyond about
# ten axes (seen in headless Chromium: 14 axes froze, 8 drew at once); the full settings are in each
# run's config.yaml and report.md.
HPARAM_KEYS = ("student", "teacher", "kd", "img_size", "epochs", "lr")
HPARAM_METRICS = {"val/cv_accuracy": "student_val_acc_mean", "val/cv_macro_f1": "student_val_macro_f1_mean"}


def log_run(log_dir: Path, settings: dict, summary: dict, confusion_png: Path) -> None:
    """The run's main settings with its headline metrics (as percentages with one decimal),
    for VisualDL's hyper-parameter view, and the out-of-fold confusion matrix. In a
    data-parallel job only rank 0 logs: it alone wrote the confusion matrix."""
    if not is_main():
        return
    with LogWriter(logdir=str(log_dir)) as writer:
        writer.add_hparams({key: settings[key] for key in HPARAM_KEYS}, list(HPARAM_METRICS))
        for tag, key in HPARAM_METRICS.items():
            writer.add_scalar(tag, round(100 * summary[key], 1), 0)
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
