"""AdamW (with a lower learning rate for the backbone than for the head, when asked)
and its learning-rate schedule: linear warmup, then cosine decay or cosine decay with
warm restarts (SGDR, Loshchilov and Hutter, 2017), stepped once per iteration."""
from __future__ import annotations

from typing import Sequence

import paddle
import paddle.nn as nn

from models.freeze import trainable_parameters

LR_SCHEDULES = ("cosine", "cosine_restarts")


def warmup_cosine(base_lr: float, epochs: int, warmup_epochs: int, steps_per_epoch: int,
                  restart_epochs: int = 0) -> paddle.optimizer.lr.LRScheduler:
    """Warmup lasts at most all but the last epoch, so that short runs still decay. With
    `restart_epochs`, the cosine restarts from `base_lr` every that many epochs after warmup."""
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs, epochs - 1) * steps_per_epoch
    if restart_epochs > 0:
        cosine = paddle.optimizer.lr.CosineAnnealingWarmRestarts(base_lr, T_0=restart_epochs * steps_per_epoch)
    else:
        cosine = paddle.optimizer.lr.CosineAnnealingDecay(base_lr, T_max=max(1, total - warmup))
    if warmup == 0:
        return cosine
    return paddle.optimizer.lr.LinearWarmup(cosine, warmup_steps=warmup, start_lr=0.0, end_lr=base_lr)


def build_optimizer(model: nn.Layer, schedule: paddle.optimizer.lr.LRScheduler, weight_decay: float,
                    clip_grad_norm: float = 0.0, companions: Sequence[nn.Layer] = (), head: str = "",
                    backbone_lr_scale: float = 1.0) -> paddle.optimizer.AdamW:
    """AdamW over the model's trainable parameters and its companions' (layers that train with it
    but are not part of it, like feature distillation's projection); with clip_grad_norm > 0,
    gradients are scaled down so that their global L2 norm is at most that
    (paddle.nn.ClipGradByGlobalNorm). With a `head` (the name of the model's classifier layer)
    and backbone_lr_scale < 1, every other parameter learns at that share of the learning rate
    (layer-wise learning rates, as Paddle parameter groups: a group's rate scales the schedule's)."""
    params = trainable_parameters(model) + [p for layer in companions for p in trainable_parameters(layer)]
    groups: list = params
    if head and backbone_lr_scale != 1.0:
        head_ids = {id(p) for p in getattr(model, head).parameters()}
        companion_ids = {id(p) for layer in companions for p in layer.parameters()}
        fast = [p for p in params if id(p) in head_ids | companion_ids]
        groups = [{"params": fast}, {"params": [p for p in params if id(p) not in head_ids | companion_ids],
                                     "learning_rate": backbone_lr_scale}]
    # Weight decay on norm scales and biases (1-D parameters) only shrinks them towards zero for nothing.
    decayed = {p.name for p in params if len(p.shape) > 1}
    return paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=groups,
        weight_decay=weight_decay,
        apply_decay_param_fun=lambda name: name in decayed,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(clip_grad_norm) if clip_grad_norm > 0 else None,
    )
