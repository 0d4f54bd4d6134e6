"""What a saved student needs to be rebuilt and used, in one small spec: its
classes, architecture, width, attention, input size, crop and normalisation.
It is written as best.json beside the weights (with how the model was trained,
for people to read) and read back, checked field by field, only here."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import paddle.nn as nn

from models.attention import ATTENTIONS
from models.student import STUDENTS, build_student, input_normalization
from models.weights import Normalization
from utils.data.transforms import build_eval_transform
from utils.runtime.config import MAX_IMG_SIZE, MIN_IMG_SIZE, StudentSettings, img_size_problem
from utils.runtime.errors import UserError

MAX_CLASSES = 100_000


class BadSpec(UserError):
    """A best.json that cannot describe a model this tool builds."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    classes: tuple[str, ...]
    student: str
    student_width: float
    attention: str
    attention_blocks: str
    img_size: int
    crop: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Softmax temperature that calibrates the probabilities: softmax(logits / temperature),
    # fitted on the run's out-of-fold predictions (utils/reporting/calibration.py); 1: as trained.
    temperature: float = 1.0

    @classmethod
    def for_student(cls, student: StudentSettings, img_size: int, crop: str, classes: Sequence[str],
                    temperature: float = 1.0) -> ModelSpec:
        """The spec of a student trained with `student`'s settings on `img_size` px inputs, cropped
        as `crop` says, normalised as its network's weights expect."""
        normalization = input_normalization(student.student)
        return cls(tuple(classes), student.student, student.student_width, student.attention,
                   student.attention_blocks, img_size, crop, normalization.mean, normalization.std, temperature)

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any, source: Path) -> ModelSpec:
        """The spec in a best.json's content, or a BadSpec error naming the first bad field."""
        if not isinstance(data, dict):
            raise BadSpec(f"{source} does not hold a model description (a JSON object)")

        def field(name: str, check, problem: str, default: Any = None) -> Any:
            value = data.get(name, default)
            try:
                ok = value is not None and check(value)
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise BadSpec(f"{source}: {name} {problem} (found {str(value)[:60]!r})")
            return value

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        classes = field("classes", lambda v: isinstance(v, list) and 2 <= len(v) <= MAX_CLASSES
                        and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v),
                        "must be a list of at least two different class names")
        triple = lambda v: isinstance(v, list) and len(v) == 3 and all(number(x) for x in v)  # noqa: E731
        return cls(
            classes=tuple(classes),
            student=field("student", lambda v: v in STUDENTS, f"must be one of {', '.join(STUDENTS)}"),
            student_width=float(field("student_width", lambda v: number(v) and 0.1 <= v <= 4.0,
                                      "must be a number between 0.1 and 4", 1.0)),
            attention=field("attention", lambda v: v == "none" or v in ATTENTIONS,
                            f"must be none or one of {', '.join(ATTENTIONS)}", "none"),
            attention_blocks=str(field("attention_blocks", lambda v: v == "all" or (str(v).isdigit() and int(v) < 1000),
                                       "must be 'all' or a number of blocks", "all")),
            img_size=field("img_size", lambda v: img_size_problem(v) is None,
                           f"must be a whole number from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}"),
            crop=field("crop", lambda v: v in ("random_resized", "pad"), "must be random_resized or pad",
                       "random_resized"),
            mean=tuple(field("mean", triple, "must be three numbers")),
            std=tuple(field("std", lambda v: triple(v) and min(v) > 0, "must be three positive numbers")),
            temperature=float(field("temperature", lambda v: number(v) and 0.01 <= v <= 100,
                                    "must be a number between 0.01 and 100", 1.0)),
        )

    def build(self) -> nn.Layer:
        """The untrained network, in the shape its weights need."""
        return build_student(self.student, len(self.classes), "none", attention=self.attention,
                             attention_blocks=self.attention_blocks, width=self.student_width)

    def eval_transform(self):
        return build_eval_transform(self.img_size, self.crop, Normalization(self.mean, self.std))
