"""The stratified K-fold split of a run's images, and the seed streams that keep
each model's augmentation apart."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from utils.runtime.errors import DataError, examples

# Separate augmentation streams, so that the teacher never labels the very views it trained on.
TEACHER_AUGMENTATION, STUDENT_AUGMENTATION = 0, 1
FINAL_SEED_STREAM = 9  # the final student's own seeds (folds use their index)


@dataclasses.dataclass
class FoldData:
    fold: int
    train_indices: np.ndarray
    val_indices: np.ndarray


def make_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[FoldData]:
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return [FoldData(k, train, val) for k, (train, val) in enumerate(splitter.split(np.zeros(len(labels)), labels))]


def assigned_folds(names: Sequence[str], assignment: Mapping[str, int], num_folds: int, source: str
                   ) -> list[FoldData]:
    """The folds a split file gives (`assignment`: an image's path under the data folder -> its
    fold, from 0), for the images `names` in the run's order: the folds of another tool, or of an
    earlier split. Every image must have one; images the file names beyond them are ignored."""
    missing = [name for name in names if name not in assignment]
    if missing:
        raise DataError(f"{source} gives no fold for {len(missing)} image(s) ({examples(missing, 3)})")
    folds = np.array([assignment[name] for name in names])
    if folds.min() < 0 or folds.max() >= num_folds:
        raise DataError(f"{source} gives folds outside 0 to {num_folds - 1} (--num_folds {num_folds})")
    everything = np.arange(len(names))
    return [FoldData(k, everything[folds != k], everything[folds == k]) for k in range(num_folds)]
