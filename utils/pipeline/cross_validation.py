"""Stratified K-fold distillation, end to end: the data, the folds (utils/pipeline/folds.py,
trained by utils/pipeline/workers.py), and every output of the run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kernels.cpu_kernels import compiled_operators_built
from models.attention import check_attention
from models.student import STUDENTS, build_student, input_normalization
from models.teacher import TEACHERS, build_teacher
from models.weights import check_weights_arg
from utils.data.dataset import UNLABELED, ImageDataset, make_loader
from utils.data.folders import (
    DatasetIndex,
    Sample,
    SkippedFile,
    check_class_counts,
    drop_duplicates,
    drop_unlabeled_copies,
    scan_dataset,
    scan_unlabeled,
)
from utils.data.images import load_images
from utils.data.manifest import DigestCache, Manifest, build_manifest, check_same_data
from utils.data.splits import FoldData, assigned_folds, make_folds
from utils.data.transforms import build_eval_transform, resize_size
from utils.deploy.checkpoint import META_NAME, WEIGHTS_NAME, load_student, read_meta
from utils.distill.features import wants_features
from utils.distill.methods import create_method, needs_teacher
from utils.distill.signal import pending_teacher_work
from utils.engine.loops import predict
from utils.engine.losses import HardLabelLoss
from utils.pipeline.disk import RemainingWork, check_room, needed_mb
from utils.pipeline.estimate import (
    RunClock,
    describe,
    plan_final,
    plan_fold,
    quick_preset_note,
    start_clock,
    student_images,
)
from utils.pipeline.final_model import train_final_student
from utils.pipeline.folds import FoldInputs, FoldResult, load_fold_result, teacher_setup
from utils.pipeline.workers import parallel_fold_count, run_folds
from utils.reporting.metrics import accuracy, macro_f1, save_confusion_matrix, write_classification_report
from utils.reporting.out_of_fold import analyse_out_of_fold, save_oof_probs
from utils.reporting.report import write_report
from utils.reporting.verdict import distillation_verdict
from utils.reporting.visual_logging import EMA_NOTE, log_run, visualdl_command
from utils.runtime import layout
from utils.runtime.config import RUNTIME_SETTINGS, Config, load_saved_config, save_config
from utils.runtime.distributed import barrier, init_distributed, is_main, rank, world_size
from utils.runtime.errors import ConfigError, UserError
from utils.runtime.files import (
    exclusive_lock,
    remove_stale_partials,
    write_array_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from utils.runtime.process import select_device
from utils.runtime.registry import lookup
from utils.runtime.text import printable


def check_components(cfg: Config) -> None:
    """Unknown component names and missing weights files stop the run before any work."""
    check_weights_arg(cfg.teacher.teacher_weights, "teacher_weights")
    check_weights_arg(cfg.student.student_weights, "student_weights")
    lookup(STUDENTS, cfg.student.student, "student")
    lookup(TEACHERS, cfg.teacher.teacher, "teacher")
    check_attention(cfg.student.attention)
    create_method(cfg.distill, HardLabelLoss(), cfg.optim.epochs)
    if wants_features(cfg.distill) and not needs_teacher(cfg.distill.kd):
        raise ConfigError(f"--feature_kd {cfg.distill.feature_kd} learns from a teacher: choose a --kd method too "
                          "(kl, dkd or dist), not none")
    if wants_features(cfg.distill) and world_size() > 1:
        raise ConfigError("--feature_kd trains a projection beside the student, which data-parallel training does "
                          "not share yet: train one process per fold (--parallel_folds) or set --feature_kd none")
    if cfg.data.unlabeled_dir:
        check_unlabeled_dir(cfg)
    if cfg.data.split_file:
        read_split_file(cfg)


def split_folds(cfg: Config, paths: Sequence[str], labels: np.ndarray) -> list[FoldData]:
    """The run's folds: --split_file's, or stratified K-fold by the seed."""
    if not cfg.data.split_file:
        return make_folds(labels, cfg.data.num_folds, cfg.data.seed)
    return assigned_folds([os.path.relpath(path, cfg.data.data_dir) for path in paths], read_split_file(cfg),
                          cfg.data.num_folds, f"--split_file {cfg.data.split_file}")


def read_split_file(cfg: Config) -> dict[str, int]:
    """--split_file's folds by image path, or one line saying what is wrong with the file."""
    path = Path(cfg.data.split_file)
    try:
        assignment = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"--split_file {path} cannot be read as JSON ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(assignment, dict) or not all(isinstance(fold, int) and not isinstance(fold, bool)
                                                   for fold in assignment.values()):
        raise ConfigError(f"--split_file {path} must hold {{\"class/photo.jpg\": fold, ...}} with whole-number folds")
    return {os.path.normpath(name): fold for name, fold in assignment.items()}

