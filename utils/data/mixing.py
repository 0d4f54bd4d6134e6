"""Mixing the images of a batch: Mixup (Zhang et al., 2018) blends two images,
CutMix (Yun et al., 2019) pastes a box of one into the other. Either way one
lambda and one pairing describe the batch, for the images, the hard labels and,
through the mixed images or their stored distributions, the teacher."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import paddle


@dataclasses.dataclass
class MixedTargets:
    """Image i is image i mixed with image perm[i]: its labels are labels_a[i] with
    weight lam and labels_b[i] with weight 1 - lam (for CutMix, lam is the share of
    the image's area that is its own). Without mixing, lam is 1 and perm is None."""

    labels_a: paddle.Tensor
    labels_b: paddle.Tensor
    lam: float
    perm: Optional[paddle.Tensor] = None


def mixup(images: paddle.Tensor, labels: paddle.Tensor, alpha: float, rng: np.random.Generator
          ) -> tuple[paddle.Tensor, MixedTargets]:
    lam = float(rng.beta(alpha, alpha))
    perm = paddle.to_tensor(rng.permutation(images.shape[0]))
    mixed = lam * images + (1.0 - lam) * paddle.gather(images, perm)
    return mixed, MixedTargets(labels, paddle.gather(labels, perm), lam, perm)


def cutmix(images: paddle.Tensor, labels: paddle.Tensor, alpha: float, rng: np.random.Generator
           ) -> tuple[paddle.Tensor, MixedTargets]:
    """A box of area about (1 - lam) of the image, centred anywhere and clipped at the
    borders, comes from the paired image; lam is then the exact area left."""
    lam = float(rng.beta(alpha, alpha))
    perm = paddle.to_tensor(rng.permutation(images.shape[0]))
    height, width = images.shape[2], images.shape[3]
    cut_h, cut_w = int(height * math.sqrt(1.0 - lam)), int(width * math.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    if bottom > top and right > left:
        mixed[:, :, top:bottom, left:right] = paddle.gather(images, perm)[:, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, MixedTargets(labels, paddle.gather(labels, perm), lam, perm)


def mix_batch(images: paddle.Tensor, labels: paddle.Tensor, mixup_alpha: float, cutmix_alpha: float,
              rng: np.random.Generator) -> tuple[paddle.Tensor, MixedTargets]:
    """Mixup or CutMix (when both are on, each batch picks one with probability 1/2, as
    timm does), or the batch as it is when both alphas are 0."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < 0.5)
    elif mixup_alpha > 0 or cutmix_alpha > 0:
        use_cutmix = cutmix_alpha > 0
    else:
        return images, MixedTargets(labels, labels, 1.0)
    return cutmix(images, labels, cutmix_alpha, rng) if use_cutmix else mixup(images, labels, mixup_alpha, rng)
