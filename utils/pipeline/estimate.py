"""How long a run will take, said before it starts and kept up to date while it runs.

Before the folds start, a few steps of each kind of work the run has left (teacher
training, the teacher's forward passes that label views and evaluate it, student
training with its weight average, evaluation, and the augmentation every training
image goes through) are timed on this machine; with the run's image counts, epochs and
parallel folds this gives an estimate. Every finished epoch then corrects the rate of
its kind of work, and the epoch lines show the time left."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from kernels.cpu_kernels import use_fast_cpu_kernels
from models.student import build_student, input_normalization
from models.teacher import build_teacher
from utils.data.transforms import build_train_transform
from utils.engine.ema import WeightAverage
from utils.engine.optimization import build_optimizer, warmup_cosine
from utils.runtime.config import CPU_PRESET, PROJECT_ROOT, Config, read_yaml

# The preset for a first model on a CPU, used by default there (docs/training-from-scratch.md,
# "How long a run takes").
QUICK_NOTE_AFTER = 3600  # seconds


Work = dict[str, float]  # images through each kind of work


@dataclasses.dataclass
class FoldWork:
    """A fold's work: what its teacher task does (training, evaluating and labelling views)
    and what its student task does once the teacher is ready."""
    teacher: Work
    student: Work


@dataclasses.dataclass
class RunClock:
    """The work the run has left (per fold, then the final student's), the measured speed of
    each kind of work (img/s, one process), the fold processes side by side, the data-parallel
    processes that share every step, and when the run started."""
    folds: list[FoldWork]
    final: Work
    rates: dict[str, float]
    workers: int = 1
    share: int = 1
    started: float = dataclasses.field(default_factory=time.time)
    final_started: bool = False

    def seconds(self, work: Work) -> float:
        return sum(images / self.rates[kind] for kind, images in work.items() if images) / self.share

    def total_seconds(self) -> float:
        """The folds as the worker pool runs them, then the final student in one process."""
        tasks = [(self.seconds(fold.teacher), self.seconds(fold.student)) for fold in self.folds]
        return pool_seconds(tasks, self.workers) + self.seconds(self.final)

    def remaining_seconds(self) -> float:
        return max(0.0, self.total_seconds() - (time.time() - self.started))

    def start_final(self, epochs_share: float) -> None:
        """The folds are done, however long they took (early stopping ends students sooner than
        planned): from now on the final student's work is all that is left, `epochs_share` of
        the epochs planned for it."""
        self.folds = []
        self.final = {kind: images * epochs_share for kind, images in self.final.items()}
        self.started = time.time()
        self.final_started = True

    def left_after(self, stage_seconds: float) -> float:
        """The run's time left, at least what one process still has to do: `stage_seconds` of its
        own (the epochs left of what it trains, at the speed just seen), then the final student
        if it has not started. Each fold process corrects only its own copy of the estimate, and
        a run slower than estimated must not count down to "under a minute" with work left."""
        final = 0.0 if self.final_started else self.seconds(self.final)
        return max(self.remaining_seconds(), stage_seconds + final)

    def observe(self, kind: str, images: int, seconds: float) -> None:
        """A finished training epoch: its kind of work goes at the speed just seen (blended with
        earlier ones). Its seconds include the augmentation of its images, which is counted apart."""
        if seconds > 0 and images > 0 and kind in self.rates:
            augmenting = images / self.rates["loading"] if "loading" in self.rates else 0.0
            self.rates[kind] = 0.5 * self.rates[kind] + 0.5 * images / max(seconds - augmenting, 0.1 * seconds)


def pool_seconds(tasks: Sequence[tuple[float, float]], workers: int) -> float:
    """When the last of the folds' tasks ((teacher, student) seconds each) ends, with `workers`
    processes taking them as run_folds queues them: every teacher first, in fold order, then
    each fold's student once its teacher is done (earliest done first). A fold without teacher
    work has its student ready at once. An idle process waits for the next student to be ready."""
    free = [0.0] * max(1, workers)
    teachers = [index for index, (teacher, _) in enumerate(tasks) if teacher > 0]
    ready = {index: 0.0 for index, (teacher, _) in enumerate(tasks) if teacher <= 0}
    while teachers or ready:
        worker = min(range(len(free)), key=free.__getitem__)
        if teachers:
            index = teachers.pop(0)
            free[worker] += tasks[index][0]
            ready[index] = free[worker]
            continue
        index = min(ready, key=lambda k: (ready[k], k))
        free[worker] = max(free[worker], ready.pop(index)) + tasks[index][1]
    return max(free)


def describe(seconds: float) -> str:
    """'under a minute', 'about 12 min', 'about 2 h 05 min': whole minutes rounded up, so that the
    countdown never says less than it measured (rounded to the nearest, "about 1 min" was said
    with 85 s to go)."""
    if seconds < 60:
        return "under a minute"
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min" if hours else f"about {minutes} min"


def _train_rate(model: paddle.nn.Layer, cfg: Config, num_classes: int, steps: int = 2) -> float:
    """Training images per second of `model` (with its weight average, when the run keeps
    one), timed over `steps` steps after one untimed one."""
    schedule = warmup_cosine(cfg.optim.lr, 1, 0, steps + 1)
    optimizer = build_optimizer(model, schedule, cfg.optim.weight_decay)
    average = WeightAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    images = paddle.randn([cfg.data.batch_size, 3, cfg.data.img_size, cfg.data.img_size])
    labels = paddle.randint(0, num_classes, [cfg.data.batch_size])
    model.train()
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        if average is not None:
            average.update(model)
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def _loading_rate(cfg: Config, images: Sequence[np.ndarray], count: int = 64) -> float:
    """Images per second through the run's training augmentation (done in the training
    process unless --num_workers), on up to `count` of the run's decoded images."""
    transform = build_train_transform(cfg.augment, cfg.data.img_size, input_normalization(cfg.student.student))
    sample = [images[i] for i in np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)]
    start = time.perf_counter()
    for image in sample:
        transform(image)
    return len(sample) / max(time.perf_counter() - start, 1e-6)


