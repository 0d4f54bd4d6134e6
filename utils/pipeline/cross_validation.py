"""Stratified K-fold distillation, end to end: data, folds, per-fold teacher and
student, and every output of a run."""
from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import paddle
from sklearn.model_selection import StratifiedKFold
from visualdl import LogWriter

from models.attention import check_attention
from models.fast_depthwise import fast_depthwise_operator, use_fast_depthwise
from models.student import STUDENTS, build_student
from models.weights import check_weights_arg
from utils.data.dataset import ImageDataset, make_loader
from utils.data.folders import DatasetIndex, Sample, SkippedFile, check_class_counts, scan_dataset
from utils.data.images import load_images
from utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform, resize_size
from utils.deploy.checkpoint import WEIGHTS_NAME, load_student, save_checkpoint
from utils.distill.methods import CrossEntropyLoss, create_loss
from utils.distill.teachers import prepare_teacher, teacher_cache_key
from utils.distill.view_cache import prepare_views, view_count
from utils.engine.loops import FitResult, LiveTeacher, Teacher, TrainingSettings, predict, train_model
from utils.reporting.metrics import accuracy, macro_f1, save_confusion_matrix, write_classification_report
from utils.reporting.report import write_report
from utils.reporting.visual_logging import epoch_logger, log_augmented_batch, log_best_epoch, log_run
from utils.runtime.config import RUNTIME_SETTINGS, Config, load_saved_config, save_config
from utils.runtime.errors import UserError
from utils.runtime.files import partial_path
from utils.runtime.process import cpu_count, die_with_parent, seed_everything, select_device
from utils.runtime.registry import lookup


@dataclasses.dataclass
class FoldData:
    fold: int
    train_indices: np.ndarray
    val_indices: np.ndarray


@dataclasses.dataclass
class FoldResult:
    fold: int
    n_train: int
    n_val: int
    teacher_val_acc: Optional[float]
    baseline_val_acc: Optional[float]  # the CE-only student, when `baseline` is on
    student_val_acc: float
    student_val_macro_f1: float
    best_epoch: int
    val_probs: np.ndarray


def check_components(cfg: Config) -> None:
    """Unknown component names and missing weights files stop the run before any work."""
    check_weights_arg(cfg.teacher_weights, "teacher_weights")
    check_weights_arg(cfg.student_weights, "student_weights")
    lookup(STUDENTS, cfg.student, "student")
    check_attention(cfg.attention)
    create_loss(cfg)


# Separate augmentation streams, so that the teacher never labels the very views it trained on.
TEACHER_AUGMENTATION, STUDENT_AUGMENTATION = 0, 1


def make_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[FoldData]:
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return [FoldData(k, train, val) for k, (train, val) in enumerate(splitter.split(np.zeros(len(labels)), labels))]


# Disk a fold needs at most: a cached ResNet50 teacher (94 MB) and its training state,
# the student's training state and checkpoint; stored teacher views come on top.
DISK_PER_FOLD_MB = 400


