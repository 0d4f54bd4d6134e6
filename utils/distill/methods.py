"""Distillation methods, looked up by name (`--kd`). A method is one class: it
takes the student's and the teacher's logits, the batch's (mixed) hard targets
and the epoch, and returns the loss to minimise with its unweighted parts, which
are logged by name. It declares its own settings (`settings`: key, default,
meaning, range), which become YAML keys and flags of the same name and reach its
constructor as keyword arguments. To add one, write the class and add a line to
METHODS: nothing else changes.

Under Mixup or CutMix the images are mixed; the teacher's logits are those of
the mixed image (teacher in the loop) or the mixture of its two stored
distributions at the method's `temperature` (the view cache), and terms that
need a class label are mixed with the images' lambda.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Protocol

import paddle
import paddle.nn.functional as F

from utils.data.dataset import UNLABELED
from utils.data.mixing import MixedTargets
from utils.distill.features import FEATURE_METHODS
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss, LossParts, TrainingLoss
from utils.runtime.config import DistillSettings, Setting
from utils.runtime.errors import ConfigError
from utils.runtime.registry import lookup


class DistillationMethod(TrainingLoss, Protocol):
    """A method that learns from a teacher: its softmax temperature at an epoch is also the one
    at which stored or averaged teacher distributions are mixed (utils/distill/signal.py)."""

    def temperature_at(self, epoch: int) -> float: ...


TEMPERATURE_SHAPES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class TemperatureSchedule:
    """The softmax temperature at each epoch (counted from 1): `start` throughout (constant), or
    from `start` at the first epoch to `end` at the last, along a line or a half cosine (the
    cats-vs-dogs article's T from about 10 down to about 2, linearly over training)."""

    start: float
    end: float
    shape: str = "constant"
    epochs: int = 1

    def __call__(self, epoch: int) -> float:
        if self.shape == "constant" or self.epochs <= 1:
            return self.start
        progress = min(max((epoch - 1) / (self.epochs - 1), 0.0), 1.0)
        if self.shape == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start + (self.end - self.start) * progress


class LearnsFromTeacher:
    """What every method that learns from a teacher shares: its declared temperature is the
    start of the run's temperature schedule (constant unless --temperature_schedule says not)."""

    needs_teacher = True
    temperature: float
    schedule: Optional[TemperatureSchedule] = None  # set by create_method

    def temperature_at(self, epoch: int) -> float:
        return self.temperature if self.schedule is None else self.schedule(epoch)


def _temperature(name: str) -> Setting:
    return Setting(name, 4.0, "the softmax temperature T", low=0.0, high=100.0, low_open=True)


def kl_divergence(student_logits: paddle.Tensor, teacher_logits: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, axis=1)
    teacher_probs = F.softmax(teacher_logits / temperature, axis=1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


class KL(LearnsFromTeacher):
    """alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher || student) (Hinton et al., 2015)."""

    settings = (
        Setting("alpha", 0.5, "weight of the hard-label cross-entropy; 1 - alpha goes to the KD term", high=1.0),
        _temperature("temperature"),
    )

    def __init__(self, hard_loss: HardLabelLoss, alpha: float, temperature: float) -> None:
        self.hard_loss, self.alpha, self.temperature = hard_loss, alpha, temperature

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        kl = kl_divergence(logits, teacher_logits, self.temperature_at(epoch))
        return LossParts(self.alpha * ce + (1.0 - self.alpha) * kl, {"ce": ce, "kl": kl})


# Logit offset that takes a class out of a softmax (exp(-1e4) is exactly 0 in float32).
_EXCLUDED = 1e4


def decoupled_kd(logits: paddle.Tensor, teacher_logits: paddle.Tensor, labels: paddle.Tensor,
                 temperature: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    """DKD's two terms, each times T^2 and averaged over the batch (Zhao et al., CVPR 2022).

    TCKD: KL between the teacher's and the student's binary (target class, all
    others) probabilities. NCKD: KL between their distributions over the
    non-target classes alone. Computed from log-softmaxes and log-sum-exps, so
    that a probability of 0 or 1 never meets a logarithm; with 2 classes the
    non-target distribution is a single class, and NCKD is exactly 0.
    """
    target = F.one_hot(labels, logits.shape[1])
    terms = []
    for scaled in (logits / temperature, teacher_logits / temperature):
        log_all = paddle.logsumexp(scaled, axis=1)
        log_target = (scaled * target).sum(axis=1) - log_all
        log_rest = paddle.logsumexp(scaled - _EXCLUDED * target, axis=1) - log_all
        log_non_target = F.log_softmax(scaled - _EXCLUDED * target, axis=1)
        terms.append((paddle.stack([log_target, log_rest], axis=1), log_non_target))
    (student_binary, student_rest), (teacher_binary, teacher_rest) = terms
    tckd = (teacher_binary.exp() * (teacher_binary - student_binary)).sum(axis=1).mean()
    nckd = ((1.0 - target) * teacher_rest.exp() * (teacher_rest - student_rest)).sum(axis=1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


def _or_teachers(labels: paddle.Tensor, teacher_logits: paddle.Tensor) -> paddle.Tensor:
    """The labels, with the teacher's answer where an image has none (UNLABELED): DKD splits the
    distribution at a target class."""
    return paddle.where(labels == UNLABELED, teacher_logits.argmax(axis=1), labels)


class DKD(LearnsFromTeacher):
    """CE(student, y) + w * (dkd_alpha * TCKD + dkd_beta * NCKD), where w rises linearly
    from 1 / dkd_warmup at epoch 1 to 1 at epoch dkd_warmup (Decoupled KD, Zhao et al.,
    CVPR 2022; mdistiller's defaults for CIFAR-100: alpha 1, beta 8, T 4)."""

    settings = (
        Setting("dkd_alpha", 1.0, "target-class term: how sure the teacher is of the right class"),
        Setting("dkd_beta", 8.0, "non-target term: how the teacher ranks the wrong classes"),
        _temperature("dkd_temperature"),
        Setting("dkd_warmup", 5, "epochs over which the terms ramp up to full weight; 0: none", whole=True),
    )

    def __init__(self, hard_loss: HardLabelLoss, dkd_alpha: float, dkd_beta: float, dkd_temperature: float,
                 dkd_warmup: int) -> None:
        self.hard_loss, self.alpha, self.beta = hard_loss, dkd_alpha, dkd_beta
        self.temperature, self.warmup = dkd_temperature, dkd_warmup

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        temperature = self.temperature_at(epoch)
        tckd, nckd = decoupled_kd(logits, teacher_logits, _or_teachers(targets.labels_a, teacher_logits), temperature)
        if targets.lam < 1.0:
            tckd_b, nckd_b = decoupled_kd(logits, teacher_logits, _or_teachers(targets.labels_b, teacher_logits),
                                          temperature)
            tckd = targets.lam * tckd + (1.0 - targets.lam) * tckd_b
            nckd = targets.lam * nckd + (1.0 - targets.lam) * nckd_b
        ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        total = ce + ramp * (self.alpha * tckd + self.beta * nckd)
        return LossParts(total, {"ce": ce, "tckd": tckd, "nckd": nckd})


def _pearson_distance(a: paddle.Tensor, b: paddle.Tensor, eps: float = 1e-8) -> paddle.Tensor:
    """1 - the mean over rows of the Pearson correlation between rows of `a` and `b`."""
    a = a - a.mean(axis=1, keepdim=True)
    b = b - b.mean(axis=1, keepdim=True)
    correlation = (a * b).sum(axis=1) / (a.norm(axis=1) * b.norm(axis=1) + eps)
    return 1.0 - correlation.mean()


class DIST(LearnsFromTeacher):
    """CE(student, y) + dist_beta * inter + dist_gamma * intra, each times T^2 (DIST,
    Huang et al., NeurIPS 2022). Inter-class: 1 - the Pearson correlation of the
    student's and the teacher's probabilities over the classes of each image;
    intra-class: the same over the images of the batch for each class. Matching
    relations rather than exact probabilities tolerates a large teacher-student gap."""

    settings = (
        Setting("dist_beta", 2.0, "weight of the inter-class relation term"),
        Setting("dist_gamma", 2.0, "weight of the intra-class relation term"),
        _temperature("dist_temperature"),
    )

    def __init__(self, hard_loss: HardLabelLoss, dist_beta: float, dist_gamma: float,
                 dist_temperature: float) -> None:
        self.hard_loss, self.beta, self.gamma, self.temperature = hard_loss, dist_beta, dist_gamma, dist_temperature

    def __call__(self, logits: paddle.Tensor, teacher_logits: paddle.Tensor, targets: MixedTargets,
                 epoch: int) -> LossParts:
        ce = self.hard_loss(logits, targets)
        temperature = self.temperature_at(epoch)
        student = F.softmax(logits / temperature, axis=1)
        teacher = F.softmax(teacher_logits / temperature, axis=1)
        inter = temperature**2 * _pearson_distance(student, teacher)
        intra = temperature**2 * _pearson_distance(student.transpose([1, 0]), teacher.transpose([1, 0]))
        return LossParts(ce + self.beta * inter + self.gamma * intra, {"ce": ce, "inter": inter, "intra": intra})


METHODS: dict[str, type] = {
    "none": CrossEntropyOnly,
    "kl": KL,
    "dkd": DKD,
    "dist": DIST,
}


def _declared_settings() -> tuple[Setting, ...]:
    """Every method's settings (the logit methods' and the feature methods'), each key declared once."""
    declared: dict[str, Setting] = {}
    for name, method in [*METHODS.items(), *FEATURE_METHODS.items()]:
        for setting in getattr(method, "settings", ()):
            if setting.name in declared:
                raise AssertionError(f"method {name} declares {setting.name}, which another method declares too")
            declared[setting.name] = setting
    return tuple(declared.values())


# Their keys are YAML keys and flags (main.py --help lists them), saved with a run's config.yaml.
METHOD_SETTINGS = _declared_settings()


def method_settings(distill: DistillSettings) -> dict[str, Any]:
    """Every method's settings: the configuration's values, checked, and the declared defaults
    for the others. A key that no method (and no core setting) declares is refused."""
    unknown = sorted(set(distill.methods) - {setting.name for setting in METHOD_SETTINGS})
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    return {setting.name: setting.value(distill.methods.get(setting.name, setting.default))
            for setting in METHOD_SETTINGS}


def needs_teacher(kd: str) -> bool:
    return lookup(METHODS, kd, "kd").needs_teacher


def create_method(distill: DistillSettings, hard_loss: HardLabelLoss, epochs: int) -> TrainingLoss:
    """The `--kd` method, with its settings, the hard-label loss (label smoothing, class weights,
    focal) it adds to, and the temperature schedule over `epochs`."""
    method_class = lookup(METHODS, distill.kd, "kd")
    values = method_settings(distill)
    method = method_class(hard_loss, **{setting.name: values[setting.name]
                                        for setting in getattr(method_class, "settings", ())})
    if method.needs_teacher:
        method.schedule = TemperatureSchedule(method.temperature, distill.temperature_end,
                                              distill.temperature_schedule, epochs)
    return method
