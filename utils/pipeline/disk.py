"""Whether the disk has room for the work a run has left, checked before any training.

What a run writes is dominated by a few large files whose sizes follow from the networks'
parameter counts and the stored teacher views: those are counted for the work still to do
(a resumed run needs room only for what it has left), plus a margin for the small files."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import paddle
import paddle.nn as nn

from models.student import build_student
from models.teacher import build_teacher, head_name
from models.weights import pooled_feature_size
from utils.distill.features import wants_features
from utils.runtime.config import Config
from utils.runtime.errors import UserError

MB = 2**20
FLOAT32, FLOAT16 = 4, 2
# A trained network keeps one copy of its weights (a fold's best student, a cached teacher). While
# it trains, its epoch checkpoint holds four (the weights, AdamW's two moments, the EMA), and the
# next one is written beside it before replacing it: eight at the peak, for each process training.
CHECKPOINT_COPIES = 8
SMALL_FILES_MB = 50  # reports, probabilities, curves, logs


@dataclasses.dataclass
class RemainingWork:
    """The run's work still to do that writes large files."""
    students: int  # fold students (and CE-only baselines) and the final student still to train
    teachers: int  # fold teachers still to train
    labelled_images: float  # images whose teacher views are still to label (views each)
    processes: int  # networks trained at once


def weights_bytes(model: nn.Layer) -> int:
    return FLOAT32 * sum(int(p.size) for p in model.parameters())


def needed_mb(cfg: Config, num_classes: int, work: RemainingWork) -> int:
    """Megabytes the remaining work writes at most: the weights it keeps, the stored views, and
    the epoch checkpoints of the largest network being trained in each process."""
    total, largest = SMALL_FILES_MB * MB, 0
    with paddle.utils.unique_name.guard():  # built to be counted: the run's parameter names stay as they are
        if work.students:
            settings = cfg.student
            student = weights_bytes(build_student(settings.student, num_classes, "none", width=settings.student_width,
                                                  attention=settings.attention,
                                                  attention_blocks=settings.attention_blocks))
            total, largest = total + work.students * student, student
        if work.teachers or work.labelled_images:
            model, _ = build_teacher(num_classes, "none", cfg.teacher.teacher)
            teacher = weights_bytes(model)
            total += work.teachers * teacher
            largest = max(largest, teacher if work.teachers else 0)
            head = getattr(model, head_name(cfg.teacher.teacher))
            outputs = num_classes + (pooled_feature_size(head) if wants_features(cfg.distill) else 0)
            total += work.labelled_images * min(cfg.teacher.teacher_views, cfg.optim.epochs) * outputs * FLOAT16
    total += work.processes * CHECKPOINT_COPIES * largest
    return int(total // MB) + 1


def check_room(directory: Path, needed: int, what: str) -> None:
    """One line, before any training, when `directory`'s disk has less free space than `needed` MB."""
    free = shutil.disk_usage(directory).free // MB
    if free < needed:
        raise UserError(f"only {free} MB free for {directory}; {what} writes up to {needed} MB: "
                        "free some space or choose another --output_dir")
