"""One fold of a run: its split, its loaders, its teacher, its distilled student
(and, with `baseline`, a CE-only student), and the files it leaves in fold{k}/."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import paddle

from kernels.cpu_kernels import use_fast_cpu_kernels
from models.student import build_student, head_name, input_normalization
from models.teacher import last_stage
from utils.data.dataset import ImageDataset, make_loader, with_unlabeled
from utils.data.folders import DatasetIndex, Sample
from utils.data.splits import STUDENT_AUGMENTATION, TEACHER_AUGMENTATION, FoldData
from utils.data.transforms import build_eval_transform, build_train_transform
from utils.deploy.checkpoint import META_NAME, read_meta, save_checkpoint
from utils.deploy.explain import NoSpatialMap, cam_agreement, grad_cams
from utils.deploy.spec import ModelSpec
from utils.distill.features import create_feature_distillation
from utils.distill.methods import create_method, method_settings
from utils.distill.signal import TeacherSignal, pending_teacher_work, replays_views, stored_views, teach_fold
from utils.distill.teachers import TeacherKey, TeacherSetup, load_teacher, teacher_cache_path
from utils.engine.loops import (
    EpochRecord,
    FeatureTerm,
    FitResult,
    TrainingDiverged,
    TrainingSettings,
    fine_tuning_settings,
    predict,
    train_model,
)
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss, TrainingLoss, balanced_class_weights
from utils.pipeline.estimate import RunClock, describe
from utils.reporting.metrics import (
    accuracy,
    macro_f1,
    save_confusion_matrix,
    top_k,
    top_k_accuracy,
    write_classification_report,
)
from utils.reporting.visual_logging import epoch_logger, fold_name, fresh_log, log_augmented_batch, log_best_epoch
from utils.runtime import layout
from utils.runtime.config import Config
from utils.runtime.errors import UserError
from utils.runtime.files import exclusive_lock, write_array_atomic, write_json_atomic, write_text_atomic
from utils.runtime.process import seed_everything

# Validation images on which the students' Grad-CAM maps are compared with the teacher's
# (a few seconds per model on a CPU).
CAM_IMAGES = 64
# The training state after each epoch (utils/engine/training_state.py), kept until the fold is finished.
STUDENT_STATE, BASELINE_STATE = "training_student.pdparams", "training_baseline.pdparams"


@dataclasses.dataclass
class FoldResult:
    fold: int
    n_train: int
    n_val: int
    teacher_val_acc: Optional[float]
    baseline_val_acc: Optional[float]  # the CE-only student, when `baseline` is on
    student_val_acc: float
    student_val_macro_f1: float
    student_val_acc_tta: float  # the same student with flip test-time augmentation
    student_val_top5: Optional[float]  # with more than 5 classes
    best_epoch: int
    val_probs: np.ndarray
    # With `baseline`: the mean correlation of each student's Grad-CAM maps with the teacher's.
    student_cam_agreement: Optional[float] = None
    baseline_cam_agreement: Optional[float] = None


@dataclasses.dataclass
class FoldInputs:
    """What every fold of a run shares: the data, decoded once, and its content digests."""
    index: DatasetIndex
    samples: list[Sample]
    images: Sequence[np.ndarray]
    labels: np.ndarray
    digests: list[str]  # of each sample's file (utils/data/manifest.py)
    run_dir: Path
    clock: Optional[RunClock] = None  # the run's time estimate
    # --unlabeled_dir: the photos nobody labelled, decoded once, and a digest of their digests
    unlabeled: Sequence[np.ndarray] = ()
    unlabeled_key: str = ""

    def progress(self, kind: str, images: int, epochs: int, then: int = 0) -> Optional[Callable[[EpochRecord], str]]:
        """For epoch_logger: an epoch of `kind` over `images` images (of `epochs`) corrects the
        estimate, which the epoch's line then shows; `then` epochs of the same length follow in
        this process (the CE-only student after the distilled one)."""
        clock = self.clock
        if clock is None:
            return None

        def note(record: EpochRecord) -> str:
            clock.observe(kind, images, record.seconds)
            own_left = (epochs - record.epoch + then) * record.seconds
            return f"run: {describe(clock.left_after(own_left))} left"

        return note

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def teacher_key(self) -> TeacherKey:
        return TeacherKey(self.digests, self.labels, self.num_classes, self.unlabeled_key)

    def fold_dir(self, fold: FoldData) -> Path:
        return layout.fold_dir(self.run_dir, fold.fold)


def save_fold_result(fold_dir: Path, result: FoldResult) -> None:
    write_array_atomic(fold_dir / "val_probs.npy", result.val_probs)
    # Last: its presence means the fold is complete.
    write_json_atomic(fold_dir / layout.FOLD_RESULT, {k: v for k, v in dataclasses.asdict(result).items()
                                                 if k != "val_probs"})


def load_fold_result(fold_dir: Path) -> Optional[FoldResult]:
    """The fold's saved result; None while the fold is unfinished. A fold whose files were
    damaged after it finished (a truncated result.json, best.json or val_probs.npy) counts as
    unfinished, with one line saying so: its result is the last file written, so training it
    again repairs it."""
    if not layout.is_finished_fold(fold_dir):
        return None
    try:
        fields = json.loads((fold_dir / layout.FOLD_RESULT).read_text(encoding="utf-8"))
        read_meta(fold_dir / META_NAME)
        return FoldResult(**fields, val_probs=np.load(fold_dir / "val_probs.npy"))
    except (OSError, ValueError, TypeError, UserError) as error:
        print(f"{fold_dir.name}: its saved files are damaged ({str(error).splitlines()[0][:120]}); "
              "training the fold again", flush=True)
        (fold_dir / layout.FOLD_RESULT).unlink(missing_ok=True)
        return None


def teacher_setup(cfg: Config) -> TeacherSetup:
    """The teacher side's part of the configuration (utils/distill/teachers.py)."""
    return TeacherSetup(cfg.teacher, cfg.data, cfg.augment, cfg.optim, cfg.distill,
                        input_normalization(cfg.student.student), layout.teachers_dir(cfg.outputs.output_dir),
                        cfg.runtime.fast_depthwise, cfg.runtime.amp)