def prepare_run_dir(cfg: Config) -> Path:
    """The run's directory, checked to be writable and roomy before any training."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {run_dir}: {error.strerror}; choose another --output_dir") from None
    free_mb = shutil.disk_usage(run_dir).free // 2**20
    if free_mb < DISK_PER_FOLD_MB * cfg.num_folds:
        raise UserError(f"only {free_mb} MB free for {run_dir}; a {cfg.num_folds}-fold run needs up to "
                        f"{DISK_PER_FOLD_MB * cfg.num_folds} MB: free some space or choose another --output_dir")
    return run_dir


def train_student(cfg: Config, fold: int, num_classes: int, loss_fn, teacher: Optional[Teacher],
                  train_loader: paddle.io.DataLoader, val_loader: paddle.io.DataLoader,
                  on_epoch: Callable, checkpoint_path: Path) -> FitResult:
    """A freshly built student, trained with `loss_fn` (and `teacher`), with early stopping,
    continuing from `checkpoint_path` when an interrupted run left its state there.
    Seeded by the fold alone, so that the same fold always starts from the same state."""
    if checkpoint_path.is_file():
        print(f"fold {fold}: continuing from the training state an interrupted run saved ({checkpoint_path})",
              flush=True)
    seed_everything(cfg.seed + fold)
    with paddle.utils.unique_name.guard():  # EpochCheckpoint: the same parameter names on resumption
        student = build_student(cfg.student, num_classes, cfg.student_weights, cfg.freeze_student_blocks,
                                cfg.attention, cfg.attention_blocks, cfg.student_width)
        if cfg.fast_depthwise:
            use_fast_depthwise(student)
        settings = TrainingSettings(cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.mixup_alpha,
                                    cfg.amp, cfg.patience)
        return train_model(student, teacher, loss_fn, train_loader, val_loader, settings,
                           (cfg.seed, fold, STUDENT_AUGMENTATION), on_epoch, checkpoint_path, desc=f"fold {fold} epoch")


def check_same_run(cfg: Config, run_dir: Path) -> None:
    """Running again with the same run name continues that run, so its settings must be the same."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_saved_config(saved_path).to_dict()
    differs = [k for k, v in cfg.to_dict().items() if k not in RUNTIME_SETTINGS and saved.get(k) != v]
    if differs:
        raise UserError(f"run {cfg.run_name} already exists with other settings ({', '.join(differs)}); "
                        f"choose another --run_name, or continue it with --resume {cfg.run_name}")


def _save_fold_result(fold_dir: Path, result: FoldResult) -> None:
    np.save(fold_dir / "val_probs.npy", result.val_probs)
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k != "val_probs"}
    tmp = partial_path(fold_dir / "result.json")
    tmp.write_text(json.dumps(fields, indent=2), encoding="utf-8")
    os.replace(tmp, fold_dir / "result.json")  # last: its presence means the fold is complete


def _load_fold_result(fold_dir: Path) -> Optional[FoldResult]:
    if not (fold_dir / "result.json").is_file():
        return None
    fields = json.loads((fold_dir / "result.json").read_text(encoding="utf-8"))
    return FoldResult(**fields, val_probs=np.load(fold_dir / "val_probs.npy"))


@dataclasses.dataclass
class FoldLoaders:
    """A fold's images as each model sees them."""
    student: paddle.io.DataLoader  # the student's augmentation stream, with the teacher's views when cached
    fresh: paddle.io.DataLoader  # the same stream, new views every epoch (the CE baseline)
    teacher: paddle.io.DataLoader  # the teacher's own stream
    val: paddle.io.DataLoader


def fold_loaders(cfg: Config, fold: FoldData, images: list[np.ndarray], labels: np.ndarray) -> FoldLoaders:
    train_images, train_labels = [images[i] for i in fold.train_indices], labels[fold.train_indices]

    def train_loader(stream: int, views: Optional[int] = None) -> paddle.io.DataLoader:
        dataset = ImageDataset(train_images, train_labels, build_train_transform(cfg), (cfg.seed, fold.fold, stream),
                               views)
        return make_loader(dataset, cfg.batch_size, train=True, num_workers=cfg.num_workers)

    cached_views = view_count(cfg) if create_loss(cfg).needs_teacher and cfg.teacher_cache == "views" else None
    val_set = ImageDataset([images[i] for i in fold.val_indices], labels[fold.val_indices],
                           build_eval_transform(cfg.img_size, cfg.crop))
    return FoldLoaders(
        student=train_loader(STUDENT_AUGMENTATION, cached_views),
        fresh=train_loader(STUDENT_AUGMENTATION),
        teacher=train_loader(TEACHER_AUGMENTATION),
        val=make_loader(val_set, cfg.batch_size * 2, train=False, num_workers=cfg.num_workers),
    )


