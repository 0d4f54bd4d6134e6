"""Decoding image files once: to RGB arrays in memory, or into a memory-mapped
store for sets larger than memory."""
from __future__ import annotations

import collections.abc
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.data.folders import Sample, SkippedFile
from utils.runtime.process import cpu_count

# The longest side may be at most this many times the shortest: a 1 x 1,000,000 strip would
# otherwise be enlarged to hundreds of GB by the resize that brings its short side to img_size.
MAX_ASPECT_RATIO = 20


class UnreadableImage(ValueError):
    """A file that is not an image the tool reads; the message says why."""


def decode_image(path: str, max_short_side: Optional[int] = None) -> np.ndarray:
    """An RGB uint8 array (H, W, 3), or UnreadableImage.

    np.fromfile + cv2.imdecode reads non-ASCII paths that cv2.imread cannot.
    IMREAD_COLOR turns grey, palette, 16-bit and RGBA images into 8-bit
    3-channel ones and applies the EXIF orientation. OpenCV refuses images of
    more than OPENCV_IO_MAX_IMAGE_PIXELS (utils/runtime/process.py) before
    allocating them, and images more elongated than MAX_ASPECT_RATIO are refused
    here. Images are shrunk (never enlarged) so that their short side is at most
    `max_short_side`.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block the read for ever
            raise UnreadableImage("not a regular file (a device, pipe or socket)")
        buffer = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except FileNotFoundError:
        raise UnreadableImage("disappeared while reading (deleted or moved since the folder was listed)") from None
    except (OSError, cv2.error):
        image = None
    if image is None:
        raise UnreadableImage("cannot be decoded as an image")
    height, width = image.shape[:2]
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise UnreadableImage(f"{width}x{height} pixels: more elongated than {MAX_ASPECT_RATIO}:1")
    if max_short_side and min(height, width) > max_short_side:
        scale = max_short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str, max_short_side: Optional[int] = None) -> Optional[np.ndarray]:
    """decode_image, or None for a file it refuses."""
    try:
        return decode_image(path, max_short_side)
    except UnreadableImage:
        return None


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


def decoded_or_reason(path: str, max_short_side: Optional[int] = None) -> np.ndarray | str:
    """The decoded image, or why it cannot be read."""
    try:
        return decode_image(path, max_short_side)
    except UnreadableImage as problem:
        return str(problem)


def load_images(
    samples: Sequence[Sample], max_short_side: int, desc: str = "decoding images", store: Optional[Path] = None
) -> tuple[Sequence[np.ndarray], list[Sample], list[SkippedFile]]:
    """Decode every image once, in parallel, into memory, or with `store` into an
    ImageStore at that path; undecodable files are skipped and reported."""
    workers = min(8, cpu_count())
    images, shapes, kept, skipped = [], [], [], []
    with ThreadPoolExecutor(workers) as pool, open(store or os.devnull, "wb") as store_file:
        decoded = pool.map(lambda s: decoded_or_reason(s.path, max_short_side), samples)
        for sample, image in zip(samples, tqdm(decoded, total=len(samples), desc=desc, leave=False, disable=None)):
            if isinstance(image, str):
                print(f"warning: skipping {sample.path}: {image}")
                skipped.append(SkippedFile(sample.path, image))
                continue
            kept.append(sample)
            if store:
                store_file.write(np.ascontiguousarray(image).tobytes())
                shapes.append(image.shape)
            else:
                images.append(image)
    return (ImageStore(store, shapes) if store and shapes else images), kept, skipped
