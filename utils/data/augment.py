"""RandAugment (Cubuk et al., 2020) and TrivialAugment (Müller and Hutter, 2021)
for RGB uint8 arrays, with OpenCV, in the operation space and magnitudes of
torchvision's RandAugment. RandAugment applies 2 random operations at magnitude
9 of 30; TrivialAugment one random operation at a random magnitude (the TA (RA)
variant: the wide space's shears and 32-pixel shifts are too strong at the small
sizes this tool trains at). Random choices come from Python's `random`, so that
`seeded_augmentation` replays them (utils/data/transforms.py)."""
from __future__ import annotations

import random
from typing import Callable

import cv2
import numpy as np

MAX_MAGNITUDE = 30
FILL = (128, 128, 128)


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=FILL)


def _shear(image: np.ndarray, amount: float, axis: int) -> np.ndarray:
    height, width = image.shape[:2]
    if axis == 0:  # x' = x + amount * (y - centre)
        matrix = np.float32([[1, amount, -amount * height / 2], [0, 1, 0]])
    else:
        matrix = np.float32([[1, 0, 0], [amount, 1, -amount * width / 2]])
    return _warp(image, matrix)


def _translate(image: np.ndarray, fraction: float, axis: int) -> np.ndarray:
    height, width = image.shape[:2]
    shift = fraction * (width if axis == 0 else height)
    return _warp(image, np.float32([[1, 0, shift if axis == 0 else 0], [0, 1, shift if axis == 1 else 0]]))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    return _warp(image, cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0))


def _blend(image: np.ndarray, other: np.ndarray, factor: float) -> np.ndarray:
    """factor 1: the image; 0: `other`; beyond 1: away from `other`."""
    return np.clip(other + factor * (image.astype(np.float32) - other), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB).astype(np.float32)


def _sharpen(image: np.ndarray, factor: float) -> np.ndarray:
    kernel = np.float32([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    return _blend(image, cv2.filter2D(image, -1, kernel).astype(np.float32), factor)


def _autocontrast(image: np.ndarray) -> np.ndarray:
    low = image.min(axis=(0, 1), keepdims=True).astype(np.float32)
    high = image.max(axis=(0, 1), keepdims=True).astype(np.float32)
    scale = np.where(high > low, 255.0 / np.maximum(high - low, 1), 1.0)
    return np.where(high > low, (image - low) * scale, image).clip(0, 255).astype(np.uint8)


def _equalize(image: np.ndarray) -> np.ndarray:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(image[..., c])) for c in range(3)], axis=-1)


def _posterize(image: np.ndarray, magnitude: float) -> np.ndarray:
    """Keep 8 down to 4 bits per channel."""
    return image & np.uint8((0xFF << round(4 * magnitude)) & 0xFF)


def _signed(value: float) -> float:
    return value if random.random() < 0.5 else -value


# name -> op(image, magnitude in [0, 1]); signed ops pick a direction at random.
OPERATIONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "identity": lambda image, m: image,
    "shear_x": lambda image, m: _shear(image, _signed(0.3 * m), 0),
    "shear_y": lambda image, m: _shear(image, _signed(0.3 * m), 1),
    "translate_x": lambda image, m: _translate(image, _signed(0.45 * m), 0),
    "translate_y": lambda image, m: _translate(image, _signed(0.45 * m), 1),
    "rotate": lambda image, m: _rotate(image, _signed(30.0 * m)),
    "brightness": lambda image, m: _blend(image, np.zeros_like(image, np.float32), 1.0 + _signed(0.9 * m)),
    "color": lambda image, m: _blend(image, _grey(image), 1.0 + _signed(0.9 * m)),
    "contrast": lambda image, m: _blend(image, np.full(image.shape, _grey(image).mean(), np.float32),
                                        1.0 + _signed(0.9 * m)),
    "sharpness": lambda image, m: _sharpen(image, 1.0 + _signed(0.9 * m)),
    "posterize": _posterize,
    "solarize": lambda image, m: np.where(image >= 255 * (1.0 - m), 255 - image, image).astype(np.uint8),
    "autocontrast": lambda image, m: _autocontrast(image),
    "equalize": lambda image, m: _equalize(image),
}


class RandAugment:
    """`num_ops` operations drawn at random, each at `magnitude` (of 30)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9) -> None:
        self.num_ops, self.magnitude = num_ops, magnitude

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for _ in range(self.num_ops):
            image = OPERATIONS[random.choice(list(OPERATIONS))](image, self.magnitude / MAX_MAGNITUDE)
        return image


class TrivialAugment:
    """One operation drawn at random, at a magnitude drawn at random."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        operation = OPERATIONS[random.choice(list(OPERATIONS))]
        return operation(image, random.randint(0, MAX_MAGNITUDE) / MAX_MAGNITUDE)


AUTO_AUGMENTS: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]] = {
    "randaugment": RandAugment,
    "trivialaugment": TrivialAugment,
}
