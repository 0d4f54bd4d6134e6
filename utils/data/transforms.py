"""Training augmentation and evaluation preprocessing, defined once for
training, evaluation and inference. Images arrive as RGB uint8 (H, W, 3)
arrays and leave as normalised float32 (3, H, W) arrays."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import paddle.vision.transforms as T

from models.weights import Normalization
from utils.data.augment import AUTO_AUGMENTS
from utils.runtime.config import AugmentSettings

# Evaluation resizes the short side to img_size / 0.875 (256 for 224), then crops the centre.
CENTER_CROP_FRACTION = 0.875


def resize_size(img_size: int) -> int:
    """The short side images are resized to before the centre crop; also the
    largest short side kept in memory when images are decoded."""
    return round(img_size / CENTER_CROP_FRACTION)


def _normalize(normalization: Normalization) -> T.Normalize:
    # Inputs are 0-255 here: ToTensor's division by 255 is folded into the constants.
    return T.Normalize([255 * m for m in normalization.mean], [255 * s for s in normalization.std], data_format="HWC")


def build_train_transform(augment: AugmentSettings, size: int, normalization: Normalization) -> T.Compose:
    """The training augmentation to `size` pixels, ending with the student's input `normalization`."""
    if augment.crop == "random_resized":
        steps = [T.RandomResizedCrop(size, scale=(augment.crop_scale_min, 1.0))]
    else:
        steps = [T.Resize((size, size)), T.Pad(size // 8), T.RandomCrop(size)]
    if augment.hflip > 0:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.auto_augment != "none":
        steps.append(AUTO_AUGMENTS[augment.auto_augment]())
    if augment.rotation > 0:
        steps.append(T.RandomRotation(augment.rotation))
    if augment.color_jitter > 0:
        steps.append(T.ColorJitter(augment.color_jitter, augment.color_jitter, augment.color_jitter))
    steps.append(_normalize(normalization))
    if augment.erasing > 0:
        # After normalising, so that the erased box is filled with the mean colour (0).
        steps.append(T.RandomErasing(prob=augment.erasing))
    steps.append(T.Transpose())
    return T.Compose(steps)


def build_eval_transform(img_size: int, crop: str, normalization: Normalization) -> T.Compose:
    """The deterministic counterpart of the training crop: resize and centre crop
    after random-resized crops; the whole image, resized to a square, after
    padded crops (which trained on whole images)."""
    if crop == "random_resized":
        steps = [T.Resize(resize_size(img_size)), T.CenterCrop(img_size)]
    else:
        steps = [T.Resize((img_size, img_size))]
    return T.Compose([*steps, _normalize(normalization), T.Transpose()])


@contextlib.contextmanager
def seeded_augmentation(*key: int) -> Iterator[None]:
    """Run the enclosed random transforms from states seeded by `key`, then restore
    the global states. Paddle's transforms draw from both `random` and `np.random`,
    so the same key gives the same augmented image in any process, on any run."""
    saved = random.getstate(), np.random.get_state()
    seed = np.random.SeedSequence(list(key)).generate_state(2)
    random.seed(int(seed[0]))
    np.random.seed(int(seed[1]))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