@paddle.no_grad()
def _forward_rate(model: paddle.nn.Layer, cfg: Config) -> float:
    model.eval()
    images = paddle.randn([cfg.data.batch_size * 2, 3, cfg.data.img_size, cfg.data.img_size])
    model(images)
    start = time.perf_counter()
    model(images)
    return images.shape[0] / (time.perf_counter() - start)


def measure_rates(cfg: Config, num_classes: int, kinds: set[str], images: Sequence[np.ndarray]) -> dict[str, float]:
    """img/s of each kind of work in `kinds`, in one process: the models' on random images
    of the run's size, the augmentation's on some of the run's `images`."""
    rates: dict[str, float] = {}
    paddle.seed(0)
    if "loading" in kinds:
        rates["loading"] = _loading_rate(cfg, images)
    if kinds & {"teacher", "labelling"}:
        with paddle.utils.unique_name.guard():
            teacher, _ = build_teacher(num_classes, "none", cfg.teacher.teacher)
            use_fast_cpu_kernels(teacher, cfg.runtime.fast_depthwise)
            rates["labelling"] = _forward_rate(teacher, cfg)
            if "teacher" in kinds:
                rates["teacher"] = _train_rate(teacher, cfg, num_classes)
    with paddle.utils.unique_name.guard():
        student = build_student(cfg.student.student, num_classes, "none", width=cfg.student.student_width,
                                attention=cfg.student.attention, attention_blocks=cfg.student.attention_blocks)
        use_fast_cpu_kernels(student, cfg.runtime.fast_depthwise)
        rates["eval"] = _forward_rate(student, cfg)
        rates["student"] = _train_rate(student, cfg, num_classes)
    return rates


