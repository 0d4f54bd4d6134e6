"""Exporting trained students for deployment: one Paddle inference model per
fold (paddle.jit.save, any batch size), with its best.json beside it, and on
request the same model as ONNX (paddle2onnx)."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import paddle
from paddle.static import InputSpec

from utils.data.folders import scan_dataset
from utils.data.images import read_image
from utils.data.transforms import resize_size
from utils.deploy.checkpoint import META_NAME, load_student
from utils.deploy.spec import ModelSpec
from utils.runtime.config import read_yaml
from utils.runtime.errors import ConfigError, UserError
from utils.runtime.process import native_output_silenced

EXPORTED_PREFIX = "model"  # files model.json (or model.pdmodel) and model.pdiparams
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
ONNX_OPSET = 13  # ONNX Runtime 1.16 and later run it; paddle2onnx raises it where an operator needs more


def save_inference_model(model: paddle.nn.Layer, img_size: int, out_dir: Path) -> None:
    """`model` as a static inference model in `out_dir`, for any batch size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(model, str(out_dir / EXPORTED_PREFIX),
                    input_spec=[InputSpec([None, 3, img_size, img_size], "float32", name="image")])
    check_complete(out_dir, model)


def check_complete(out_dir: Path, model: paddle.nn.Layer) -> None:
    """paddle.jit.save does not notice a full disk: it returns, leaving its files cut short
    (measured: 2.97 of 6.15 MB of a student's weights written, no error), and loading them
    later fails inside Paddle's C++ code. A cut-short file is an OSError naming it, as any
    other write to a full disk is."""
    weights = out_dir / f"{EXPORTED_PREFIX}.pdiparams"
    needed = sum(int(tensor.numel()) * tensor.element_size() for tensor in model.state_dict().values())
    program = exported_model_file(out_dir)
    if weights.stat().st_size < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(weights))
    if program.suffix == ".json" and not _is_json(program):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(program))


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except ValueError:
        return False
    return True


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


def quantize_int8(out_dir: Path, calibration: np.ndarray) -> Path:
    """`out_dir`/model.onnx post-training quantized to `out_dir`/model.int8.onnx by ONNX Runtime:
    INT8 weights per channel, UINT8 activations with ranges calibrated on `calibration`
    (preprocessed images, N x 3 x H x W), in the QDQ format. The float graph is first
    optimized as ONNX Runtime recommends (batch norm folded into the convolutions): quantized
    without it, every batch norm stays float between a dequantize and a quantize, and INT8
    ran at 0.20x float; with it, 2.1x for MobileNetV2 at 224 px (docs/deployment.md)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    int8_path = out_dir / INT8_NAME
    optimized = out_dir / f"{EXPORTED_PREFIX}.optimized.onnx"
    try:
        with native_output_silenced():
            # Symbolic shape inference stops at MobileNetV3's squeeze-excitation reshapes; ONNX's own suffices.
            quant_pre_process(str(out_dir / ONNX_NAME), str(optimized), skip_symbolic_shape=True)
            quantize_static(str(optimized), str(int8_path), Batches(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    finally:  # an intermediate file: never left in the export, whether quantization worked or not
        optimized.unlink(missing_ok=True)
    return int8_path


def export_student(weights: Path, out_dir: Path, onnx: bool = False,
                   calibration: Optional[np.ndarray] = None) -> Path:
    """Write the student at `weights` to `out_dir` as a static inference model (and as ONNX;
    with `calibration` images, also as INT8 ONNX)."""
    model, spec, _ = load_student(weights)
    save_inference_model(model, spec.img_size, out_dir)
    shutil.copyfile(weights.with_name(META_NAME), out_dir / META_NAME)
    if onnx or calibration is not None:
        save_onnx(out_dir)
    if calibration is not None:
        quantize_int8(out_dir, calibration)
    return out_dir


def exported_files(out_dir: Path) -> list[Path]:
    """Every file export_student may write to `out_dir`."""
    names = [f"{EXPORTED_PREFIX}{suffix}" for suffix in (".json", ".pdmodel", ".pdiparams")]
    return [out_dir / name for name in (*names, META_NAME, ONNX_NAME, INT8_NAME)]


def is_exported(directory: Path) -> bool:
    return (directory / f"{EXPORTED_PREFIX}.pdiparams").is_file()


def exported_model_file(directory: Path) -> Path:
    """Paddle 3 writes the program as .json; older versions as .pdmodel."""
    for suffix in (".json", ".pdmodel"):
        path = directory / f"{EXPORTED_PREFIX}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {EXPORTED_PREFIX}.json or {EXPORTED_PREFIX}.pdmodel in {directory}")


def calibration_images(spec: ModelSpec, data_dir: Path, count: int, seed: int = 0) -> np.ndarray:
    """`count` images drawn at random from the class folders of `data_dir`, preprocessed as for
    evaluation (resize, centre crop, normalisation), for INT8 calibration."""
    index = scan_dataset(data_dir)
    order = np.random.default_rng(seed).permutation(len(index.samples))
    transform, images = spec.eval_transform(), []
    for i in order:
        image = read_image(index.samples[i].path, resize_size(spec.img_size))
        if image is not None:
            images.append(transform(image))
        if len(images) == count:
            break
    if not images:
        raise UserError(f"no readable images in {data_dir} to calibrate the INT8 model with")
    return np.stack(images).astype(np.float32)


def run_data_dir(weights: Path) -> Optional[Path]:
    """The data directory of the run a saved model belongs to (its config.yaml), if known."""
    for folder in (weights.parent.parent, weights.parent):
        try:
            return Path(read_yaml(folder / "config.yaml")["data_dir"])
        except (ConfigError, KeyError, TypeError):  # none there, or not one this tool wrote
            continue
    return None
