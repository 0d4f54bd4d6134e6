"""Attention modules that plug into the student, looked up by name."""
from __future__ import annotations

from typing import Callable

import paddle.nn as nn

from utils.errors import ConfigError

# name -> constructor(channels) -> a layer that keeps its input's shape
ATTENTIONS: dict[str, Callable[[int], nn.Layer]] = {}


def attach_attention(model: nn.Layer, name: str, blocks: str) -> None:
    """Wrap the student's blocks with the named attention module ('none': leave them)."""
    if name == "none":
        return
    if name not in ATTENTIONS:
        raise ConfigError(f"unknown attention '{name}'; choose from none, {', '.join(ATTENTIONS)}")
