"""Exporting trained students for deployment: one Paddle inference model per
fold (paddle.jit.save, any batch size), with its best.json beside it."""
from __future__ import annotations

import shutil
from pathlib import Path

import paddle
from paddle.static import InputSpec

from utils.checkpoint import META_NAME, load_student

EXPORTED_PREFIX = "model"  # files model.json (or model.pdmodel) and model.pdiparams


def save_inference_model(model: paddle.nn.Layer, img_size: int, out_dir: Path) -> None:
    """`model` as a static inference model in `out_dir`, for any batch size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(model, str(out_dir / EXPORTED_PREFIX),
                    input_spec=[InputSpec([None, 3, img_size, img_size], "float32", name="image")])


def export_student(weights: Path, out_dir: Path) -> Path:
    """Write the student at `weights` to `out_dir` as a static inference model."""
    model, meta = load_student(weights)
    save_inference_model(model, meta["img_size"], out_dir)
    shutil.copyfile(weights.with_name(META_NAME), out_dir / META_NAME)
    return out_dir


def is_exported(directory: Path) -> bool:
    return (directory / f"{EXPORTED_PREFIX}.pdiparams").is_file()


def exported_model_file(directory: Path) -> Path:
    """Paddle 3 writes the program as .json; older versions as .pdmodel."""
    for suffix in (".json", ".pdmodel"):
        path = directory / f"{EXPORTED_PREFIX}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {EXPORTED_PREFIX}.json or {EXPORTED_PREFIX}.pdmodel in {directory}")