def student_spec(cfg: Config, classes: Sequence[str], temperature: float = 1.0) -> ModelSpec:
    """The spec of the run's students (utils/deploy/spec.py)."""
    return ModelSpec.for_student(cfg.student, cfg.data.img_size, cfg.augment.crop, classes, temperature)


def hard_label_loss(cfg: Config, train_labels: np.ndarray, num_classes: int) -> HardLabelLoss:
    """The fold's hard-label loss; balanced class weights come from its training split."""
    weights = balanced_class_weights(train_labels, num_classes) if cfg.optim.class_weights == "balanced" else None
    return HardLabelLoss(cfg.optim.label_smoothing, weights, cfg.optim.focal_gamma)


@dataclasses.dataclass
class FoldLoaders:
    """A fold's images as each model sees them."""
    student: paddle.io.DataLoader  # the student's stream (with unlabeled images), the teacher's views when cached
    fresh: paddle.io.DataLoader  # the labelled images of that stream, new views every epoch (the CE baseline)
    labelled: paddle.io.DataLoader  # the labelled images of the student's stream, as it serves them
    teacher: paddle.io.DataLoader  # the teacher's own stream
    val: paddle.io.DataLoader


def fold_loaders(cfg: Config, fold: FoldData, images: Sequence[np.ndarray], labels: np.ndarray,
                 replay_views: bool, unlabeled: Sequence[np.ndarray] = ()) -> FoldLoaders:
    """`replay_views`: the student replays the teacher's stored views (the view cache). `unlabeled`:
    images that join the student's training split without labels (--unlabeled_dir), after it."""
    train_images, train_labels = [images[i] for i in fold.train_indices], labels[fold.train_indices]
    normalization = input_normalization(cfg.student.student)
    views = stored_views(teacher_setup(cfg)) if replay_views else None

    def train_loader(stream: int, views: Optional[int] = None, extra: Sequence[np.ndarray] = ()
                     ) -> paddle.io.DataLoader:
        transform = build_train_transform(cfg.augment, cfg.data.img_size, normalization)
        seed = (cfg.data.seed, fold.fold, stream)
        dataset = ImageDataset(*with_unlabeled(train_images, train_labels, extra), transform, seed, views)
        return make_loader(dataset, cfg.data.batch_size, train=True, num_workers=cfg.runtime.num_workers,
                           unlabeled_ratio=cfg.data.unlabeled_ratio if len(extra) else None, seed=seed)

    val_set = ImageDataset([images[i] for i in fold.val_indices], labels[fold.val_indices],
                           build_eval_transform(cfg.data.img_size, cfg.augment.crop, normalization))
    return FoldLoaders(
        student=train_loader(STUDENT_AUGMENTATION, views, unlabeled),
        fresh=train_loader(STUDENT_AUGMENTATION),
        labelled=train_loader(STUDENT_AUGMENTATION, views),
        teacher=train_loader(TEACHER_AUGMENTATION),
        val=make_loader(val_set, cfg.data.batch_size * 2, train=False, num_workers=cfg.runtime.num_workers),
    )


