"""The stratified K-fold split of a run's images, and the seed streams that keep
each model's augmentation apart."""
from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.model_selection import StratifiedKFold

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