def check_unlabeled_dir(cfg: Config) -> None:
    """Unlabeled photos are a teacher's to label: a folder of its own, outside the class folders."""
    folder = Path(cfg.data.unlabeled_dir)
    if not folder.is_dir():
        raise ConfigError(f"--unlabeled_dir {folder} is not a folder")
    if not needs_teacher(cfg.distill.kd):
        raise ConfigError("--unlabeled_dir: unlabeled photos are learnt from a teacher's answers; choose a --kd "
                          "method (kl, dkd or dist), not none")
    if cfg.data.data_dir and _inside(folder, Path(cfg.data.data_dir)):
        raise ConfigError(f"--unlabeled_dir {folder} is inside --data_dir {cfg.data.data_dir}, where it would be read "
                          "as a class: keep the unlabeled photos in a folder of their own")
    if world_size() > 1:
        raise ConfigError("--unlabeled_dir trains one process per fold (--parallel_folds), not data-parallel yet")


SKIPPED_LIST = "skipped.txt"  # path<TAB>reason, one skipped file a line
LOCK_NAME = ".lock"  # held while the run's settings and data are checked, and while its outputs are written
RUNNING_NAME = ".running"  # held by every invocation training the run: alone when it trains every fold
DIGEST_CACHE_NAME = "file_digests.json"  # in output_dir: content digests of data files, by size and time


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_weights(cfg: Config) -> None:
    """Every weights file is read, and ImageNet weights fetched (or found in Paddle's cache), once,
    in this process, before anything is written or trained: offline, or with a file that is not
    weights for the network, the run stops at once with one line."""
    if cfg.teacher.teacher_weights != "none" and needs_teacher(cfg.distill.kd):
        build_teacher(2, cfg.teacher.teacher_weights, cfg.teacher.teacher)
    if cfg.student.student_weights != "none":
        build_student(cfg.student.student, 2, cfg.student.student_weights)


def check_outputs_outside_data(cfg: Config) -> None:
    """Outputs inside the data directory would be read as a class by the next run; a folder the
    run writes into that holds the data would have the run's files written among the photos."""
    data = Path(cfg.data.data_dir)
    for flag, folder in (("output_dir", cfg.outputs.output_dir), ("log_dir", cfg.outputs.log_dir)):
        if _inside(Path(folder), data):
            raise UserError(f"--{flag} {folder} is inside --data_dir {cfg.data.data_dir}: the next run would train on "
                            f"its files; choose a --{flag} outside the data")
    written = [("--output_dir and --run_name", layout.run_dir(cfg.outputs.output_dir, cfg.outputs.run_name)),
               ("--output_dir", layout.teachers_dir(cfg.outputs.output_dir)),
               ("--log_dir and --run_name", Path(cfg.outputs.log_dir) / cfg.outputs.run_name)]
    for flags, folder in written:
        if _inside(data, folder):
            raise UserError(f"--data_dir {cfg.data.data_dir} is inside {folder}, which the run writes into; choose "
                            f"other {flags}")


