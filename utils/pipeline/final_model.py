"""The one small model to ship: after the folds, a student trained on every image,
distilled from the fold teachers, for the number of epochs cross-validation chose
(the median of the folds' best epochs). Its expected accuracy is the
cross-validated estimate: it has no held-out images of its own.

Its teacher signal (utils/distill/signal.py, `teach_final`): with the teacher view
cache, each image as a view one of its fold teachers stored, with that teacher's
stored logits; without it, the fold teachers' averaged softmaxes on every batch."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import paddle

from models.student import input_normalization
from utils.data.dataset import make_loader
from utils.data.splits import FINAL_SEED_STREAM, STUDENT_AUGMENTATION, FoldData
from utils.data.transforms import build_train_transform
from utils.deploy.checkpoint import META_NAME, save_checkpoint
from utils.distill.methods import create_method
from utils.distill.signal import teach_final
from utils.engine.loops import train_model
from utils.pipeline.folds import (
    FoldInputs,
    FoldResult,
    check_finite,
    hard_label_loss,
    new_student,
    student_settings,
    student_spec,
    teacher_setup,
)
from utils.reporting.visual_logging import epoch_logger, fresh_log
from utils.runtime import layout
from utils.runtime.config import Config
from utils.runtime.files import write_text_atomic
from utils.runtime.process import seed_everything

FINAL_STATE = "training_final.pdparams"


def final_epochs(results: Sequence[FoldResult]) -> int:
    """The median of the folds' best epochs, rounded up."""
    return max(1, math.ceil(float(np.median([r.best_epoch for r in results]))))


def train_final_student(cfg: Config, folds: Sequence[FoldData], inputs: FoldInputs, results: Sequence[FoldResult],
                        expected_acc: float, temperature: float = 1.0) -> Optional[Path]:
    """Train (or find, when an earlier run of the same name finished it) run_dir/final/. Its spec
    carries `temperature`, fitted on the out-of-fold predictions, which inference applies."""
    final_dir = layout.final_dir(inputs.run_dir)
    if (final_dir / META_NAME).is_file():
        print(f"the final student was finished by an earlier run of {cfg.outputs.run_name}: reusing it", flush=True)
        return final_dir
    final_dir.mkdir(parents=True, exist_ok=True)
    epochs = final_epochs(results)
    hard_loss = hard_label_loss(cfg, inputs.labels, inputs.num_classes)
    method = create_method(cfg.distill, hard_loss, epochs)
    transform = build_train_transform(cfg.augment, cfg.data.img_size, input_normalization(cfg.student.student))
    seed = (cfg.data.seed, FINAL_SEED_STREAM, STUDENT_AUGMENTATION)
    dataset, teacher = teach_final(teacher_setup(cfg), method, folds, inputs.teacher_key, inputs.images, transform,
                                   seed, inputs.unlabeled)
    unlabeled = len(dataset) - len(inputs.images)
    loader = make_loader(dataset, cfg.data.batch_size, train=True, num_workers=cfg.runtime.num_workers,
                         unlabeled_ratio=cfg.data.unlabeled_ratio if unlabeled else None, seed=seed)
    print(f"final student: {len(inputs.images)} images" + (f" and {unlabeled} unlabeled ones" if unlabeled else "")
          + f", {epochs} epochs (the median best epoch of the folds)", flush=True)
    if inputs.clock is not None:
        inputs.clock.start_final(epochs / cfg.optim.epochs)
    history: list[dict] = []
    settings = student_settings(cfg)
    settings.epochs, settings.patience = epochs, None
    seed_everything(cfg.data.seed + FINAL_SEED_STREAM)
    log = layout.log_dir(cfg.outputs.log_dir, cfg.outputs.run_name, layout.FINAL_DIR)
    with paddle.utils.unique_name.guard(), fresh_log(log) as writer:
        student, feature_term = new_student(cfg, inputs.num_classes, teacher)
        result = train_model(student, teacher, method, loader, None, settings,
                             (cfg.data.seed, FINAL_SEED_STREAM, STUDENT_AUGMENTATION),
                             epoch_logger(writer, "", "final", epochs, history, cfg.outputs.quiet,
                                          inputs.progress("student", len(loader) * cfg.data.batch_size, epochs)),
                             final_dir / FINAL_STATE, desc="final epoch", feature_term=feature_term)
    check_finite(result, "final", cfg)
    save_checkpoint(final_dir, result.best_state, student_spec(cfg, inputs.index.classes, temperature), {
        "kd": cfg.distill.kd,
        "fold": "final",
        "epochs": epochs,
        "trained_on": len(inputs.images),
        "unlabeled": unlabeled,
        "weights": "average" if result.best_is_average else "model",
        "expected_val_acc": expected_acc,
    })
    write_text_atomic(final_dir / "history.json", json.dumps({"student": history}, indent=1))
    (final_dir / FINAL_STATE).unlink(missing_ok=True)
    return final_dir
