"""What a data directory holds: class folders (or train/val/test splits), the
image files in them and the files that are skipped."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from utils.runtime.errors import DataError, examples
from utils.runtime.text import printable

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Operating-system clutter: never an image, listed as skipped without a warning each.
SYSTEM_NAMES = {"thumbs.db", "desktop.ini"}
# Split folders as public datasets name them: train/ and val/ are pooled for cross-validation,
# test/ is held out and scored at the end.
SPLIT_SYNONYMS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
LAYOUTS = ("class folders; or train/ with class folders, with val/ (or valid/, validation/) and/or test/ "
           "beside it, each with the same class folders")


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
    # Which folders were read for what: split folders pooled for cross-validation (empty: the data
    # directory's own class folders), the held-out test folder, and folders beside them left unread.
    pooled_splits: list[str] = dataclasses.field(default_factory=list)
    test_split: Optional[str] = None
    ignored: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """What was read for what, for the run's first line ("" for plain class folders)."""
        if not self.pooled_splits:
            return ""
        said = f"{' and '.join(f'{name}/' for name in self.pooled_splits)} pooled for cross-validation"
        if self.test_split:
            said += f"; {self.test_split}/ held out ({len(self.test_samples)} images, scored at the end)"
        if self.ignored:
            said += f"; not read: {', '.join(f'{name}/' for name in self.ignored)}"
        return said


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


def _sort_files(dirpath: str, filenames: Sequence[str], images: list[str], skipped: list[SkippedFile]) -> None:
    """The files of one folder, in name order: image files to `images`, the others to `skipped`
    with their reason."""
    for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        if name.startswith(".") or name.lower() in SYSTEM_NAMES:
            skipped.append(SkippedFile(path, "hidden or system file"))
        elif is_image_name(name):
            images.append(path)
        else:
            skipped.append(SkippedFile(path, "not an image file"))


def _files_by_class(root: Path, read_already: set[str]) -> tuple[dict[str, list[str]], list[SkippedFile]]:
    """Image files per class folder of `root`; files in sub-folders belong to the class too.

    Links are followed, but every real folder is read once: a link to a folder read
    already, to a class folder or back up to the data (a loop) is reported, not
    followed. `read_already` holds the real folders read so far, and the data root's.
    """
    by_class: dict[str, list[str]] = {}
    # Hidden folders (.git, .ipynb_checkpoints, .cache) are never classes; said, so that a class
    # hidden by mistake is noticed.
    skipped = [SkippedFile(str(p), "a hidden folder (its name starts with a dot): not read as a class")
               for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith(".")]
    folders = _class_folders(root)
    off_limits = read_already | {os.path.realpath(folder) for folder in folders}
    for folder in folders:
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            read_already.add(os.path.realpath(dirpath))
            followed = []
            skipped += [SkippedFile(os.path.join(dirpath, name), "a hidden folder (its name starts with a dot): "
                                    "not read") for name in sorted(dirnames) if name.startswith(".")]
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, name))
                if real in off_limits or real in read_already or os.path.realpath(root).startswith(real + os.sep):
                    skipped.append(SkippedFile(os.path.join(dirpath, name),
                                               f"a link to {real}, a folder read elsewhere (a loop or another class)"))
                else:
                    followed.append(name)
            dirnames[:] = followed
            _sort_files(dirpath, filenames, files, skipped)
        by_class[folder.name] = files
    return by_class, skipped


def _layout(data_dir: Path) -> tuple[list[Path], Optional[Path], list[Path]]:
    """The folders to pool for cross-validation, the held-out test folder, and the folders
    beside split folders that are not read, from the layout of `data_dir` (LAYOUTS);
    anything ambiguous is refused in one line."""
    folders = _class_folders(data_dir)
    found: dict[str, list[Path]] = {split: [p for p in folders if p.name.lower() in names]
                                    for split, names in SPLIT_SYNONYMS.items()}
    split_folders = [p for paths in found.values() for p in paths]
    if not split_folders:
        return [data_dir], None, []
    names = ", ".join(f"{p.name}/" for p in split_folders)
    twice = [paths for paths in found.values() if len(paths) > 1]
    if twice:
        raise DataError(f"{data_dir} holds {' and '.join(p.name + '/' for p in twice[0])}, which name the same split; "
                        f"keep one. Layouts understood: {LAYOUTS}")
    train = found["train"][0] if found["train"] else None
    if train is None or not has_class_folders(train):
        raise DataError(f"{data_dir} holds split folders ({names}) but no train/ with class folders in it; "
                        f"layouts understood: {LAYOUTS}")
    others = [p.name for p in folders if p not in split_folders
              and any(is_image_name(f.name) for f in p.iterdir() if f.is_file())]
    if others:
        raise DataError(f"{data_dir} holds split folders ({names}) and also class folders ({', '.join(others)}): "
                        f"use one layout. Layouts understood: {LAYOUTS}")
    ignored = [p for p in folders if p not in split_folders]  # sub-folders of folders (train_augmented/)
    return [train, *found["val"]], (found["test"][0] if found["test"] else None), ignored


