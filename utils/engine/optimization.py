"""AdamW and its learning-rate schedule: linear warmup, then cosine decay,
stepped once per iteration."""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn

from models.freeze import trainable_parameters


def warmup_cosine(base_lr: float, epochs: int, warmup_epochs: int, steps_per_epoch: int
                  ) -> paddle.optimizer.lr.LRScheduler:
    """Warmup lasts at most all but the last epoch, so that short runs still decay."""
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs, epochs - 1) * steps_per_epoch
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(base_lr, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    return paddle.optimizer.lr.LinearWarmup(cosine, warmup_steps=warmup, start_lr=0.0, end_lr=base_lr)


def build_optimizer(model: nn.Layer, schedule: paddle.optimizer.lr.LRScheduler, weight_decay: float,
                    clip_grad_norm: float = 0.0, companions: Sequence[nn.Layer] = ()) -> paddle.optimizer.AdamW:
    """AdamW over the model's trainable parameters and its companions' (layers that train with it
    but are not part of it, like feature distillation's projection); with clip_grad_norm > 0,
    gradients are scaled down so that their global L2 norm is at most that
    (paddle.nn.ClipGradByGlobalNorm)."""
    params = trainable_parameters(model) + [p for layer in companions for p in trainable_parameters(layer)]
    # Weight decay on norm scales and biases (1-D parameters) only shrinks them towards zero for nothing.
    decayed = {p.name for p in params if len(p.shape) > 1}
    return paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=params,
        weight_decay=weight_decay,
        apply_decay_param_fun=lambda name: name in decayed,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(clip_grad_norm) if clip_grad_norm > 0 else None,
    )
