"""Mixup (Zhang et al., 2018) on a batch: one lambda and one pairing for the
images, the hard labels and, through the mixed images, the teacher."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import paddle


@dataclasses.dataclass
class MixedTargets:
    """Image i is lam * image i + (1 - lam) * image perm[i]: its labels are
    labels_a[i] with weight lam and labels_b[i] with weight 1 - lam. Without
    mixing, lam is 1 and perm is None."""

    labels_a: paddle.Tensor
    labels_b: paddle.Tensor
    lam: float
    perm: Optional[paddle.Tensor] = None


def mixup(images: paddle.Tensor, labels: paddle.Tensor, alpha: float, rng: np.random.Generator
          ) -> tuple[paddle.Tensor, MixedTargets]:
    if alpha <= 0:
        return images, MixedTargets(labels, labels, 1.0)
    lam = float(rng.beta(alpha, alpha))
    perm = paddle.to_tensor(rng.permutation(images.shape[0]))
    mixed = lam * images + (1.0 - lam) * paddle.gather(images, perm)
    return mixed, MixedTargets(labels, paddle.gather(labels, perm), lam, perm)
