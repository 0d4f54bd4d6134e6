"""Feature distillation (`--feature_kd`), beside and combinable with any logit method:
the student's pooled last-stage features (the input of its classifier head) are
mapped by a learned linear projection onto the teacher's pooled last-stage
features (the input of its fc layer), and their squared distance is added to the
loss (FitNets, Romero et al., 2015, on pooled features; the cats-vs-dogs article's
L2 on the teacher's last-stage features). The projection trains with the student,
is saved in its training state, and is never exported.

The teacher's features come from the same forward pass as its logits: with the
teacher in the loop, from the mixed images themselves; from the view cache, as
stored pooled vectors (float16, one per view and image: 512 numbers for a
ResNet18 or ResNet34, 2,048 for a ResNet50 or ResNet101), mixed with the images'
lambda. Like a distillation method, a feature method is one class and one line in
FEATURE_METHODS, and declares its own settings.
"""
from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn as nn

from models.weights import pooled_feature_size
from utils.data.mixing import MixedTargets
from utils.engine.losses import LossParts
from utils.runtime.config import DistillSettings, Setting
from utils.runtime.registry import lookup


class LogitsAndFeatures(nn.Layer):
    """A classifier head that also passes on its input: (logits, features) side by side in one
    row, so that one forward pass (or one exported inference model) gives both."""

    def __init__(self, head: nn.Layer) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: paddle.Tensor) -> paddle.Tensor:
        return paddle.concat([self.head(features), features], axis=1)


def emit_features(teacher: nn.Layer, head: str) -> nn.Layer:
    """The frozen teacher, changed in place to return logits and pooled features side by side."""
    setattr(teacher, head, LogitsAndFeatures(getattr(teacher, head)))
    return teacher


def split_features(output: paddle.Tensor, num_classes: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    return output[:, :num_classes], output[:, num_classes:]


def mix_features(features: paddle.Tensor, targets: MixedTargets) -> paddle.Tensor:
    """Stored features of mixed images: the two images' features mixed with the images' lambda."""
    if targets.perm is None:
        return features
    return targets.lam * features + (1.0 - targets.lam) * paddle.gather(features, targets.perm)


class FeatureTap:
    """The input of a model's head (its pooled features), captured on every forward pass."""

    def __init__(self, model: nn.Layer, head: str) -> None:
        self.value: Optional[paddle.Tensor] = None
        self.dim = pooled_feature_size(getattr(model, head))
        getattr(model, head).register_forward_pre_hook(self._capture)

    def _capture(self, layer: nn.Layer, inputs: tuple) -> None:
        self.value = inputs[0]


class FitNet(nn.Layer):
    """feature_kd_weight * |P s - t|^2 / mean(t^2): the squared distance between the projected
    student features P s and the teacher's t, averaged over the batch and the teacher's
    channels, relative to the teacher features' mean square (so that one weight suits any
    teacher, whatever the scale of its features)."""

    settings = (Setting("feature_kd_weight", 1.0, "weight of the feature distillation term (--feature_kd)"),)

    def __init__(self, student_dim: int, teacher_dim: int, feature_kd_weight: float) -> None:
        super().__init__()
        self.projection = nn.Linear(student_dim, teacher_dim)
        self.weight = feature_kd_weight

    def forward(self, student_features: paddle.Tensor, teacher_features: paddle.Tensor) -> LossParts:
        distance = ((self.projection(student_features) - teacher_features) ** 2).mean()
        feature = distance / ((teacher_features**2).mean() + 1e-8)
        return LossParts(self.weight * feature, {"feature": feature})


FEATURE_METHODS: dict[str, Optional[type]] = {
    "none": None,
    "fitnet": FitNet,
}


class FeatureDistillation:
    """What the training loop adds for feature distillation: the student's tapped features
    against the teacher's, through the method (and its projection)."""

    def __init__(self, student: nn.Layer, student_head: str, method_class: type, teacher_dim: int,
                 settings: dict) -> None:
        self.tap = FeatureTap(student, student_head)
        self.method = method_class(self.tap.dim, teacher_dim, **settings)

    def add_to(self, loss: LossParts, teacher_features: paddle.Tensor) -> LossParts:
        term = self.method(self.tap.value, teacher_features)
        return LossParts(loss.total + term.total, {**loss.parts, **term.parts})


def wants_features(distill: DistillSettings) -> bool:
    return lookup(FEATURE_METHODS, distill.feature_kd, "feature_kd") is not None


def create_feature_distillation(distill: DistillSettings, settings: dict, student: nn.Layer, student_head: str,
                                teacher_dim: Optional[int]) -> Optional[FeatureDistillation]:
    """The `--feature_kd` method for this student, or None (none chosen, or no teacher features).
    Build it where the student is built (inside its unique_name guard), so that a resumed run
    gives the projection the same parameter names."""
    method_class = lookup(FEATURE_METHODS, distill.feature_kd, "feature_kd")
    if method_class is None or teacher_dim is None:
        return None
    own = {setting.name: settings[setting.name] for setting in method_class.settings}
    return FeatureDistillation(student, student_head, method_class, teacher_dim, own)
