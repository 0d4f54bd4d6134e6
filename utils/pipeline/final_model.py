"""The one small model to ship: after the folds, a student trained on every image,
distilled from the fold teachers, for the number of epochs cross-validation chose
(the median of the folds' best epochs). Its expected accuracy is the
cross-validated estimate: it has no held-out images of its own.

Teaching: with the teacher view cache, every epoch shows each image as a view one
of its fold teachers stored (the teachers that trained on it take turns, epoch by
epoch), with that teacher's stored logits, so that no teacher labels anything
again. Without the cache, the fold teachers run on every batch and their softmaxes
are averaged."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from models.fast_depthwise import use_fast_depthwise
from models.student import build_student
from models.teacher import build_teacher, freeze_teacher
from utils.data.dataset import ImageDataset, make_loader
from utils.data.mixing import MixedTargets
from utils.data.transforms import build_train_transform, seeded_augmentation
from utils.deploy.checkpoint import META_NAME, save_checkpoint
from utils.deploy.inference import FINAL_DIR
from utils.deploy.spec import ModelSpec
from utils.distill.methods import create_method
from utils.distill.view_cache import mix_stored, view_cache_path, view_count
from utils.engine.loops import train_model
from utils.pipeline.folds import (
    STUDENT_AUGMENTATION,
    FoldData,
    FoldInputs,
    FoldResult,
    check_finite,
    hard_label_loss,
    student_settings,
    teacher_cache_path,
)
from utils.reporting.visual_logging import epoch_logger, fresh_log
from utils.runtime.config import Config
from utils.runtime.errors import UserError
from utils.runtime.files import write_text_atomic
from utils.runtime.process import seed_everything
from utils.runtime.weights_file import load_weights_file

FINAL_STATE = "training_final.pdparams"
FINAL_SEED_STREAM = 9  # the final student's own seeds (folds use their index)


def final_epochs(results: Sequence[FoldResult]) -> int:
    """The median of the folds' best epochs, rounded up."""
    return max(1, math.ceil(float(np.median([r.best_epoch for r in results]))))


class FoldViews(ImageDataset):
    """Every image, shown at epoch e as a view that one of its fold teachers labelled: the
    folds that trained on the image take turns epoch by epoch, and their views cycle. An
    item's index is its place in that fold's training split, and its view encodes the fold
    (fold * views + view), which is how FoldViewsTeacher finds the stored logits."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray, transform, seed: int,
                 folds: Sequence[FoldData], views: int) -> None:
        super().__init__(images, labels, transform)
        self.base_seed, self.stored_views = seed, views
        self.sources: list[list[tuple[int, int]]] = [[] for _ in images]
        for fold in folds:
            for local, image in enumerate(fold.train_indices):
                self.sources[image].append((fold.fold, local))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64, np.int64, np.int64]:
        sources = self.sources[index]
        fold, local = sources[self.view % len(sources)]
        view = (self.view // len(sources)) % self.stored_views
        with seeded_augmentation(self.base_seed, fold, STUDENT_AUGMENTATION, view, local):
            image = self.transform(self.images[index])
        return image, self.labels[index], np.int64(local), np.int64(fold * self.stored_views + view)


class FoldViewsTeacher:
    """The stored logits of FoldViews' items, from each fold teacher's view cache."""

    def __init__(self, logits_by_fold: dict[int, np.ndarray], views: int, temperature: float) -> None:
        self.logits_by_fold, self.views, self.temperature = logits_by_fold, views, temperature

    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets) -> paddle.Tensor:
        rows = [self.logits_by_fold[int(code) // self.views][int(code) % self.views, int(local)]
                for local, code in zip(indices.numpy(), views.numpy())]
        return mix_stored(paddle.to_tensor(np.stack(rows).astype(np.float32)), targets, self.temperature)


class EnsembleTeacher:
    """The fold teachers on every batch: their softmaxes at `temperature`, averaged, as logits."""

    def __init__(self, teachers: Sequence[nn.Layer], temperature: float) -> None:
        self.teachers, self.temperature = teachers, temperature

    @paddle.no_grad()
    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets) -> paddle.Tensor:
        probs = paddle.stack([F.softmax(t(images) / self.temperature, axis=1) for t in self.teachers]).mean(axis=0)
        return self.temperature * paddle.log(paddle.clip(probs, min=1e-12))


def _teachers(cfg: Config, folds: Sequence[FoldData], inputs: FoldInputs) -> list[Path]:
    paths = [teacher_cache_path(cfg, inputs, fold) for fold in folds]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"the final student needs the fold teachers, but {missing[0]} is gone; run again with "
                        "--final_model false, or with the same settings to train the teachers again")
    return paths


def final_training(cfg: Config, folds: Sequence[FoldData], inputs: FoldInputs, temperature: float):
    """The final student's training images and its teacher (None for CE-only)."""
    transform = build_train_transform(cfg)
    paths = _teachers(cfg, folds, inputs)
    views = view_count(cfg)
    stored = [view_cache_path(path, views) for path in paths]
    if cfg.teacher_cache == "views" and all(path.is_file() for path in stored):
        dataset = FoldViews(inputs.images, inputs.labels, transform, cfg.seed, folds, views)
        logits = {fold.fold: np.load(path, mmap_mode="r") for fold, path in zip(folds, stored)}
        return dataset, FoldViewsTeacher(logits, views, temperature)
    teachers = []
    for path in paths:
        teacher, _ = build_teacher(inputs.num_classes, "none", cfg.teacher)
        teacher.set_state_dict(load_weights_file(path))
        freeze_teacher(teacher)
        teachers.append(teacher)
    dataset = ImageDataset(inputs.images, inputs.labels, transform, (cfg.seed, FINAL_SEED_STREAM, STUDENT_AUGMENTATION))
    return dataset, EnsembleTeacher(teachers, temperature)