def student_settings(cfg: Config) -> TrainingSettings:
    optim, augment = cfg.optim, cfg.augment
    return TrainingSettings(optim.lr, optim.epochs, optim.warmup_epochs, optim.weight_decay, augment.mixup_alpha,
                            cfg.runtime.amp, optim.patience, augment.cutmix_alpha, optim.clip_grad_norm,
                            optim.ema_decay, **fine_tuning_settings(optim, head_name(cfg.student.student)))


def new_student(cfg: Config, num_classes: int, teacher: Optional[TeacherSignal]
                ) -> tuple[paddle.nn.Layer, Optional[FeatureTerm]]:
    """A freshly built student, and the feature distillation that trains with it when
    --feature_kd asks for it and the teacher gives features. Call inside
    `paddle.utils.unique_name.guard()` (EpochCheckpoint: the same parameter names on resumption)."""
    settings = cfg.student
    student = build_student(settings.student, num_classes, settings.student_weights, settings.freeze_student_blocks,
                            settings.attention, settings.attention_blocks, settings.student_width)
    use_fast_cpu_kernels(student, cfg.runtime.fast_depthwise)
    feature_term = create_feature_distillation(cfg.distill, method_settings(cfg.distill), student,
                                               head_name(cfg.student.student),
                                               teacher and teacher.feature_dim)
    return student, feature_term


def train_student(cfg: Config, fold: int, num_classes: int, loss_fn: TrainingLoss, teacher: Optional[TeacherSignal],
                  train_loader: paddle.io.DataLoader, val_loader: paddle.io.DataLoader,
                  on_epoch: Callable, checkpoint_path: Path) -> FitResult:
    """A freshly built student, trained with `loss_fn` (and `teacher`), with early stopping,
    continuing from `checkpoint_path` when an interrupted run left its state there.
    Seeded by the fold alone, so that the same fold always starts from the same state."""
    if checkpoint_path.is_file():
        print(f"fold {fold}: continuing from the training state an interrupted run saved ({checkpoint_path})",
              flush=True)
    seed_everything(cfg.data.seed + fold)
    with paddle.utils.unique_name.guard():
        student, feature_term = new_student(cfg, num_classes, teacher)
        return train_model(student, teacher, loss_fn, train_loader, val_loader, student_settings(cfg),
                           (cfg.data.seed, fold, STUDENT_AUGMENTATION), on_epoch, checkpoint_path,
                           desc=f"fold {fold} epoch", feature_term=feature_term)


def fold_method(cfg: Config, fold: FoldData, inputs: FoldInputs) -> tuple[HardLabelLoss, TrainingLoss]:
    hard_loss = hard_label_loss(cfg, inputs.labels[fold.train_indices], inputs.num_classes)
    return hard_loss, create_method(cfg.distill, hard_loss, cfg.optim.epochs)


def device_kind() -> str:
    return "gpu" if paddle.get_device().startswith("gpu") else "cpu"