def prepare_fold_teacher(cfg: Config, fold: FoldData, samples: list[Sample], num_classes: int, loaders: FoldLoaders,
                         on_epoch: Callable) -> tuple[Teacher, float]:
    """The fold's frozen teacher (cached or trained now) as the student's source of
    teacher logits: run on every batch, or replayed from its stored views."""
    seed_everything(cfg.seed + fold.fold)
    key = teacher_cache_key(cfg, samples, fold.train_indices, fold.fold)
    cache_path = Path(cfg.output_dir) / "teachers" / f"{key}.pdparams"
    prepared = prepare_teacher(cfg, num_classes, cache_path, loaders.teacher, loaders.val,
                               (cfg.seed, fold.fold, TEACHER_AUGMENTATION), on_epoch)
    source = "cached" if prepared.from_cache else "trained"
    print(f"fold {fold.fold} teacher ({source}, {cache_path.name}): val acc {prepared.val_acc:.4f}", flush=True)
    if cfg.teacher_cache == "off":
        return LiveTeacher(prepared.model), prepared.val_acc
    device = "gpu" if paddle.get_device().startswith("gpu") else "cpu"
    train_set = loaders.student.dataset
    views = prepare_views(cfg, prepared.model, not prepared.from_cache, train_set, cache_path, num_classes, device)
    count = views.teacher.logits.shape[0]
    what = "reused" if views.from_cache else f"labelled {count} views of {len(train_set)} images"
    print(f"fold {fold.fold} teacher views ({views.path.name}): {what} in {views.seconds:.1f}s", flush=True)
    return views.teacher, prepared.val_acc


def train_fold_teacher(cfg: Config, fold: FoldData, index: DatasetIndex, samples: list[Sample],
                       images: list[np.ndarray], labels: np.ndarray, run_dir: Path) -> None:
    """Train and cache the fold's teacher (and label its views) ahead of the fold, where
    run_fold then finds it: a separate task, so that run_folds keeps every core busy."""
    if _load_fold_result(run_dir / f"fold{fold.fold}") is not None:
        return
    prepare_fold_teacher(cfg, fold, samples, len(index.classes), fold_loaders(cfg, fold, images, labels),
                         epoch_logger(None, "teacher/", fold.fold, cfg.teacher_epochs, [], cfg.quiet))


IMAGE_STORE_NAME = "decoded_images.bin"  # removed when the run is finished

# The training state after each epoch (utils/resume.py), kept until the fold is finished.
STUDENT_STATE, BASELINE_STATE = "training_student.pdparams", "training_baseline.pdparams"