def train_final_student(cfg: Config, folds: Sequence[FoldData], inputs: FoldInputs, results: Sequence[FoldResult],
                        expected_acc: float) -> Optional[Path]:
    """Train (or find, when an earlier run of the same name finished it) run_dir/final/."""
    final_dir = inputs.run_dir / FINAL_DIR
    if (final_dir / META_NAME).is_file():
        print(f"the final student was finished by an earlier run of {cfg.run_name}: reusing it", flush=True)
        return final_dir
    final_dir.mkdir(parents=True, exist_ok=True)
    epochs = final_epochs(results)
    hard_loss = hard_label_loss(cfg, inputs.labels, inputs.num_classes)
    method = create_method(cfg, hard_loss)
    if method.needs_teacher:
        dataset, teacher = final_training(cfg, folds, inputs, method.temperature)
    else:
        dataset, teacher = ImageDataset(inputs.images, inputs.labels, build_train_transform(cfg),
                                        (cfg.seed, FINAL_SEED_STREAM, STUDENT_AUGMENTATION)), None
    loader = make_loader(dataset, cfg.batch_size, train=True, num_workers=cfg.num_workers)
    print(f"final student: {len(dataset)} images, {epochs} epochs (the median best epoch of the folds)", flush=True)
    history: list[dict] = []
    settings = student_settings(cfg)
    settings.epochs, settings.patience = epochs, None
    seed_everything(cfg.seed + FINAL_SEED_STREAM)
    with paddle.utils.unique_name.guard(), fresh_log(Path(cfg.log_dir) / cfg.run_name / FINAL_DIR) as writer:
        student = build_student(cfg.student, inputs.num_classes, cfg.student_weights, cfg.freeze_student_blocks,
                                cfg.attention, cfg.attention_blocks, cfg.student_width)
        if cfg.fast_depthwise:
            use_fast_depthwise(student)
        result = train_model(student, teacher, method, loader, None, settings,
                             (cfg.seed, FINAL_SEED_STREAM, STUDENT_AUGMENTATION),
                             epoch_logger(writer, "", "final", epochs, history, cfg.quiet,
                                          inputs.progress("student", len(dataset), epochs)),
                             final_dir / FINAL_STATE, desc="final epoch")
    check_finite(result, "final", cfg)
    save_checkpoint(final_dir, result.best_state, ModelSpec.from_config(cfg, inputs.index.classes), {
        "kd": cfg.kd,
        "fold": "final",
        "epochs": epochs,
        "trained_on": len(dataset),
        "weights": "average" if result.best_is_average else "model",
        "expected_val_acc": expected_acc,
    })
    write_text_atomic(final_dir / "history.json", json.dumps({"student": history}, indent=1))
    (final_dir / FINAL_STATE).unlink(missing_ok=True)
    return final_dir