def train_fold_teacher(cfg: Config, fold: FoldData, inputs: FoldInputs) -> None:
    """Train and cache the fold's teacher (and label its views) ahead of the fold, where
    run_fold then finds it: a separate task, so that the workers keep every core busy."""
    if (load_fold_result(inputs.fold_dir(fold)) is not None
            or pending_teacher_work(teacher_setup(cfg), inputs.teacher_key, fold) == (False, False)):
        return  # nothing to do ahead: the fold finds its teacher and views cached
    hard_loss, method = fold_method(cfg, fold, inputs)
    loaders = fold_loaders(cfg, fold, inputs.images, inputs.labels, replays_views(cfg.distill, cfg.teacher),
                           inputs.unlabeled)
    teach_fold(teacher_setup(cfg), method, fold, inputs.teacher_key, hard_loss, loaders, device_kind(),
               epoch_logger(None, "teacher", fold.fold, cfg.teacher.teacher_epochs, [], cfg.outputs.quiet,
                            inputs.progress("teacher", len(fold.train_indices), cfg.teacher.teacher_epochs)))


def teacher_warning(fold: int, teacher_acc: float, baseline_acc: float) -> str:
    return (f"fold {fold}: the teacher ({teacher_acc:.4f}) is less accurate than the CE-only student "
            f"({baseline_acc:.4f}), so it can only pull the student towards its own mistakes. A better teacher: "
            "ImageNet weights (--teacher_weights imagenet or a .pdparams file), more --teacher_epochs, or a recipe "
            "that suits it (--recipe scratch from scratch); or distil with --kd dist, which copes better with a gap.")


def check_finite(result: FitResult, fold: int | str, cfg: Config) -> None:
    """A model whose weights or validation loss are not finite numbers is never saved."""
    weights_finite = all(np.isfinite(value).all() for value in result.best_state.values()
                         if np.issubdtype(np.asarray(value).dtype, np.floating))
    if weights_finite and (result.best is None or math.isfinite(result.best.loss)):
        return
    raise TrainingDiverged(f"{fold_name(fold)}: the best model's weights or validation loss are not finite numbers, "
                           f"so it is not saved; lower --lr (now {cfg.optim.lr}) or clip gradients with "
                           "--clip_grad_norm 5")


