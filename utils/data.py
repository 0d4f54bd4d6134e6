"""Finding, decoding and serving the images of an ImageFolder-style dataset."""
from __future__ import annotations

import collections.abc
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import paddle
from tqdm import tqdm

from utils.errors import DataError
from utils.runtime import cpu_count
from utils.transforms import seeded_augmentation

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Operating-system clutter: never an image, listed as skipped without a warning each.
SYSTEM_NAMES = {"thumbs.db", "desktop.ini"}
SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass
class Sample:
    path: str
    label: int


@dataclasses.dataclass
class SkippedFile:
    path: str
    reason: str


@dataclasses.dataclass
class DatasetIndex:
    """What a data directory holds: the pooled samples that the folds split,
    and an optional held-out test split."""

    classes: list[str]
    samples: list[Sample]
    test_samples: list[Sample]
    skipped: list[SkippedFile]


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_class_folders(root: Path) -> bool:
    """True when some sub-folder of `root` directly holds image files."""
    if not root.is_dir():
        return False
    return any(
        any(is_image_name(f.name) for f in folder.iterdir() if f.is_file())
        for folder in _class_folders(root)
    )


def _files_by_class(root: Path) -> tuple[dict[str, list[str]], list[SkippedFile]]:
    by_class: dict[str, list[str]] = {}
    skipped: list[SkippedFile] = []
    for folder in _class_folders(root):
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.startswith(".") or name.lower() in SYSTEM_NAMES:
                    skipped.append(SkippedFile(path, "hidden or system file"))
                elif is_image_name(name):
                    files.append(path)
                else:
                    skipped.append(SkippedFile(path, "not an image file"))
        by_class[folder.name] = files
    return by_class, skipped


def scan_dataset(data_dir: Path) -> DatasetIndex:
    """Index `data_dir`: class folders, or train/ and val/ (pooled) plus an optional test/."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    splits = {p.name: p for p in _class_folders(data_dir) if p.name in SPLIT_NAMES}
    if "train" in splits and "val" in splits:
        pooled_roots = [splits["train"], splits["val"]]
        test_root = splits.get("test")
    else:
        pooled_roots, test_root = [data_dir], None

    pooled: dict[str, list[str]] = {}
    skipped: list[SkippedFile] = []
    for root in pooled_roots:
        by_class, root_skipped = _files_by_class(root)
        skipped += root_skipped
        for name, files in by_class.items():
            pooled.setdefault(name, []).extend(files)

    empty = sorted(name for name, files in pooled.items() if not files)
    for name in empty:
        print(f"warning: class folder '{name}' holds no images and is left out")
        del pooled[name]
    classes = sorted(pooled)
    if len(classes) < 2:
        raise DataError(
            f"{data_dir} needs at least two class folders with images (found {len(classes)}); "
            "put each class's images in a sub-folder named after the class"
        )
    samples = [Sample(path, label) for label, name in enumerate(classes) for path in pooled[name]]

    test_samples: list[Sample] = []
    if test_root is not None:
        by_class, test_skipped = _files_by_class(test_root)
        skipped += test_skipped
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"{test_root} has class folders not seen in train/val: {', '.join(unknown)}")
        test_samples = [Sample(p, classes.index(name)) for name, files in by_class.items() for p in files]
    return DatasetIndex(classes, samples, test_samples, skipped)


def check_class_counts(classes: Sequence[str], labels: Sequence[int], num_folds: int) -> None:
    """Stratified K-fold needs at least K images of every class."""
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    for name, count in zip(classes, counts):
        if count < num_folds:
            raise DataError(
                f"class '{name}' has {count} readable image(s), fewer than num_folds={num_folds}; "
                "add images or lower --num_folds"
            )


def read_image(path: str, max_short_side: Optional[int] = None) -> Optional[np.ndarray]:
    """An RGB uint8 array (H, W, 3), or None when the file cannot be decoded.

    np.fromfile + cv2.imdecode reads non-ASCII paths that cv2.imread cannot.
    IMREAD_COLOR turns grey, palette, 16-bit and RGBA images into 8-bit
    3-channel ones and applies the EXIF orientation. Images are shrunk (never
    enlarged) so that their short side is at most `max_short_side`.
    """
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
        if buffer.size == 0:
            return None
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except (OSError, cv2.error):
        return None
    if image is None:
        return None
    height, width = image.shape[:2]
    if max_short_side and min(height, width) > max_short_side:
        scale = max_short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageStore(collections.abc.Sequence):
    """Decoded images of any sizes, one after another in one memory-mapped file: for
    image sets larger than memory. It pickles as its file name, so that fold worker
    processes map the file instead of receiving a copy of every image."""

    def __init__(self, path: Path, shapes: Sequence[tuple[int, ...]]) -> None:
        self.path, self.shapes = Path(path), [tuple(shape) for shape in shapes]
        self.offsets = np.cumsum([0] + [int(np.prod(shape)) for shape in self.shapes])
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(int(self.offsets[-1]),))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        """A read-only view into the file, not a copy: a fold's list of its images then
        holds no pixels (the transforms only read their input)."""
        return self.data[self.offsets[index]:self.offsets[index + 1]].reshape(self.shapes[index])

    def __reduce__(self):
        return ImageStore, (self.path, self.shapes)


def load_images(
    samples: Sequence[Sample], max_short_side: int, desc: str = "decoding images", store: Optional[Path] = None
) -> tuple[Sequence[np.ndarray], list[Sample], list[SkippedFile]]:
    """Decode every image once, in parallel, into memory, or with `store` into an
    ImageStore at that path; undecodable files are skipped and reported."""
    workers = min(8, cpu_count())
    images, shapes, kept, skipped = [], [], [], []
    with ThreadPoolExecutor(workers) as pool, open(store or os.devnull, "wb") as store_file:
        decoded = pool.map(lambda s: read_image(s.path, max_short_side), samples)
        for sample, image in zip(samples, tqdm(decoded, total=len(samples), desc=desc, leave=False, disable=None)):
            if image is None:
                print(f"warning: skipping {sample.path}: cannot be decoded as an image")
                skipped.append(SkippedFile(sample.path, "cannot be decoded as an image"))
                continue
            kept.append(sample)
            if store:
                store_file.write(np.ascontiguousarray(image).tobytes())
                shapes.append(image.shape)
            else:
                images.append(image)
    return (ImageStore(store, shapes) if store and shapes else images), kept, skipped


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


def write_digits_demo(root: Path) -> Path:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images) as PNG class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        _, encoded = cv2.imencode(".png", image)
        encoded.tofile(str(folder / f"digit_{index:04d}.png"))
    return root