def student_images(cfg: Config, labelled: int, unlabeled: int) -> int:
    """The images of a student's epoch: the labelled ones, and the unlabeled ones that join them."""
    return labelled + (min(unlabeled, round(cfg.data.unlabeled_ratio * labelled)) if unlabeled else 0)


def plan_fold(cfg: Config, n_train: int, n_val: int, train_teacher: bool, label_views: bool,
              needs_teacher: bool, unlabeled: int = 0) -> FoldWork:
    """Images through each kind of work of one fold still to train. Students count all their
    epochs (early stopping can only make it shorter); every epoch evaluates the model, and its
    weight average when there is one; the teacher's evaluations and the views it labels are
    teacher forward passes ("labelling"); every training image is augmented ("loading").
    `unlabeled` images join the distilled student's epochs, and the views its teacher labels."""
    evaluations = 1 + (cfg.optim.ema_decay > 0)
    teacher: Work = {"teacher": 0.0, "labelling": 0.0, "loading": 0.0}
    if train_teacher:
        teacher["teacher"] = teacher["loading"] = cfg.teacher.teacher_epochs * n_train
        teacher["labelling"] = cfg.teacher.teacher_epochs * n_val * evaluations
    if label_views:
        views = min(cfg.teacher.teacher_views, cfg.optim.epochs) * (n_train + unlabeled)
        teacher["labelling"] += views
        teacher["loading"] += views
    baseline = cfg.distill.baseline and needs_teacher
    epochs, distilled = cfg.optim.epochs, student_images(cfg, n_train, unlabeled)
    trained = epochs * (distilled + baseline * n_train)
    live = needs_teacher and cfg.teacher.teacher_cache == "off"
    student: Work = {"student": trained, "eval": (1 + baseline) * epochs * n_val * evaluations, "loading": trained,
                     "labelling": epochs * (distilled + (baseline and unlabeled > 0) * n_train) if live else 0.0}
    return FoldWork(teacher, student)


def plan_final(cfg: Config, images: int, needs_teacher: bool) -> Work:
    """The final student's work on `images` a epoch (0: it is not to train), at most cfg.optim.epochs
    epochs; with the teacher in the loop, every fold's teacher labels each batch."""
    live = needs_teacher and cfg.teacher.teacher_cache == "off"
    return {"student": cfg.optim.epochs * images, "loading": cfg.optim.epochs * images,
            "labelling": cfg.data.num_folds * cfg.optim.epochs * images if live else 0.0}


def start_clock(cfg: Config, num_classes: int, folds: list[FoldWork], final: Work, workers: int, share: int,
                images: Sequence[np.ndarray]) -> RunClock:
    kinds = {kind for work in [final] + [w for fold in folds for w in (fold.teacher, fold.student)]
             for kind, count in work.items() if count}
    if kinds:
        print("timing a few steps of each network on this machine, for the time estimate ...", flush=True)
    return RunClock(folds, final, measure_rates(cfg, num_classes, kinds, images), workers, share)


def uses_quick_preset(cfg: Config) -> bool:
    """Every setting of the quick preset already in force (given by --config or by hand)."""
    settings = cfg.to_dict()
    return all(settings[key] == value for key, value in read_yaml(CPU_PRESET).items())


def quick_preset_note(clock: RunClock, device: str, cfg: Config) -> Optional[str]:
    """On a CPU, a run over an hour points to the quick preset, unless it is using it already
    (then the machine is slow or busy, and the note would send the user in a circle)."""
    if device != "cpu" or clock.total_seconds() <= QUICK_NOTE_AFTER or uses_quick_preset(cfg):
        return None
    return (f"note: this run will take more than an hour on this CPU; for a first model in about 10 minutes "
            f"(on 2,500 photos), try --config {CPU_PRESET.relative_to(PROJECT_ROOT)} "
            "(docs/training-from-scratch.md, \"How long a run takes\")")
