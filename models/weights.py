"""Building a classifier from `imagenet`, `none` or a local .pdparams file,
with its last linear layer sized for this dataset's classes; the registries' entry
(`Network`) and the input normalisation each network's weights expect."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, NamedTuple

import paddle.nn as nn

from utils.runtime.errors import ConfigError
from utils.runtime.weights_file import UnreadableWeights, load_weights_file

IMAGENET_CLASSES = 1000
# factory(pretrained, num_classes) -> model
ModelFactory = Callable[[bool, int], nn.Layer]


class Normalization(NamedTuple):
    """The per-channel mean and standard deviation, of pixels scaled to 0-1, that a network's
    weights were trained with: inputs are (pixel / 255 - mean) / std."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's and paddle.vision's
# TensorFlow's EfficientNet-Lite: (pixel - 127) / 128, inputs in [-1, 1]
SIGNED_UNIT = Normalization((127 / 255,) * 3, (128 / 255,) * 3)


class Network(NamedTuple):
    """A registered network: its constructor (pretrained=, num_classes= and, for students,
    scale=), the path of its final linear layer, and the normalisation its ImageNet weights
    expect (every input of it is normalised so, trained from scratch or not)."""
    build: Callable[..., nn.Layer]
    head: str
    normalization: Normalization = IMAGENET


def pooled_feature_size(head: nn.Layer) -> int:
    """The input size of a classifier head's linear layer: the size of the pooled features it reads."""
    return next(layer for layer in head.sublayers(include_self=True) if isinstance(layer, nn.Linear)).weight.shape[0]


def _parent_and_name(model: nn.Layer, head_path: str) -> tuple[nn.Layer, str]:
    *parents, name = head_path.split(".")
    parent = model
    for part in parents:
        parent = getattr(parent, part)
    return parent, name


def replace_head(model: nn.Layer, head_path: str, num_classes: int) -> None:
    """A new, untrained linear layer for `num_classes` in place of the one at `head_path`."""
    parent, name = _parent_and_name(model, head_path)
    old = getattr(parent, name)
    setattr(parent, name, nn.Linear(old.weight.shape[0], num_classes))


def check_weights_arg(weights: str, flag: str) -> None:
    """`imagenet`, `none`, or the path of an existing file."""
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ConfigError(f"--{flag}: no weights file {weights} (use imagenet, none or a .pdparams path)")


def build_classifier(
    factory: ModelFactory, head_path: str, num_classes: int, weights: str, flag: str
) -> tuple[nn.Layer, bool]:
    """The model, and whether its head was already trained for these classes.

    `weights` is `none` (random init), `imagenet` (Paddle's download) or a
    .pdparams path holding ImageNet weights (whose head is then replaced) or a
    model already trained for `num_classes` classes.
    """
    if weights == "none":
        return factory(False, num_classes), False
    if weights == "imagenet":
        level = logging.root.manager.disable
        logging.disable(logging.INFO)  # Paddle logs every failed download attempt
        try:
            model = factory(True, IMAGENET_CLASSES)
        except ConfigError:  # said in one line already (weights from a package that is not installed)
            raise
        except Exception as error:  # any download failure: no network, proxy, bad file
            raise ConfigError(
                f"could not download the ImageNet weights for --{flag} ({type(error).__name__}); pass a local "
                f".pdparams file (--{flag} PATH), or train from scratch, which works offline: "
                "--teacher_weights none --student_weights none"
            ) from None
        finally:
            logging.disable(level)
        replace_head(model, head_path, num_classes)
        return model, False

    check_weights_arg(weights, flag)
    path = Path(weights)
    try:
        state = load_weights_file(path)
    except UnreadableWeights as error:
        raise ConfigError(f"--{flag}: {error}") from None
    head_key = f"{head_path}.weight"
    if not isinstance(state, dict) or head_key not in state:
        raise ConfigError(f"--{flag}: {path} does not hold weights for this architecture (no {head_key})")
    saved_classes = int(state[head_key].shape[1])
    model = factory(False, saved_classes)
    missing, unexpected = model.set_state_dict(state)
    if missing or unexpected:
        raise ConfigError(f"--{flag}: {path} does not match this architecture ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected parameters)")
    if saved_classes != num_classes:
        replace_head(model, head_path, num_classes)
        return model, False
    return model, True
