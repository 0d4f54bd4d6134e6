"""How long a run will take, said before it starts and kept up to date while it runs.

Before the folds start, a few training steps of each kind of work the run has left
(teacher training, labelling the teacher's views, student training, evaluation) are
timed on this machine; with the run's image counts, epochs and parallel folds this
gives an estimate. Every finished epoch then corrects the rate of its kind of work,
and the epoch lines show the time left."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F

from models.fast_depthwise import use_fast_depthwise
from models.student import build_student
from models.teacher import build_teacher
from utils.engine.optimization import build_optimizer, warmup_cosine
from utils.runtime.config import PROJECT_ROOT, Config, read_yaml

# A quick preset for a first model on a CPU (README, "How long a run takes").
QUICK_PRESET = "configs/cpu.yaml"
QUICK_NOTE_AFTER = 3600  # seconds


@dataclasses.dataclass
class RunClock:
    """Images still to pass through each kind of work, the measured speed of each (img/s,
    one process), the processes sharing the work, and when the run started."""
    work: dict[str, float]
    rates: dict[str, float]
    workers: int
    started: float = dataclasses.field(default_factory=time.time)

    def total_seconds(self) -> float:
        return sum(images / self.rates[kind] for kind, images in self.work.items() if images) / self.workers

    def remaining_seconds(self) -> float:
        return max(0.0, self.total_seconds() - (time.time() - self.started))

    def observe(self, kind: str, images: int, seconds: float) -> None:
        """A finished epoch: its kind of work goes at the speed just seen (blended with earlier ones)."""
        if seconds > 0 and images > 0 and kind in self.rates:
            self.rates[kind] = 0.5 * self.rates[kind] + 0.5 * images / seconds


def describe(seconds: float) -> str:
    """'under a minute', 'about 12 min', 'about 2 h 05 min'."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min" if hours else f"about {minutes} min"


def _train_rate(model: paddle.nn.Layer, cfg: Config, num_classes: int, steps: int = 2) -> float:
    """Training images per second of `model`, timed over `steps` steps after one untimed one."""
    schedule = warmup_cosine(cfg.lr, 1, 0, steps + 1)
    optimizer = build_optimizer(model, schedule, cfg.weight_decay)
    images = paddle.randn([cfg.batch_size, 3, cfg.img_size, cfg.img_size])
    labels = paddle.randint(0, num_classes, [cfg.batch_size])
    model.train()
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    return steps * cfg.batch_size / (time.perf_counter() - start)


@paddle.no_grad()
def _forward_rate(model: paddle.nn.Layer, cfg: Config) -> float:
    model.eval()
    images = paddle.randn([cfg.batch_size * 2, 3, cfg.img_size, cfg.img_size])
    model(images)
    start = time.perf_counter()
    model(images)
    return images.shape[0] / (time.perf_counter() - start)


def measure_rates(cfg: Config, num_classes: int, kinds: set[str]) -> dict[str, float]:
    """img/s of each kind of work in `kinds`, on random images of the run's size, in one process."""
    rates: dict[str, float] = {}
    paddle.seed(0)
    if kinds & {"teacher", "labelling"}:
        with paddle.utils.unique_name.guard():
            teacher, _ = build_teacher(num_classes, "none", cfg.teacher)
            rates["labelling"] = _forward_rate(teacher, cfg)
            if "teacher" in kinds:
                rates["teacher"] = _train_rate(teacher, cfg, num_classes)
    with paddle.utils.unique_name.guard():
        student = build_student(cfg.student, num_classes, "none", width=cfg.student_width,
                                attention=cfg.attention, attention_blocks=cfg.attention_blocks)
        if cfg.fast_depthwise:
            use_fast_depthwise(student)
        rates["eval"] = _forward_rate(student, cfg)
        rates["student"] = _train_rate(student, cfg, num_classes)
    return rates


def plan_work(cfg: Config, fold_sizes: list[tuple[int, int]], teachers_to_train: int, views_to_label: int,
              needs_teacher: bool, final_images: int) -> dict[str, float]:
    """Images through each kind of work, for the folds still to train ((n_train, n_val) each)
    and the final student (on `final_images`, 0 when it is not to train). Students count all
    their epochs: early stopping (and the final student's median epoch) can only make it shorter."""
    students = 1 + (cfg.baseline and needs_teacher)
    live_teacher = needs_teacher and cfg.teacher_cache == "off"
    work = {"teacher": 0.0, "labelling": 0.0, "student": 0.0, "eval": 0.0}
    n_train_mean = float(np.mean([n for n, _ in fold_sizes])) if fold_sizes else 0.0
    for n_train, n_val in fold_sizes:
        work["student"] += students * cfg.epochs * n_train
        work["eval"] += students * cfg.epochs * n_val
        if live_teacher:
            work["labelling"] += cfg.epochs * n_train
    work["student"] += cfg.epochs * final_images
    if live_teacher:
        work["labelling"] += cfg.num_folds * cfg.epochs * final_images
    work["teacher"] += teachers_to_train * cfg.teacher_epochs * n_train_mean
    work["labelling"] += views_to_label * min(cfg.teacher_views, cfg.epochs) * n_train_mean
    return work


def start_clock(cfg: Config, num_classes: int, work: dict[str, float], workers: int) -> RunClock:
    kinds = {kind for kind, images in work.items() if images}
    return RunClock(work, measure_rates(cfg, num_classes, kinds), workers)


def uses_quick_preset(cfg: Config) -> bool:
    """Every setting of the quick preset already in force (given by --config or by hand)."""
    return all(getattr(cfg, key) == value for key, value in read_yaml(PROJECT_ROOT / QUICK_PRESET).items())


def quick_preset_note(clock: RunClock, device: str, cfg: Config) -> Optional[str]:
    """On a CPU, a run over an hour points to the quick preset, unless it is using it already
    (then the machine is slow or busy, and the note would send the user in a circle)."""
    if device != "cpu" or clock.total_seconds() <= QUICK_NOTE_AFTER or uses_quick_preset(cfg):
        return None
    return (f"note: this run will take more than an hour on this CPU; for a first model in about 20 minutes "
            f"(on 2,500 photos), try --config {QUICK_PRESET} (README, \"How long a run takes\")")
