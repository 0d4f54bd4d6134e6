"""Classifying images with trained students: finding the models of a run,
the fold ensemble, and batched prediction over files and folders."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from utils.checkpoint import META_NAME, WEIGHTS_NAME, load_student
from utils.data import is_image_name, read_image
from utils.errors import UserError
from utils.transforms import build_eval_transform, resize_size


@dataclasses.dataclass
class Prediction:
    path: str
    label: str
    confidence: float
    top: list[tuple[str, float]]


def find_weights(model_path: Optional[str], output_dir: str, fold: Optional[int]) -> list[Path]:
    """The .pdparams files to use: a run directory (every fold), a fold directory, or one file.
    With no model_path, the newest run in output_dir (its `latest` pointer)."""
    if model_path is None:
        latest = Path(output_dir) / "latest"
        if not latest.is_file():
            raise UserError(f"no trained run in {output_dir}/ (no 'latest'); train with python main.py "
                            "or pass --model_path")
        path = Path(output_dir) / latest.read_text(encoding="utf-8").strip()
    else:
        path = Path(model_path)
    if path.is_file():
        if path.suffix != ".pdparams":
            raise UserError(f"--model_path {path}: expected a .pdparams file, a fold directory or a run directory")
        return [path]
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    folds = sorted(path.glob(f"fold*/{WEIGHTS_NAME}"))
    if fold is not None:
        folds = [p for p in folds if p.parent.name == f"fold{fold}"]
        if not folds:
            raise UserError(f"{path} has no fold {fold}")
    if not folds:
        raise UserError(f"no trained model in {path} (looked for {WEIGHTS_NAME} and fold*/{WEIGHTS_NAME})")
    return folds


class EnsembleClassifier:
    """The mean softmax of one or more students that share classes and preprocessing."""

    def __init__(self, weights: Sequence[Path]) -> None:
        loaded = [load_student(path) for path in weights]
        self.models = [model for model, _ in loaded]
        self.meta = loaded[0][1]
        for path, (_, meta) in zip(weights, loaded):
            if meta["classes"] != self.meta["classes"] or meta["img_size"] != self.meta["img_size"]:
                raise UserError(f"{path.parent / META_NAME} differs from the other folds in classes or img_size")
        self.classes: list[str] = self.meta["classes"]
        self.transform = build_eval_transform(self.meta["img_size"], self.meta.get("crop", "random_resized"),
                                              tuple(self.meta["mean"]), tuple(self.meta["std"]))

    @paddle.no_grad()
    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = paddle.to_tensor(np.stack([self.transform(image) for image in images]))
        return np.mean([F.softmax(model(batch), axis=1).numpy() for model in self.models], axis=0)


def list_images(path: Path, recursive: bool) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"--image_path {path} does not exist")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in path.glob(pattern)
                  if p.is_file() and is_image_name(p.name) and not p.name.startswith("."))


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def classify(classifier: EnsembleClassifier, paths: Sequence[Path], batch_size: int, topk: int
             ) -> Iterator[tuple[Path, Optional[Prediction]]]:
    """(path, prediction) for every path, in order; None for a file that cannot be decoded."""
    max_side = resize_size(classifier.meta["img_size"])
    for batch in _batches(list(paths), batch_size):
        images = [read_image(os.fspath(p), max_side) for p in batch]
        good = [(p, image) for p, image in zip(batch, images) if image is not None]
        probs = classifier.probabilities([image for _, image in good]) if good else np.empty((0, 0))
        by_path = {}
        for (path, _), row in zip(good, probs):
            order = np.argsort(-row)[:topk]
            top = [(classifier.classes[i], float(row[i])) for i in order]
            by_path[path] = Prediction(os.fspath(path), top[0][0], top[0][1], top)
        for path in batch:
            yield path, by_path.get(path)
