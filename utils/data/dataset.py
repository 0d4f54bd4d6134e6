"""Serving decoded images to training and evaluation: a Paddle dataset with
replayable augmentation, and its loader."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import paddle

from utils.data.transforms import seeded_augmentation


class ImageDataset(paddle.io.Dataset):
    """Decoded images in memory, each served through `transform` as
    (image, label, index, view).

    With `seed` (ints), augmentation is replayable: view v of image i is drawn
    from random states seeded by (*seed, v, i), the same picture in every
    process and on every run. Epoch e serves view e, or view e % `views` when
    the views cycle; this is what lets a teacher label views once and a student
    replay them later (utils/view_cache.py).
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], transform: Callable,
                 seed: Optional[Sequence[int]] = None, views: Optional[int] = None) -> None:
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.seed = tuple(seed) if seed is not None else None
        self.views = views
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        """Serve the view of epoch `epoch` (counted from 0)."""
        self.view = epoch % self.views if self.views else epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64, np.int64, np.int64]:
        if self.seed is None:
            image = self.transform(self.images[index])
        else:
            with seeded_augmentation(*self.seed, self.view, index):
                image = self.transform(self.images[index])
        return image, self.labels[index], np.int64(index), np.int64(self.view)


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, num_workers: int) -> paddle.io.DataLoader:
    # Dropping the last partial training batch keeps BatchNorm away from a batch of one.
    return paddle.io.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers,
    )
