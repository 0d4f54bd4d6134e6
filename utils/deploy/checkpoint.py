"""A fold's best student on disk: best.pdparams beside best.json, which holds
everything needed to rebuild and use it (classes, architecture, input size,
normalisation), so that nobody passes class names by hand."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import paddle
import paddle.nn as nn

from models.student import build_student
from utils.runtime.errors import UserError
from utils.runtime.files import partial_path

WEIGHTS_NAME = "best.pdparams"
META_NAME = "best.json"


def save_checkpoint(fold_dir: Path, state: dict, meta: dict[str, Any]) -> None:
    """Written to temporary files, then renamed: a killed process never leaves half a checkpoint."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    weights_tmp, meta_tmp = partial_path(fold_dir / WEIGHTS_NAME), partial_path(fold_dir / META_NAME)
    paddle.save(state, str(weights_tmp))
    meta_tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(weights_tmp, fold_dir / WEIGHTS_NAME)
    os.replace(meta_tmp, fold_dir / META_NAME)


def read_meta(weights_path: Path) -> dict[str, Any]:
    meta_path = weights_path.with_name(META_NAME)
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{meta_path} is missing or unreadable: it must sit beside {weights_path.name}") from None


def load_student(weights_path: Path) -> tuple[nn.Layer, dict[str, Any]]:
    """The student saved at `weights_path`, in eval mode, and its metadata."""
    meta = read_meta(weights_path)
    model = build_student(
        meta["student"], len(meta["classes"]), "none",
        attention=meta.get("attention", "none"), attention_blocks=str(meta.get("attention_blocks", "all")),
        width=meta.get("student_width", 1.0),
    )
    missing, unexpected = model.set_state_dict(paddle.load(str(weights_path)))
    if missing or unexpected:
        raise UserError(f"{weights_path} does not match the architecture in {META_NAME}")
    model.eval()
    return model, meta
