"""What a data directory holds: class folders (or train/val/test splits), the
image files in them and the files that are skipped."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from utils.runtime.errors import DataError

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