def prepare_run_dir(cfg: Config) -> Path:
    """The run's directory, checked to be writable (the room it needs is checked once the work left is known)."""
    run_dir = layout.run_dir(cfg.outputs.output_dir, cfg.outputs.run_name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {run_dir}: {error.strerror}; choose another --output_dir") from None
    return run_dir


def check_same_run(cfg: Config, run_dir: Path) -> None:
    """Running again with the same run name continues that run, so its settings must be the same."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_saved_config(saved_path).to_dict()
    # Where the run is kept is not what it computes: a moved or copied run resumes (--output_dir).
    differs = [k for k, v in cfg.to_dict().items() if k not in (*RUNTIME_SETTINGS, "output_dir") and saved.get(k) != v]
    if differs:
        raise UserError(f"run {cfg.outputs.run_name} already exists with other settings ({', '.join(differs)}); "
                        f"choose another --run_name, or continue it with --resume {cfg.outputs.run_name}")



def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def score_test_set(run_dir: Path, index: DatasetIndex, cfg: Config) -> tuple[Optional[dict], list[SkippedFile]]:
    """The held-out test/ split, scored by the mean softmax of every fold's best student, and
    by the final student when there is one."""
    if not index.test_samples:
        return None, []
    images, samples, skipped = load_images(index.test_samples, resize_size(cfg.data.img_size),
                                           desc="decoding test images")
    if not samples:
        return None, skipped
    labels = np.array([s.label for s in samples])
    transform = build_eval_transform(cfg.data.img_size, cfg.augment.crop, input_normalization(cfg.student.student))
    loader = make_loader(ImageDataset(images, labels, transform), cfg.data.batch_size * 2, train=False,
                         num_workers=cfg.runtime.num_workers)
    probs = np.mean([predict(load_student(path)[0], loader)[0]
                     for path in (d / WEIGHTS_NAME for d in layout.fold_dirs(run_dir).values())], axis=0)
    preds = probs.argmax(axis=1)
    write_array_atomic(run_dir / "test_probs.npy", probs.astype(np.float32))
    write_csv_atomic(run_dir / "test_predictions.csv", ["path", layout.TRUE_LABEL, layout.PREDICTED, "confidence"],
                     [[s.path, index.classes[labels[i]], index.classes[preds[i]], f"{probs[i, preds[i]]:.6f}"]
                      for i, s in enumerate(samples)])
    write_classification_report(run_dir / "test_classification_report.txt", labels, preds, index.classes)
    save_confusion_matrix(run_dir / "test_confusion_matrix.png", labels, preds, index.classes,
                          "held-out test set, fold ensemble")
    scores = {"n_test": len(samples), "test_acc": accuracy(labels, preds),
              "test_macro_f1": macro_f1(labels, preds, len(index.classes))}
    final = layout.final_dir(run_dir) / WEIGHTS_NAME
    if final.is_file():
        final_preds = predict(load_student(final)[0], loader)[0].argmax(axis=1)
        scores.update(final_test_acc=accuracy(labels, final_preds),
                      final_test_macro_f1=macro_f1(labels, final_preds, len(index.classes)))
    return scores, skipped


def print_summary_table(summary: dict) -> None:
    """Per fold: teacher, CE-only and distilled student accuracy (those the run has), macro-F1, best epoch."""
    def cell(value: Optional[float]) -> str:
        return f"{value:.4f}" if value is not None else "-"

    print("\nfold  teacher_acc  ce_only_acc  student_acc  distilled-ce  macro_f1  best_epoch")
    for f in summary["folds"]:
        gain = (f"{100 * (f['student_val_acc'] - f['baseline_val_acc']):+.1f} pts"
                if f["baseline_val_acc"] is not None else "-")
        print(f"{f['fold']:>4}  {cell(f['teacher_val_acc']):>11}  {cell(f['baseline_val_acc']):>11}  "
              f"{f['student_val_acc']:>11.4f}  {gain:>12}  {f['student_val_macro_f1']:>8.4f}  {f['best_epoch']:>10}")
    def mean_std(name: str) -> str:
        mean = summary.get(f"{name}_mean")
        return "-" if mean is None else f"{mean:.4f}±{summary[f'{name}_std']:.4f}"

    print(f"mean  {mean_std('teacher_val_acc'):>11}  {mean_std('baseline_val_acc'):>11}  "
          f"{mean_std('student_val_acc'):>11}  {'':>12}  {mean_std('student_val_macro_f1')}")
    if summary.get("verdict"):
        print(summary["verdict"]["sentence"])


def fold_summary(results: list[FoldResult], compared: str = "distillation") -> dict:
    """Means and standard deviations over folds of every score the folds have; the verdict on what the
    baseline student lacks (`compared`: distillation, or the unlabeled photos)."""
    summary = {"folds": [{key: value for key, value in dataclasses.asdict(r).items() if key != "val_probs"}
                         for r in results]}
    for name in ("teacher_val_acc", "baseline_val_acc", "student_val_acc", "student_val_macro_f1",
                 "student_val_acc_tta", "student_val_top5", "student_cam_agreement", "baseline_cam_agreement"):
        values = [getattr(r, name) for r in results]
        mean, std = _mean_std(values) if None not in values else (None, None)
        summary[f"{name}_mean"], summary[f"{name}_std"] = mean, std
    if summary["baseline_val_acc_mean"] is not None:
        summary["verdict"] = distillation_verdict([r.student_val_acc for r in results],
                                                  [r.baseline_val_acc for r in results], compared).to_dict()
    else:
        summary["verdict"] = None
    return summary


def estimate_run(cfg: Config, folds: list[FoldData], inputs: FoldInputs, workers: int, share: int,
                 device: str) -> RunClock:
    """Check that the disk has room for the work the run has left, then time that work on this
    machine and say how long it will take. `workers` fold processes side by side, each step
    shared by `share` data-parallel processes."""
    to_do = [fold for fold in folds if load_fold_result(inputs.fold_dir(fold)) is None]
    teacher_needed = needs_teacher(cfg.distill.kd)
    pending = [pending_teacher_work(teacher_setup(cfg), inputs.teacher_key, fold) if teacher_needed else (False, False)
               for fold in to_do]
    teachers = sum(to_train for to_train, _ in pending)
    views = sum(to_label for _, to_label in pending)
    final_to_train = cfg.outputs.final_model and not (layout.final_dir(inputs.run_dir) / META_NAME).is_file()
    students = len(to_do) * (1 + (cfg.distill.baseline and teacher_needed)) + final_to_train
    unlabeled = len(inputs.unlabeled)
    n_train_mean = float(np.mean([len(f.train_indices) for f in to_do])) if to_do else 0.0
    remaining = RemainingWork(students, teachers, views * (n_train_mean + unlabeled), workers * share)
    check_room(Path(cfg.outputs.output_dir), needed_mb(cfg, inputs.num_classes, remaining),
               f"the work left ({len(to_do)} fold(s), {teachers} teacher(s){', the final model' * final_to_train})")
    fold_work = [plan_fold(cfg, len(fold.train_indices), len(fold.val_indices), to_train, to_label, teacher_needed,
                           unlabeled)
                 for fold, (to_train, to_label) in zip(to_do, pending)]
    final_work = plan_final(cfg, student_images(cfg, len(inputs.samples), unlabeled) if final_to_train else 0,
                            teacher_needed)
    clock = start_clock(cfg, inputs.num_classes, fold_work, final_work, workers, share, inputs.images)
    print(f"estimated time: {describe(clock.total_seconds())} on this machine ({len(to_do)} fold(s) to train, "
          f"{teachers} teacher(s) to train; early stopping can make it shorter)", flush=True)
    note = quick_preset_note(clock, device, cfg)
    if note:
        print(note, flush=True)
    return clock


def image_store_path(cfg: Config, count: int, run_dir: Path, remove: bool = False) -> Optional[Path]:
    """Where decoded images go when they would need more memory than image_memory_mb; None: in
    memory. One file per data-parallel rank. With `remove`, the file is deleted (the run is done)."""
    path = run_dir / f"decoded_images.{rank()}.bin"
    if remove:
        path.unlink(missing_ok=True)
        return None
    side = resize_size(cfg.data.img_size)
    expected_mb = count * side * side * 3 * 4 / 3 / 2**20  # short side `side`, photos about 4:3
    if expected_mb <= cfg.data.image_memory_mb:
        return None
    print(f"{count} decoded images need about {expected_mb:.0f} MB, more than image_memory_mb="
          f"{cfg.data.image_memory_mb}: they go to a memory-mapped file in {run_dir}", flush=True)
    return path


def run_cross_validation(cfg: Config) -> dict:
    """Train and evaluate the run's folds (all, or those `folds` names); when every fold is
    finished, write the run's outputs. Returns summary.json's content, or, while folds are
    missing, {"missing_folds": [...]}."""
    check_components(cfg)
    start = time.perf_counter()
    device = select_device(cfg.runtime.device)
    init_distributed(cfg.runtime.dist_timeout_minutes)
    if cfg.outputs.quiet or not is_main():
        os.environ["TQDM_DISABLE"] = "1"  # inherited by fold workers too
    if cfg.runtime.amp and device != "gpu":
        print("note: --amp (mixed precision) works on a GPU only; training in float32 on the CPU")
    index = scan_dataset(Path(cfg.data.data_dir))
    check_outputs_outside_data(cfg)
    # Checked on the files found before anything is written, and again on those that decode.
    check_class_counts(index.classes, [s.label for s in index.samples], cfg.data.num_folds, cfg.data.batch_size)
    if cfg.data.split_file:  # checked on the files found, before anything is written
        split_folds(cfg, [s.path for s in index.samples], np.array([s.label for s in index.samples]))
    check_weights(cfg)
    run_dir = prepare_run_dir(cfg)
    # One invocation trains a whole run at a time: a second one with the same run name stops here, before
    # any work. Invocations that each train some folds (--folds, on several machines) may share the run.
    every_fold = cfg.data.folds == "all"
    with exclusive_lock(run_dir / RUNNING_NAME, f"run {cfg.outputs.run_name}", shared=not every_fold,
                        advice="let it finish (or stop it), or choose another --run_name"):
        return _train_and_report(cfg, index, run_dir, device, start)


def _train_and_report(cfg: Config, index: DatasetIndex, run_dir: Path, device: str, start: float) -> dict:
    """run_cross_validation once the options are checked and the run is this invocation's."""
    if is_main():  # what killed processes of earlier runs left half-written (169 MB for a ResNet50)
        for folder in (run_dir, layout.teachers_dir(cfg.outputs.output_dir)):
            remove_stale_partials(folder)
    # The run's settings and data are checked (and, the first time, recorded) by one process at a time.
    with exclusive_lock(run_dir / LOCK_NAME, f"run {cfg.outputs.run_name}"):
        check_same_run(cfg, run_dir)
        digests = DigestCache(Path(cfg.outputs.output_dir) / DIGEST_CACHE_NAME, cfg.data.verify_data)
        manifest = build_manifest(index, Path(cfg.data.data_dir), digests)
        check_same_data(manifest, run_dir, cfg.outputs.run_name)
        save_config(cfg, run_dir / "config.yaml")
    data_dir = Path(cfg.data.data_dir)
    index, duplicates = drop_duplicates(index, manifest.digests_by_path(data_dir), data_dir)
    if duplicates:
        print(f"warning: {duplicates} image(s) left out as copies of others (the same content: under two classes, "
              "all copies; in one class, counted once); listed in skipped.txt", flush=True)
    unlabeled = load_unlabeled(cfg, index, manifest, digests) if cfg.data.unlabeled_dir else Unlabeled()
    inputs, skipped, folds = decode(cfg, index, manifest, run_dir, device, unlabeled)
    if cfg.runtime.fast_depthwise and device == "cpu" and not compiled_operators_built():
        # Built (or found unbuildable) once the options and data are checked and the data line is out,
        # and here, so that fold workers neither build nor fail again.
        cfg = cfg.replace(fast_depthwise=False)
    chosen = chosen_folds(cfg, folds)
    workers = parallel_fold_count(cfg, device, len(chosen))
    if world_size() > 1:
        print(f"training data-parallel on {world_size()} processes; --batch_size {cfg.data.batch_size} per process, "
              f"{cfg.data.batch_size * world_size()} in all", flush=True)
    elif workers > 1:
        print(f"training {workers} folds at a time, one process each", flush=True)
        if cfg.runtime.num_workers:
            # A fold process may not start processes of its own (multiprocessing's daemonic workers):
            # --num_workers > 0 crashed there. Each fold's process reads its own images instead.
            print(f"note: --num_workers {cfg.runtime.num_workers} applies to one fold at a time (--parallel_folds 1); "
                  f"the {workers} fold processes read their images themselves", flush=True)
            cfg = cfg.replace(num_workers=0)
    inputs.clock = estimate_run(cfg, chosen, inputs, workers, world_size(), device)
    if cfg.optim.ema_decay > 0 and not cfg.outputs.quiet:
        print(EMA_NOTE, flush=True)
    run_folds(cfg, chosen, workers, device, inputs)
    barrier()
    # Whichever invocation finishes the last fold writes the run's outputs (folds may train elsewhere).
    with exclusive_lock(run_dir / LOCK_NAME, f"run {cfg.outputs.run_name}", wait=True):
        results = [load_fold_result(inputs.fold_dir(fold)) for fold in folds]
        missing = [fold.fold for fold, result in zip(folds, results) if result is None]
        if missing:
            print(missing_folds_note(cfg, missing), flush=True)
            return {"missing_folds": missing}
        return write_outputs(cfg, inputs, folds, results, skipped, start)


@dataclasses.dataclass
class Unlabeled:
    """The photos of --unlabeled_dir: decoded, a digest of their contents, and those left out."""
    images: Sequence[np.ndarray] = ()
    key: str = ""
    skipped: list[SkippedFile] = dataclasses.field(default_factory=list)


def load_unlabeled(cfg: Config, index: DatasetIndex, manifest: Manifest, digests: DigestCache) -> Unlabeled:
    """--unlabeled_dir's photos, decoded, without copies of a labelled image (a validation photo would
    come back into its own fold's training) or of each other, each left out listed with its reason."""
    folder = Path(cfg.data.unlabeled_dir)
    paths, skipped = scan_unlabeled(folder)
    digest_of = {}
    for path in paths:
        stat = os.stat(path)
        digest_of[path] = digests.digest(path, stat.st_size, stat.st_mtime_ns)
    digests.save()
    data_dir = Path(cfg.data.data_dir)
    labelled = {digest: os.path.relpath(path, data_dir) for path, digest in manifest.digests_by_path(data_dir).items()}
    kept, copies = drop_unlabeled_copies(paths, digest_of, labelled, folder)
    images, decoded, unreadable = load_images([Sample(path, UNLABELED) for path in kept],
                                              resize_size(cfg.data.img_size), desc="decoding unlabeled images")
    key = hashlib.sha256("\n".join(digest_of[sample.path] for sample in decoded).encode()).hexdigest()[:20]
    return Unlabeled(images, key if decoded else "", skipped + copies + unreadable)


def decode(cfg: Config, index: DatasetIndex, manifest: Manifest, run_dir: Path, device: str, unlabeled: Unlabeled
           ) -> tuple[FoldInputs, list[SkippedFile], list[FoldData]]:
    """The images, decoded once, the folds, and folds.json."""
    images, samples, skipped = load_images(index.samples, resize_size(cfg.data.img_size),
                                           store=image_store_path(cfg, len(index.samples), run_dir))
    skipped = index.skipped + skipped + unlabeled.skipped
    digest_of = manifest.digests_by_path(Path(cfg.data.data_dir))
    labels = np.array([s.label for s in samples], dtype=np.int64)
    check_class_counts(index.classes, labels, cfg.data.num_folds, cfg.data.batch_size)
    counts = np.bincount(labels, minlength=len(index.classes))
    print(f"{len(samples)} images in {len(index.classes)} classes from {printable(cfg.data.data_dir)} "
          f"({', '.join(f'{printable(c)}: {n}' for c, n in zip(index.classes, counts))}"
          + (f"; {printable(index.describe())}" if index.describe() else "") + "); "
          + (f"{len(unlabeled.images)} unlabeled images from {printable(cfg.data.unlabeled_dir)}; "
             if cfg.data.unlabeled_dir else "")
          + f"{len(skipped)} file(s) skipped{' (listed in skipped.txt)' if skipped else ''}; device {device}; "
          f"run {run_dir}", flush=True)
    # Before any training, so that a long run's skipped files can be looked at while it trains.
    write_text_atomic(run_dir / SKIPPED_LIST, "".join(f"{item.path}\t{item.reason}\n" for item in skipped))
    folds = split_folds(cfg, [s.path for s in samples], labels)
    fold_of = {s.path: fold.fold for fold in folds for s in (samples[i] for i in fold.val_indices)}
    write_text_atomic(run_dir / "folds.json", json.dumps({s.path: fold_of[s.path] for s in samples}, indent=1))
    inputs = FoldInputs(index, samples, images, labels, [digest_of[s.path] for s in samples], run_dir,
                        unlabeled=unlabeled.images, unlabeled_key=unlabeled.key)
    return inputs, skipped, folds


def chosen_folds(cfg: Config, folds: list[FoldData]) -> list[FoldData]:
    """The folds this invocation trains: `folds` is all, or fold numbers such as 0,2."""
    if cfg.data.folds == "all":
        return folds
    return [folds[k] for k in sorted({int(k) for k in cfg.data.folds.split(",")})]  # in range: checked with the config


def missing_folds_note(cfg: Config, missing: list[int]) -> str:
    names = ",".join(map(str, missing))
    command = layout.resume_command(layout.run_dir(cfg.outputs.output_dir, cfg.outputs.run_name), "--folds", names)
    return (f"run {cfg.outputs.run_name}: fold(s) {names} of {cfg.data.num_folds} not finished yet. Train them here "
            f"or on another machine that shares {cfg.outputs.output_dir}: {command}. The run's summary, report and "
            "final student are written when the last fold finishes.")


def write_outputs(cfg: Config, inputs: FoldInputs, folds: list[FoldData], results: list[FoldResult],
                  skipped: list[SkippedFile], start: float) -> dict:
    """Out-of-fold predictions and report, the final student, the held-out test set, summary.json,
    VisualDL's run record and report.md."""
    run_dir, index, labels, samples = inputs.run_dir, inputs.index, inputs.labels, inputs.samples
    oof_probs = np.zeros((len(samples), len(index.classes)), dtype=np.float32)
    fold_of = np.empty(len(samples), dtype=np.int64)
    for fold, result in zip(folds, results):
        oof_probs[fold.val_indices] = result.val_probs
        fold_of[fold.val_indices] = fold.fold
    oof_preds = oof_probs.argmax(axis=1)
    rows = [[sample.path, index.classes[labels[i]], index.classes[oof_preds[i]], int(fold_of[i]),
             f"{oof_probs[i, oof_preds[i]]:.6f}"] for i, sample in enumerate(samples)]
    columns = ["path", layout.TRUE_LABEL, layout.PREDICTED, "fold", "confidence"]
    write_csv_atomic(run_dir / "oof_predictions.csv", columns, rows)
    save_oof_probs(run_dir, oof_probs)
    write_classification_report(run_dir / "classification_report.txt", labels, oof_preds, index.classes)
    save_confusion_matrix(run_dir / "confusion_matrix.png", labels, oof_preds, index.classes,
                          f"out-of-fold predictions, {cfg.data.num_folds} folds")
    out_of_fold = analyse_out_of_fold(run_dir, [s.path for s in samples], index.classes, labels, fold_of, oof_probs,
                                      cfg.outputs.find_label_issues) if is_main() else {}
    barrier()  # the others wait out rank 0's analysis here, not in the final student's first step
    folds_summary = fold_summary(results, "the unlabeled photos" if len(inputs.unlabeled) else "distillation")
    final = None
    if cfg.outputs.final_model:
        temperature = out_of_fold["calibration"]["applied_temperature"] if out_of_fold else 1.0
        final_dir = train_final_student(cfg, folds, inputs, results, folds_summary["student_val_acc_mean"],
                                        temperature)
        barrier()
        final = {"path": layout.FINAL_DIR, **{key: value for key, value in read_meta(final_dir / META_NAME)[1].items()
                                       if key in ("epochs", "trained_on", "expected_val_acc")}}
    test_scores, test_skipped = score_test_set(run_dir, index, cfg)
    skipped = skipped + test_skipped
    summary = {
        "classes": index.classes,
        **folds_summary,
        "final_model": final,
        "oof_acc": accuracy(labels, oof_preds),
        **out_of_fold,
        **(test_scores or {}),
        "unlabeled": ({"dir": cfg.data.unlabeled_dir, "images": len(inputs.unlabeled),
                       "ratio": cfg.data.unlabeled_ratio} if cfg.data.unlabeled_dir else None),
        "skipped_files": [dataclasses.asdict(s) for s in skipped],
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    log_run(layout.log_dir(cfg.outputs.log_dir, cfg.outputs.run_name, layout.RUN_LOG), cfg.to_dict(), summary,
            run_dir / "confusion_matrix.png")
    write_text_atomic(layout.latest_pointer(cfg.outputs.output_dir), cfg.outputs.run_name + "\n")
    barrier()
    report = write_report(run_dir) if is_main() else None
    print_summary_table(summary)
    if test_scores:
        final_said = (f"the final student (the model inference.py uses) acc {test_scores['final_test_acc']:.4f}, "
                      if "final_test_acc" in test_scores else "")
        print(f"held-out test set ({test_scores['n_test']} images): {final_said}the fold ensemble acc "
              f"{test_scores['test_acc']:.4f}")
    for item in skipped:
        print(f"skipped: {printable(item.path)} ({printable(item.reason)})")
    image_store_path(cfg, 0, run_dir, remove=True)
    if is_main():  # the one process that wrote the report
        print(f"outputs in {run_dir}, the story in {report}; VisualDL: {visualdl_command(cfg.outputs.log_dir)}")
    return summary
