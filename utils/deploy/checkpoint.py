"""A trained student on disk: best.pdparams (its weights) beside best.json (its
ModelSpec, and how it was trained), so that nobody passes class names by hand."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import paddle.nn as nn

from utils.deploy.spec import ModelSpec
from utils.runtime.errors import UserError
from utils.runtime.files import write_json_atomic
from utils.runtime.weights_file import load_weights_file, save_weights_file

WEIGHTS_NAME = "best.pdparams"
META_NAME = "best.json"


def save_checkpoint(model_dir: Path, state: dict, spec: ModelSpec, training: dict[str, Any]) -> None:
    """The weights, then best.json: the spec and `training` (how the model came about)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    save_weights_file(model_dir / WEIGHTS_NAME, state)
    write_json_atomic(model_dir / META_NAME, {**spec.to_json(), **training})


def read_meta(meta_path: Path) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec in a best.json, and all of its content."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read {meta_path} ({error.strerror}): it must sit beside the model's weights") \
            from None
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{meta_path} is not valid JSON") from None
    return ModelSpec.from_json(meta, meta_path), meta


def check_weights_fit(model: nn.Layer, state: Any, source: Path) -> None:
    """The same parameter names and shapes, checked before Paddle's set_state_dict would print a
    warning per mismatched tensor."""
    if not isinstance(state, dict):
        raise UserError(f"{source} does not hold a model's weights")
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    found = {name: tuple(np.shape(value)) for name, value in state.items() if name in expected}
    wrong = [name for name in expected if found.get(name) != expected[name]]
    if wrong:
        raise UserError(f"{source} does not match the model its best.json describes: {len(wrong)} of "
                        f"{len(expected)} weight tensors are missing or of another shape (first: {wrong[0]})")


def load_student(weights_path: Path) -> tuple[nn.Layer, ModelSpec, dict[str, Any]]:
    """The student saved at `weights_path`, in eval mode, its spec and its best.json."""
    spec, meta = read_meta(weights_path.with_name(META_NAME))
    state = load_weights_file(weights_path)
    model = spec.build()
    check_weights_fit(model, state, weights_path)
    model.set_state_dict(state)
    model.eval()
    return model, spec, meta