def run_fold(cfg: Config, fold: FoldData, inputs: FoldInputs) -> FoldResult:
    """Train and evaluate one fold, or return its saved result when an earlier run of the same
    name finished it. One process trains a fold at a time (its folds may train on other machines)."""
    fold_dir = inputs.fold_dir(fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(fold_dir / ".lock", f"fold {fold.fold} of run {cfg.outputs.run_name}",
                        advice="let it finish, and train other folds with --folds"):
        finished = load_fold_result(fold_dir)
        if finished is not None:
            print(f"fold {fold.fold} was finished by an earlier run of {cfg.outputs.run_name}: reusing it", flush=True)
            return finished
        return train_fold(cfg, fold, inputs, fold_dir)


def cam_agreements(cfg: Config, fold: FoldData, inputs: FoldInputs, val_set: ImageDataset,
                   states: Sequence[dict]) -> list[Optional[float]]:
    """For each student state, the mean correlation of its Grad-CAM maps with the fold teacher's,
    on the first CAM_IMAGES validation images, for the class the teacher predicts; None for
    each where a network's last maps are too small at this input size (not measurable, not 0)."""
    setup = teacher_setup(cfg)
    teacher = load_teacher(setup, inputs.num_classes, teacher_cache_path(setup, inputs.teacher_key, fold))
    images = np.stack([val_set[i][0] for i in range(min(CAM_IMAGES, len(val_set)))])
    spec = student_spec(cfg, inputs.index.classes)
    try:
        teacher_maps, teacher_classes = grad_cams(teacher, images, stage=last_stage(teacher))
        agreements = []
        for state in states:
            student = spec.build()
            student.set_state_dict(state)
            agreements.append(cam_agreement(student, teacher_maps, teacher_classes, images))
        return agreements
    except NoSpatialMap:
        return [None] * len(states)


def train_fold(cfg: Config, fold: FoldData, inputs: FoldInputs, fold_dir: Path) -> FoldResult:
    """The fold's teacher (cached or trained), its student (and CE-only student), and its files."""
    classes = inputs.index.classes
    hard_loss, method = fold_method(cfg, fold, inputs)
    loaders = fold_loaders(cfg, fold, inputs.images, inputs.labels, replays_views(cfg.distill, cfg.teacher),
                           inputs.unlabeled)
    train_set, val_set = loaders.fresh.dataset, loaders.val.dataset  # the labelled training and validation images
    per_epoch = len(loaders.student) * cfg.data.batch_size  # the student's images per epoch, unlabeled ones among them

    with fresh_log(layout.log_dir(cfg.outputs.log_dir, cfg.outputs.run_name, fold.fold)) as writer:
        log_augmented_batch(writer, train_set, cfg.augment.mixup_alpha, cfg.augment.cutmix_alpha,
                            np.random.default_rng([cfg.data.seed, fold.fold, 2]),
                            *input_normalization(cfg.student.student))
        teacher, teacher_acc = None, None
        history: dict[str, list] = {"teacher": [], "student": [], "baseline": []}
        if method.needs_teacher:
            teacher, teacher_acc = teach_fold(
                teacher_setup(cfg), method, fold, inputs.teacher_key, hard_loss, loaders, device_kind(),
                epoch_logger(writer, "teacher", fold.fold, cfg.teacher.teacher_epochs, history["teacher"],
                             cfg.outputs.quiet, inputs.progress("teacher", len(train_set), cfg.teacher.teacher_epochs)))

        epochs = cfg.optim.epochs
        result = train_student(cfg, fold.fold, len(classes), method, teacher, loaders.student, loaders.val,
                               epoch_logger(writer, "", fold.fold, epochs, history["student"], cfg.outputs.quiet,
                                            inputs.progress("student", per_epoch, epochs,
                                                            then=epochs if cfg.distill.baseline and method.needs_teacher
                                                            else 0)),
                               fold_dir / STUDENT_STATE)
        baseline_acc, agreements = None, [None, None]
        if cfg.distill.baseline and method.needs_teacher:
            if len(inputs.unlabeled):
                # What the unlabeled photos add: the same distilled student on the labelled images alone.
                comparison = (method, teacher, loaders.labelled)
            else:
                # A plain CE student draws fresh views every epoch, as it would on its own.
                comparison = (CrossEntropyOnly(hard_loss), None, loaders.fresh)
            baseline = train_student(
                cfg, fold.fold, len(classes), *comparison, loaders.val,
                epoch_logger(writer, "baseline", fold.fold, epochs, history["baseline"], cfg.outputs.quiet,
                             inputs.progress("student", len(train_set), epochs)),
                fold_dir / BASELINE_STATE,
            )
            baseline_acc = baseline.best.acc
            agreements = cam_agreements(cfg, fold, inputs, val_set, [result.best_state, baseline.best_state])
            if teacher_acc < baseline_acc and not len(inputs.unlabeled):
                print(f"warning: {teacher_warning(fold.fold, teacher_acc, baseline_acc)}", flush=True)
        best = result.best
        save_confusion_matrix(fold_dir / "confusion_matrix.png", best.labels, best.preds, classes,
                              f"fold {fold.fold}, best epoch {result.best_epoch}")
        log_best_epoch(writer, best, classes, result.best_epoch, fold_dir / "confusion_matrix.png")

    check_finite(result, fold.fold, cfg)
    spec = student_spec(cfg, classes)
    best_model = spec.build()
    best_model.set_state_dict(result.best_state)
    tta_probs, _ = predict(best_model, loaders.val, flip_tta=True)
    save_checkpoint(fold_dir, result.best_state, spec, {
        "kd": cfg.distill.kd,
        "fold": fold.fold,
        "best_epoch": result.best_epoch,
        "weights": "average" if result.best_is_average else "model",
        "val_acc": best.acc,
        "teacher_val_acc": teacher_acc,
    })
    write_classification_report(fold_dir / "classification_report.txt", best.labels, best.preds, classes)
    write_text_atomic(fold_dir / "history.json", json.dumps(history, indent=1))
    k = top_k(len(classes))
    fold_result = FoldResult(fold.fold, len(train_set), len(val_set), teacher_acc, baseline_acc, best.acc,
                             macro_f1(best.labels, best.preds, len(classes)),
                             accuracy(best.labels, tta_probs.argmax(axis=1)),
                             top_k_accuracy(best.labels, best.probs, k) if k else None, result.best_epoch, best.probs,
                             *agreements)
    save_fold_result(fold_dir, fold_result)
    for state in (STUDENT_STATE, BASELINE_STATE):
        (fold_dir / state).unlink(missing_ok=True)
    return fold_result
