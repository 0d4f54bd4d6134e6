"""Serving decoded images to training and evaluation: a Paddle dataset with
replayable augmentation, and its loader."""
from __future__ import annotations

import collections.abc
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import paddle

from utils.data.transforms import seeded_augmentation
from utils.runtime.distributed import world_size


# The label of an image nobody labelled (--unlabeled_dir): it learns from its teacher only.
UNLABELED = -1


class Joined(collections.abc.Sequence):
    """Two sequences of images as one, without copying either (one may be a memory-mapped store)."""

    def __init__(self, first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.first[index] if index < len(self.first) else self.second[index - len(self.first)]


def with_unlabeled(images: Sequence[np.ndarray], labels: np.ndarray, unlabeled: Sequence[np.ndarray]
                   ) -> tuple[Sequence[np.ndarray], np.ndarray]:
    """Labelled images followed by unlabeled ones (label UNLABELED), as one dataset's images and labels."""
    if not len(unlabeled):
        return images, labels
    return Joined(images, unlabeled), np.concatenate([labels, np.full(len(unlabeled), UNLABELED, np.int64)])


class ImageDataset(paddle.io.Dataset):
    """Decoded images in memory, each served through `transform` as
    (image, label, index, view).

    With `seed` (ints), augmentation is replayable: view v of image i is drawn
    from random states seeded by (*seed, v, i), the same picture in every
    process and on every run. Epoch e serves view e, or view e % `views` when
    the views cycle; this is what lets a teacher label views once and a student
    replay them later (utils/distill/view_cache.py).
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


class BatchLoader:
    """The batches paddle.io.DataLoader gives with num_workers=0 (the same batch sampler,
    so the same order), read in the calling thread. Paddle's single-process loader
    reads in a thread of its own, and an exception there (an image that cannot be
    transformed, memory running out) leaves the training loop waiting for ever;
    here it reaches the caller."""

    def __init__(self, dataset: ImageDataset, batch_sampler: paddle.io.BatchSampler) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[paddle.Tensor]]:
        for indices in self.batch_sampler:
            items = [self.dataset[i] for i in indices]
            yield [paddle.to_tensor(np.stack(field)) for field in zip(*items)]


class LabelledAndUnlabeledSampler:
    """Training batches of every labelled image of a dataset and, each epoch, about `ratio` times as
    many of its unlabeled ones (UNLABELED labels), drawn afresh and shuffled in: as many more as fill
    the last batch. The draw is seeded by `seed` and the epoch, so a resumed run draws what it would
    have drawn. A last batch of one image (which BatchNorm cannot train on) joins the one before."""

    def __init__(self, labels: np.ndarray, ratio: float, batch_size: int, seed: Sequence[int]) -> None:
        self.labelled = np.flatnonzero(labels != UNLABELED)
        self.unlabeled = np.flatnonzero(labels == UNLABELED)
        wanted = len(self.labelled) + round(ratio * len(self.labelled))
        whole_batches = -(-wanted // batch_size) * batch_size
        self.per_epoch = min(len(self.unlabeled), whole_batches - len(self.labelled))
        self.batch_size, self.seed, self.epoch = batch_size, tuple(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        served = len(self.labelled) + self.per_epoch
        return max(1, served // self.batch_size + (served % self.batch_size > 1))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([*self.seed, self.epoch])
        order = np.concatenate([self.labelled, rng.choice(self.unlabeled, self.per_epoch, replace=False)])
        rng.shuffle(order)
        batches = [order[at:at + self.batch_size].tolist() for at in range(0, len(order), self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2] += batches.pop()
        yield from batches


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, num_workers: int,
                unlabeled_ratio: Optional[float] = None, seed: Sequence[int] = ()) -> BatchLoader | paddle.io.DataLoader:
    """Batches of (images, labels, indices, views); with num_workers > 0, read by that many
    processes. In a data-parallel job each rank reads its share (paddle.io.DistributedBatchSampler,
    which pads the data to equal shares: evaluation trims the padding, utils/engine/loops.predict).
    With `unlabeled_ratio`, a training dataset's unlabeled images join each epoch at that ratio
    (LabelledAndUnlabeledSampler, drawn by `seed`; one process per fold)."""
    # Dropping the last partial training batch keeps BatchNorm away from a batch of one.
    drop_last = train and len(dataset) > batch_size * world_size()
    if unlabeled_ratio is not None:  # read in this process: the sampler is not one paddle.io.DataLoader takes
        return BatchLoader(dataset, LabelledAndUnlabeledSampler(dataset.labels, unlabeled_ratio, batch_size, seed))
    if world_size() > 1:
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, shuffle=train, drop_last=drop_last)
    else:
        sampler = paddle.io.BatchSampler(dataset, shuffle=train, batch_size=batch_size, drop_last=drop_last)
    if num_workers == 0:
        return BatchLoader(dataset, sampler)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)


def set_loader_epoch(loader: BatchLoader | paddle.io.DataLoader, epoch: int) -> None:
    """Epoch `epoch` (from 0): the dataset serves that view, a distributed sampler reshuffles."""
    loader.dataset.set_epoch(epoch)
    if isinstance(loader.batch_sampler, (paddle.io.DistributedBatchSampler, LabelledAndUnlabeledSampler)):
        loader.batch_sampler.set_epoch(epoch)
