"""Exporting trained students for deployment: one Paddle inference model per
fold (paddle.jit.save, any batch size), with its best.json beside it, and on
request the same model as ONNX (paddle2onnx)."""
from __future__ import annotations

import shutil
from pathlib import Path

import paddle
from paddle.static import InputSpec

from utils.deploy.checkpoint import META_NAME, load_student
from utils.runtime.errors import UserError
from utils.runtime.process import native_output_silenced

EXPORTED_PREFIX = "model"  # files model.json (or model.pdmodel) and model.pdiparams
ONNX_NAME = "model.onnx"
ONNX_OPSET = 13  # ONNX Runtime 1.16 and later run it; paddle2onnx raises it where an operator needs more


def save_inference_model(model: paddle.nn.Layer, img_size: int, out_dir: Path) -> None:
    """`model` as a static inference model in `out_dir`, for any batch size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(model, str(out_dir / EXPORTED_PREFIX),
                    input_spec=[InputSpec([None, 3, img_size, img_size], "float32", name="image")])


def save_onnx(out_dir: Path) -> Path:
    """The inference model in `out_dir` converted to `out_dir`/model.onnx."""
    try:
        import paddle2onnx
    except ImportError:
        raise UserError("--format onnx needs paddle2onnx: pip install paddle2onnx onnxruntime") from None
    onnx_path = out_dir / ONNX_NAME
    with native_output_silenced():  # four lines of conversion log per model
        paddle2onnx.export(str(exported_model_file(out_dir)), str(out_dir / f"{EXPORTED_PREFIX}.pdiparams"),
                           str(onnx_path), opset_version=ONNX_OPSET, enable_onnx_checker=True,
                           # Its default post-pass (Polygraphy) installs packages from the network at run
                           # time; ONNX Runtime folds the same constants when it loads the model.
                           optimize_tool="none")
    return onnx_path


def export_student(weights: Path, out_dir: Path, onnx: bool = False) -> Path:
    """Write the student at `weights` to `out_dir` as a static inference model (and as ONNX)."""
    model, spec, _ = load_student(weights)
    save_inference_model(model, spec.img_size, out_dir)
    shutil.copyfile(weights.with_name(META_NAME), out_dir / META_NAME)
    if onnx:
        save_onnx(out_dir)
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