def run_fold(cfg: Config, fold: FoldData, index: DatasetIndex, samples: list[Sample], images: list[np.ndarray],
             labels: np.ndarray, run_dir: Path) -> FoldResult:
    """Train and evaluate one fold, or return its saved result when an earlier run of the same name finished it."""
    classes = index.classes
    fold_dir = run_dir / f"fold{fold.fold}"
    finished = _load_fold_result(fold_dir)
    if finished is not None:
        print(f"fold {fold.fold} was finished by an earlier run of {cfg.run_name}: reusing it", flush=True)
        return finished
    fold_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = create_loss(cfg)
    loaders = fold_loaders(cfg, fold, images, labels)
    train_set, val_set = loaders.student.dataset, loaders.val.dataset

    log_dir = Path(cfg.log_dir) / cfg.run_name / f"fold{fold.fold}"
    # VisualDL reads only a directory's newest log file, and a resumed fold replays its earlier epochs.
    for interrupted_log in log_dir.glob("vdlrecords.*"):
        interrupted_log.unlink()
    with LogWriter(logdir=str(log_dir)) as writer:
        log_augmented_batch(writer, train_set, cfg.mixup_alpha, np.random.default_rng([cfg.seed, fold.fold, 2]),
                            IMAGENET_MEAN, IMAGENET_STD)
        teacher, teacher_acc = None, None
        history: dict[str, list] = {"teacher": [], "student": [], "baseline": []}
        if loss_fn.needs_teacher:
            teacher, teacher_acc = prepare_fold_teacher(
                cfg, fold, samples, len(classes), loaders,
                epoch_logger(writer, "teacher/", fold.fold, cfg.teacher_epochs, history["teacher"], cfg.quiet))

        result = train_student(cfg, fold.fold, len(classes), loss_fn, teacher, loaders.student, loaders.val,
                               epoch_logger(writer, "", fold.fold, cfg.epochs, history["student"], cfg.quiet),
                               fold_dir / STUDENT_STATE)
        baseline_acc = None
        if cfg.baseline and loss_fn.needs_teacher:
            # A plain CE student draws fresh views every epoch, as it would on its own.
            baseline_acc = train_student(
                cfg, fold.fold, len(classes), CrossEntropyLoss(), None, loaders.fresh, loaders.val,
                epoch_logger(writer, "baseline/", fold.fold, cfg.epochs, history["baseline"], cfg.quiet),
                fold_dir / BASELINE_STATE,
            ).best.acc
        best = result.best
        save_confusion_matrix(fold_dir / "confusion_matrix.png", best.labels, best.preds, classes,
                              f"fold {fold.fold}, best epoch {result.best_epoch}")
        log_best_epoch(writer, best, classes, result.best_epoch, fold_dir / "confusion_matrix.png")

    save_checkpoint(fold_dir, result.best_state, {
        "classes": classes,
        "student": cfg.student,
        "student_width": cfg.student_width,
        "attention": cfg.attention,
        "attention_blocks": cfg.attention_blocks,
        "img_size": cfg.img_size,
        "crop": cfg.crop,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "kd": cfg.kd,
        "fold": fold.fold,
        "best_epoch": result.best_epoch,
        "val_acc": best.acc,
        "teacher_val_acc": teacher_acc,
    })
    write_classification_report(fold_dir / "classification_report.txt", best.labels, best.preds, classes)
    (fold_dir / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    fold_result = FoldResult(fold.fold, len(train_set), len(val_set), teacher_acc, baseline_acc, best.acc,
                             macro_f1(best.labels, best.preds, len(classes)), result.best_epoch, best.probs)
    _save_fold_result(fold_dir, fold_result)
    for state in (STUDENT_STATE, BASELINE_STATE):
        (fold_dir / state).unlink(missing_ok=True)
    return fold_result


def parallel_fold_count(cfg: Config, device: str, num_folds: int) -> int:
    """How many folds train at once. On CPU, one single-threaded process per core
    beats one process with more threads (README, "Speed"); a GPU trains one fold."""
    requested = cfg.parallel_folds or (1 if device == "gpu" else cpu_count())
    return max(1, min(requested, num_folds))


def _init_fold_worker(device: str) -> None:
    # Progress bars of folds running side by side would overwrite each other.
    os.environ["TQDM_DISABLE"] = "1"
    die_with_parent()
    paddle.set_device(device)


def run_folds(cfg: Config, folds: list[FoldData], workers: int, device: str, *shared) -> list[FoldResult]:
    """run_fold for every fold, in order; several at once in worker processes when workers > 1.
    A fold that fails stops the run: its exception is raised here, never swallowed."""
    if workers == 1:
        return [run_fold(cfg, fold, *shared) for fold in folds]
    # multiprocessing.Pool, not ProcessPoolExecutor: leaving its block on an interrupt terminates the
    # workers at once, where the executor would wait for the folds they are training to finish.
    with multiprocessing.get_context("spawn").Pool(workers, _init_fold_worker, (device,)) as pool:
        students: dict[int, multiprocessing.pool.AsyncResult] = {}

        def start_student(fold: FoldData, student_cfg: Config) -> None:
            students[fold.fold] = pool.apply_async(run_fold, (student_cfg, fold, *shared))

        if create_loss(cfg).needs_teacher:
            # Teachers are separate tasks, queued first, and each fold's student follows as soon as its
            # teacher is cached: 5 whole folds on 2 cores would leave one core idle for the last fold.
            # The student must not train the teacher it finds cached once more.
            student_cfg = dataclasses.replace(cfg, retrain_teacher=False)
            teachers = [pool.apply_async(train_fold_teacher, (cfg, fold, *shared),
                                         callback=lambda _, fold=fold: start_student(fold, student_cfg))
                        for fold in folds]
            for teacher in teachers:
                teacher.get()  # the callbacks have run once every get() returned
        else:
            for fold in folds:
                start_student(fold, cfg)
        results = [students[fold.fold].get() for fold in folds]
        # Let the workers exit on their own: Paddle's signal handlers can keep a worker alive
        # through the SIGTERM with which leaving the block would otherwise end it.
        pool.close()
        pool.join()
        return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def score_test_set(run_dir: Path, index: DatasetIndex, cfg: Config) -> tuple[Optional[dict], list[SkippedFile]]:
    """The held-out test/ split, scored by the mean softmax of every fold's best student."""
    if not index.test_samples:
        return None, []
    images, samples, skipped = load_images(index.test_samples, resize_size(cfg.img_size), desc="decoding test images")
    if not samples:
        return None, skipped
    labels = np.array([s.label for s in samples])
    loader = make_loader(ImageDataset(images, labels, build_eval_transform(cfg.img_size, cfg.crop)),
                         cfg.batch_size * 2, train=False, num_workers=cfg.num_workers)
    probs = np.mean([predict(load_student(path)[0], loader)[0]
                     for path in sorted(run_dir.glob(f"fold*/{WEIGHTS_NAME}"))], axis=0)
    preds = probs.argmax(axis=1)
    write_classification_report(run_dir / "test_classification_report.txt", labels, preds, index.classes)
    save_confusion_matrix(run_dir / "test_confusion_matrix.png", labels, preds, index.classes,
                          "held-out test set, fold ensemble")
    return {"n_test": len(samples), "test_acc": accuracy(labels, preds),
            "test_macro_f1": macro_f1(labels, preds, len(index.classes))}, skipped


def print_summary_table(results: list[FoldResult], with_teacher: bool) -> None:
    print("\nfold  teacher_acc  student_acc  macro_f1  best_epoch")
    for r in results:
        teacher = f"{r.teacher_val_acc:.4f}" if r.teacher_val_acc is not None else "-"
        print(f"{r.fold:>4}  {teacher:>11}  {r.student_val_acc:>11.4f}  {r.student_val_macro_f1:>8.4f}"
              f"  {r.best_epoch:>10}")
    s_mean, s_std = _mean_std([r.student_val_acc for r in results])
    f_mean, f_std = _mean_std([r.student_val_macro_f1 for r in results])
    teacher = "-"
    if with_teacher:
        t_mean, t_std = _mean_std([r.teacher_val_acc for r in results])
        teacher = f"{t_mean:.4f}±{t_std:.4f}"
    print(f"mean  {teacher:>11}  {s_mean:.4f}±{s_std:.4f}  {f_mean:.4f}±{f_std:.4f}")


def image_store_path(cfg: Config, count: int, run_dir: Path) -> Optional[Path]:
    """Where decoded images go when they would need more memory than image_memory_mb; None: in memory."""
    side = resize_size(cfg.img_size)
    expected_mb = count * side * side * 3 * 4 / 3 / 2**20  # short side `side`, photos about 4:3
    if expected_mb <= cfg.image_memory_mb:
        return None
    print(f"{count} decoded images need about {expected_mb:.0f} MB, more than image_memory_mb="
          f"{cfg.image_memory_mb}: they go to a memory-mapped file in {run_dir}", flush=True)
    return run_dir / IMAGE_STORE_NAME


def run_cross_validation(cfg: Config) -> dict:
    """Train and evaluate every fold; write the run's outputs; return summary.json's content."""
    check_components(cfg)
    if cfg.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # inherited by fold workers too
    start = time.perf_counter()
    device = select_device(cfg.device)
    if cfg.amp and device != "gpu":
        print("note: --amp (mixed precision) works on a GPU only; training in float32 on the CPU")
    if cfg.fast_depthwise and device == "cpu" and fast_depthwise_operator() is None:
        # Built (or found unbuildable) here once, so that fold workers neither build nor fail again.
        cfg = dataclasses.replace(cfg, fast_depthwise=False)
    index = scan_dataset(Path(cfg.data_dir))
    run_dir = prepare_run_dir(cfg)
    check_same_run(cfg, run_dir)
    images, samples, skipped = load_images(index.samples, resize_size(cfg.img_size),
                                           store=image_store_path(cfg, len(index.samples), run_dir))
    skipped = index.skipped + skipped
    labels = np.array([s.label for s in samples], dtype=np.int64)
    check_class_counts(index.classes, labels, cfg.num_folds)
    counts = np.bincount(labels, minlength=len(index.classes))
    print(f"{len(samples)} images in {len(index.classes)} classes from {cfg.data_dir} "
          f"({', '.join(f'{c}: {n}' for c, n in zip(index.classes, counts))}); "
          f"{len(skipped)} file(s) skipped; device {device}; run {run_dir}", flush=True)

    save_config(cfg, run_dir / "config.yaml")
    folds = make_folds(labels, cfg.num_folds, cfg.seed)
    fold_of = np.empty(len(samples), dtype=np.int64)
    for fold in folds:
        fold_of[fold.val_indices] = fold.fold
    (run_dir / "folds.json").write_text(
        json.dumps({s.path: int(k) for s, k in zip(samples, fold_of)}, indent=1), encoding="utf-8")

    workers = parallel_fold_count(cfg, device, len(folds))
    if workers > 1:
        print(f"training {workers} folds at a time, one process each", flush=True)
    results = run_folds(cfg, folds, workers, device, index, samples, images, labels, run_dir)

    oof_probs = np.zeros((len(samples), len(index.classes)), dtype=np.float32)
    for fold, result in zip(folds, results):
        oof_probs[fold.val_indices] = result.val_probs
    oof_preds = oof_probs.argmax(axis=1)
    with open(run_dir / "oof_predictions.csv", "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["path", "label", "pred", "fold", "confidence"])
        for i, sample in enumerate(samples):
            out.writerow([sample.path, index.classes[labels[i]], index.classes[oof_preds[i]], int(fold_of[i]),
                          f"{oof_probs[i, oof_preds[i]]:.6f}"])
    write_classification_report(run_dir / "classification_report.txt", labels, oof_preds, index.classes)
    save_confusion_matrix(run_dir / "confusion_matrix.png", labels, oof_preds, index.classes,
                          f"out-of-fold predictions, {cfg.num_folds} folds")
    test_scores, test_skipped = score_test_set(run_dir, index, cfg)
    skipped += test_skipped

    with_teacher = results[0].teacher_val_acc is not None
    student_mean, student_std = _mean_std([r.student_val_acc for r in results])
    summary = {
        "classes": index.classes,
        "folds": [{key: value for key, value in dataclasses.asdict(r).items() if key != "val_probs"}
                  for r in results],
        "student_val_acc_mean": student_mean,
        "student_val_acc_std": student_std,
        "student_val_macro_f1_mean": _mean_std([r.student_val_macro_f1 for r in results])[0],
        "teacher_val_acc_mean": _mean_std([r.teacher_val_acc for r in results])[0] if with_teacher else None,
        "baseline_val_acc_mean": (_mean_std([r.baseline_val_acc for r in results])[0]
                                  if results[0].baseline_val_acc is not None else None),
        "oof_acc": accuracy(labels, oof_preds),
        **(test_scores or {}),
        "skipped_files": [dataclasses.asdict(s) for s in skipped],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    metrics = {key: summary[key] for key in ("student_val_acc_mean", "student_val_macro_f1_mean", "oof_acc",
                                             "teacher_val_acc_mean") if summary[key] is not None}
    log_run(Path(cfg.log_dir) / cfg.run_name / "run", cfg.to_dict(), metrics, run_dir / "confusion_matrix.png")
    report = write_report(run_dir)
    (Path(cfg.output_dir) / "latest").write_text(cfg.run_name + "\n", encoding="utf-8")
    print_summary_table(results, with_teacher)
    if test_scores:
        print(f"held-out test set ({test_scores['n_test']} images), fold ensemble: acc {test_scores['test_acc']:.4f}")
    for item in skipped:
        print(f"skipped: {item.path} ({item.reason})")
    (run_dir / IMAGE_STORE_NAME).unlink(missing_ok=True)
    print(f"outputs in {run_dir}, the story in {report}; VisualDL: visualdl --logdir {cfg.log_dir}")
    return summary
