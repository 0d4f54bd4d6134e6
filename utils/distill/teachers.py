"""A fold's teacher: trained on the fold's training split only, scored on its
validation split, then frozen. Trained teachers are cached on disk, keyed by
everything that shapes them, so later runs (other students, other attention)
reuse them."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn

from kernels.cpu_kernels import use_fast_cpu_kernels
from models.teacher import adapt_inputs, build_teacher, freeze_backbone, freeze_teacher, head_name
from models.weights import Normalization
from utils.data.splits import FoldData
from utils.engine.loops import EpochRecord, TrainingSettings, evaluate, fine_tuning_settings, train_model
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss
from utils.runtime.config import AugmentSettings, DataSettings, DistillSettings, OptimSettings, TeacherSettings
from utils.runtime.distributed import barrier, is_main, world_size
from utils.runtime.errors import ConfigError
from utils.runtime.files import file_digest, write_json_atomic
from utils.runtime.weights_file import UnreadableWeights, load_weights_file, save_weights_file

# The settings that change what a teacher learns; anything else (the student,
# the distillation loss) may differ between runs that share teachers.
TEACHER_SETTINGS = (
    "teacher", "teacher_weights", "teacher_train", "teacher_epochs", "teacher_lr", "img_size", "batch_size",
    "weight_decay", "warmup_epochs", "mixup_alpha", "cutmix_alpha", "crop", "crop_scale_min", "hflip", "rotation",
    "color_jitter", "erasing", "auto_augment", "label_smoothing", "class_weights", "focal_gamma", "ema_decay",
    "clip_grad_norm", "num_folds", "seed",
)


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
    """The teacher side's part of the configuration. The teacher section, and the data,
    augmentation and optimisation settings it trains with beside the student, shape a teacher
    (TEACHER_SETTINGS of them key its cache); the distillation section says whether and how it
    is used; the rest is where and how it runs."""
    teacher: TeacherSettings
    data: DataSettings
    augment: AugmentSettings
    optim: OptimSettings
    distill: DistillSettings
    student_inputs: Normalization  # how the pipeline normalises images (for the student)
    cache_dir: Path  # the teacher cache: trained teachers and their stored views
    fast_kernels: bool  # the compiled CPU operators (--fast_depthwise)
    amp: bool

    def settings(self) -> dict[str, Any]:
        """The values of TEACHER_SETTINGS, by key."""
        values = {**dataclasses.asdict(self.data), **dataclasses.asdict(self.augment),
                  **dataclasses.asdict(self.optim), **dataclasses.asdict(self.teacher)}
        return {key: values[key] for key in TEACHER_SETTINGS}


@dataclasses.dataclass
class TeacherKey:
    """What a run's teachers are keyed by besides their settings: every image's content
    digest and label, in order (the fold adds its split). `unlabeled`: a digest of the
    unlabeled images the students learn on too (--unlabeled_dir), which the teacher labels
    beside the training split's: it keys the stored views, not the teacher."""
    digests: Sequence[str]
    labels: np.ndarray
    num_classes: int
    unlabeled: str = ""


@dataclasses.dataclass
class PreparedTeacher:
    model: nn.Layer
    val_acc: float
    from_cache: bool


def teacher_cache_path(setup: TeacherSetup, key: TeacherKey, fold: FoldData) -> Path:
    """Where the fold's trained teacher is cached (its views and training state go beside it)."""
    name = teacher_cache_key(setup, key.digests, key.labels, fold.train_indices, fold.fold)
    return setup.cache_dir / f"{name}.pdparams"


def is_cached(cache_path: Path) -> bool:
    """A cached teacher is complete once its .json is written (last)."""
    return cache_path.is_file() and cache_path.with_suffix(".json").is_file()