def scan_dataset(data_dir: Path) -> DatasetIndex:
    """Index `data_dir`: class folders, or a train/ split (pooled with a val/ split when there
    is one) plus an optional held-out test/ split, under the names public datasets use."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    pooled_roots, test_root, ignored = _layout(data_dir)
    read_already = {os.path.realpath(data_dir)}
    pooled: dict[str, list[str]] = {}
    skipped: list[SkippedFile] = []
    for root in pooled_roots:
        by_class, root_skipped = _files_by_class(root, read_already)
        skipped += root_skipped
        for name, files in by_class.items():
            pooled.setdefault(name, []).extend(files)

    empty = sorted(name for name, files in pooled.items() if not files)
    for name in empty:
        print(f"warning: class folder '{printable(name)}' holds no images and is left out")
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
        by_class, test_skipped = _files_by_class(test_root, read_already)
        skipped += test_skipped
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"{test_root} has class folders not seen in the training splits: {', '.join(unknown)}")
        test_samples = [Sample(path, classes.index(name)) for name, files in by_class.items() for path in files]
    pooled_splits = [root.name for root in pooled_roots if root != data_dir]
    return DatasetIndex(classes, samples, test_samples, skipped, pooled_splits, test_root and test_root.name,
                        [path.name for path in ignored])


def scan_unlabeled(folder: Path) -> tuple[list[str], list[SkippedFile]]:
    """Every image file under `folder`, searched recursively (class folders, if it has any, are
    not labels here), and the files left out with their reason. Links to folders are not followed:
    an unlabeled folder holds its own photos."""
    if not folder.is_dir():
        raise DataError(f"--unlabeled_dir {folder} is not a folder")
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        _sort_files(dirpath, filenames, found, skipped)
    return found, skipped


def drop_unlabeled_copies(paths: Sequence[str], digest_of: Mapping[str, str], labelled: Mapping[str, str],
                          root: Path) -> tuple[list[str], list[SkippedFile]]:
    """The unlabeled images that are neither a labelled image (`labelled`: digest -> its path) nor a
    copy of an earlier unlabeled one, and the others with their reason: a validation photo must not
    come back into its own fold's training through the unlabeled folder. Copies are named by their
    path under `root`, the unlabeled folder."""
    kept, skipped, seen = [], [], {}
    for path in paths:
        digest = digest_of[path]
        if digest in labelled:
            skipped.append(SkippedFile(path, f"the same image as the labelled {labelled[digest]}: left out of the "
                                             "unlabeled images"))
        elif digest in seen:
            skipped.append(SkippedFile(path, f"the same image as {os.path.relpath(seen[digest], root)}: counted once"))
        else:
            seen[digest] = path
            kept.append(path)
    return kept, skipped


def drop_duplicates(index: DatasetIndex, digest_of: Mapping[str, str], data_dir: Path) -> tuple[DatasetIndex, int]:
    """The index without images whose content (`digest_of`: path -> SHA-256) another image
    has: copies, hard links and symbolic links alike. The same image under two classes has no
    one label: every copy is left out. Copies within one class count once (the first kept), so
    that no image is on both sides of a fold. A test image that is also a training image is
    not new to the model: left out of test/. Each left-out file is in the index's skipped list
    with its reason; also returns how many."""
    def name(path: str) -> str:
        return os.path.relpath(path, data_dir)

    groups: dict[str, list[Sample]] = {}
    for sample in index.samples:
        groups.setdefault(digest_of[sample.path], []).append(sample)
    samples, skipped = [], []
    for sample in index.samples:
        group = groups[digest_of[sample.path]]
        classes = sorted({index.classes[other.label] for other in group})
        first = next(other for other in group if other is not sample) if len(group) > 1 else None
        if len(classes) > 1:
            skipped.append(SkippedFile(sample.path, f"the same image as {name(first.path)}, under classes "
                                                    f"{' and '.join(classes)}: no one label, so every copy is left out"))
        elif group[0] is not sample:
            skipped.append(SkippedFile(sample.path, f"the same image as {name(group[0].path)}: counted once"))
        else:
            samples.append(sample)
    test_samples, seen_in_test = [], {}
    for sample in index.test_samples:
        digest = digest_of[sample.path]
        if digest in groups:
            skipped.append(SkippedFile(sample.path, f"the same image as {name(groups[digest][0].path)}: a test image "
                                                    "must be new to the model"))
        elif digest in seen_in_test:
            skipped.append(SkippedFile(sample.path, f"the same image as {name(seen_in_test[digest])}: counted once"))
        else:
            seen_in_test[digest] = sample.path
            test_samples.append(sample)
    return dataclasses.replace(index, samples=samples, test_samples=test_samples,
                               skipped=index.skipped + skipped), len(skipped)


SHORT_CLASSES_NAMED = 5  # in the message that refuses them


def check_class_counts(classes: Sequence[str], labels: Sequence[int], num_folds: int, batch_size: int) -> None:
    """Stratified K-fold needs at least K images of every class; a batch larger than the
    whole dataset is a mistake (and would make the time estimate allocate it)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    short = [f"'{name}' ({count})" for name, count in zip(classes, counts) if count < num_folds]
    if short:
        which = "class" if len(short) == 1 else f"{len(short)} classes"
        verb = "has" if len(short) == 1 else "have"
        raise DataError(f"{which} {examples(short, SHORT_CLASSES_NAMED)} {verb} fewer readable images than "
                        f"num_folds={num_folds}; add images or lower --num_folds (the smallest class has {min(counts)})")
    if batch_size > counts.sum():
        raise DataError(f"batch_size {batch_size} is larger than the whole dataset ({counts.sum()} images); "
                        "lower --batch_size")


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
