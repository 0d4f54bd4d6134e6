"""Decoding image files once: to RGB arrays in memory, or into a memory-mapped
store for sets larger than memory."""
from __future__ import annotations

import collections.abc
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.data.folders import Sample, SkippedFile
from utils.runtime.process import cpu_count


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