def teacher_cache_key(setup: TeacherSetup, digests: Sequence[str], labels: Sequence[int], train_indices: np.ndarray,
                      fold: int) -> str:
    """A hash of the images' contents and labels (in order), this fold's training split and
    the teacher settings: a photo replaced by another never finds the old photo's teacher."""
    digest = hashlib.sha256()
    for content, label in zip(digests, labels):
        digest.update(f"{content}\t{int(label)}\n".encode())
    digest.update(np.asarray(sorted(train_indices), dtype=np.int64).tobytes())
    settings = setup.settings()
    tuning = fine_tuning_settings(setup.optim, head_name(setup.teacher.teacher))
    # In the key only when they change the teacher's training, so that teachers cached before
    # these settings existed keep their keys.
    if tuning["head_epochs"] or tuning["restart_epochs"] or tuning["backbone_lr_scale"] != 1.0:
        settings["fine_tuning"] = tuning
    if setup.teacher.teacher_img_size:
        settings["teacher_img_size"] = setup.teacher.teacher_img_size
    if world_size() > 1:  # the batch is batch_size per process: the global batch differs
        settings["world_size"] = world_size()
    if setup.teacher.teacher_weights not in ("imagenet", "none"):
        settings["teacher_weights"] = file_digest(setup.teacher.teacher_weights)
    digest.update(json.dumps({"fold": fold, **settings}, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def read_cached(cache_path: Path) -> Optional[tuple[dict, dict]]:
    """The cached teacher's weights and record, read once; None when there is none. A damaged
    entry is moved aside (to *.damaged), with one line saying so, and the teacher is trained again."""
    if not is_cached(cache_path):
        return None
    try:
        state = load_weights_file(cache_path)
        meta = json.loads(cache_path.with_suffix(".json").read_text(encoding="utf-8"))
        float(meta["val_acc"])
        return state, meta
    except (UnreadableWeights, OSError, ValueError, TypeError, KeyError):
        for path in (cache_path, cache_path.with_suffix(".json")):
            if path.is_file():
                os.replace(path, path.with_name(path.name + ".damaged"))
        print(f"the cached teacher {cache_path.name} is damaged: moved aside (*.damaged), training it again",
              flush=True)
        return None


def built_teacher(setup: TeacherSetup, num_classes: int, weights: str) -> tuple[nn.Layer, bool]:
    """The configured teacher with `weights` (and whether its head knows these classes), on the
    faster CPU kernels, taking the pipeline's inputs: normalised for the student, at the
    student's size (resized to teacher_img_size when that is set)."""
    name = setup.teacher.teacher
    teacher, head_trained = build_teacher(num_classes, weights, name)
    use_fast_cpu_kernels(teacher, setup.fast_kernels)
    adapt_inputs(teacher, name, setup.student_inputs, setup.teacher.teacher_img_size or None)
    return teacher, head_trained


def load_teacher(setup: TeacherSetup, num_classes: int, cache_path: Path) -> nn.Layer:
    """A cached fold teacher, frozen."""
    teacher, _ = built_teacher(setup, num_classes, "none")
    teacher.set_state_dict(load_weights_file(cache_path))
    freeze_teacher(teacher)
    return teacher


def teacher_training_settings(setup: TeacherSetup) -> TrainingSettings:
    """The teacher trains to its last epoch (no early stopping: it is never selected on validation images)."""
    teacher, augment, optim = setup.teacher, setup.augment, setup.optim
    return TrainingSettings(teacher.teacher_lr, teacher.teacher_epochs, optim.warmup_epochs, optim.weight_decay,
                            augment.mixup_alpha, setup.amp, patience=None, cutmix_alpha=augment.cutmix_alpha,
                            clip_grad_norm=optim.clip_grad_norm, ema_decay=optim.ema_decay,
                            **fine_tuning_settings(optim, head_name(teacher.teacher)))


def prepare_teacher(
    setup: TeacherSetup,
    num_classes: int,
    hard_loss: HardLabelLoss,
    cache_path: Path,
    train_loader: paddle.io.DataLoader,
    val_loader: paddle.io.DataLoader,
    seed_key: tuple[int, ...],
    on_epoch: Callable[[EpochRecord, bool], None],
) -> PreparedTeacher:
    """The fold's frozen teacher, from the cache or trained now. Its training curves
    are kept beside it and go to `on_epoch` (as replayed) when it comes from the cache."""
    meta_path = cache_path.with_suffix(".json")
    with paddle.utils.unique_name.guard():  # EpochCheckpoint: the same parameter names on resumption
        teacher, head_trained = built_teacher(setup, num_classes, setup.teacher.teacher_weights)
        if setup.teacher.teacher_epochs == 0 and not head_trained:
            raise ConfigError(
                "teacher_epochs is 0, but the teacher weights carry no head trained for these "
                f"{num_classes} classes; train it with --teacher_epochs N or pass such weights"
            )
        cached = None if setup.teacher.retrain_teacher else read_cached(cache_path)
        if cached is not None:
            state, meta = cached
            teacher.set_state_dict(state)
            freeze_teacher(teacher)
            for record in meta.get("history", []):
                on_epoch(EpochRecord(**record), True)
            return PreparedTeacher(teacher, meta["val_acc"], True)

        history: list[EpochRecord] = []
        if setup.teacher.teacher_epochs > 0:
            if setup.teacher.teacher_train == "head":
                freeze_backbone(teacher, setup.teacher.teacher)
            checkpoint_path = cache_path.with_suffix(".training.pdparams")
            if setup.teacher.retrain_teacher:
                checkpoint_path.unlink(missing_ok=True)
            result = train_model(teacher, None, CrossEntropyOnly(hard_loss), train_loader, val_loader,
                                 teacher_training_settings(setup), seed_key, on_epoch, checkpoint_path,
                                 desc="teacher epoch")
            teacher.set_state_dict(result.best_state)  # the last epoch's weights, or their average
            val_acc, history = result.best.acc, result.history
        else:
            checkpoint_path = None
            val_acc = evaluate(teacher, val_loader).acc
    freeze_teacher(teacher)
    if is_main():  # the ranks of a data-parallel job hold the same teacher: one writes it
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)  # until the new weights are in place, the cache holds no teacher
        save_weights_file(cache_path, teacher.state_dict())
        meta = {"val_acc": val_acc, **setup.settings(),
                "history": [dataclasses.asdict(record) for record in history]}
        write_json_atomic(meta_path, meta)  # last: the cached teacher is complete
        if checkpoint_path:
            checkpoint_path.unlink(missing_ok=True)
    barrier()  # no rank looks for the cached teacher before it is complete
    return PreparedTeacher(teacher, val_acc, False)
