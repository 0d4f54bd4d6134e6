"""Export a run's final student (or, with --ensemble, every fold's) as a Paddle inference
model, for `inference.py --model_path <export_dir>/<name>` or your own paddle.inference code;
with --format onnx, also as model.onnx for ONNX Runtime.

    python export.py --model_path models_saved/<run> --export_dir exported/<run> [--format onnx]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.runtime.process import prepare_process

prepare_process()  # must run before anything imports Paddle

from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", help="run directory, model directory or .pdparams file "
                                             "(default: the newest run in --output_dir)")
    parser.add_argument("--output_dir", default="models_saved",
                        help="where runs are saved, as for main.py (default: %(default)s)")
    parser.add_argument("--fold", type=int, help="export only this fold")
    parser.add_argument("--ensemble", action="store_true", help="export every fold rather than the final model")
    parser.add_argument("--allow_partial", action="store_true", help="export the finished folds of an unfinished run")
    parser.add_argument("--export_dir", required=True, help="where the exported models go, one folder each")
    parser.add_argument("--format", choices=("paddle", "onnx"), default="paddle",
                        help="onnx: the Paddle inference model and, beside it, model.onnx (needs paddle2onnx)")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: also model.int8.onnx, post-training quantized by ONNX Runtime; run it with "
                             "inference.py --backend onnxruntime-int8")
    parser.add_argument("--calibration_dir", help="class folders to calibrate INT8 with (default: the run's data)")
    parser.add_argument("--calibration_images", type=int, default=300, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    from utils.deploy.checkpoint import META_NAME, load_student
    from utils.deploy.export import calibration_images, export_student, exported_files, run_data_dir
    from utils.deploy.inference import find_weights, int8_speed
    from utils.runtime.files import refuse_overwriting_inputs

    export_dir = Path(args.export_dir)
    if export_dir.exists() and not export_dir.is_dir():
        raise UserError(f"--export_dir {export_dir} is a file, not a folder")
    if args.calibration_images < 1:
        raise UserError("--calibration_images must be at least 1")
    sources = find_weights(args.model_path, args.output_dir, args.fold, args.ensemble, args.allow_partial)
    targets = {weights: export_dir / (weights.parent.name if weights.name == "best.pdparams" else weights.stem)
               for weights in sources}
    refuse_overwriting_inputs([("--export_dir", path) for out in targets.values() for path in exported_files(out)],
                              [path for weights in sources for path in (weights, weights.with_name(META_NAME))])
    for weights, out_dir in targets.items():
        calibration = checked = None
        if args.quantize == "int8":
            data_dir = Path(args.calibration_dir) if args.calibration_dir else run_data_dir(weights)
            if data_dir is None or not data_dir.is_dir():
                raise UserError(f"INT8 calibration needs images: pass --calibration_dir (found none for {weights})")
            spec = load_student(weights)[1]
            calibration = calibration_images(spec, data_dir, args.calibration_images)
            # Other images (another draw) to see how often INT8 answers as float does.
            checked = calibration_images(spec, data_dir, args.calibration_images, seed=1)
            print(f"INT8 ranges calibrated on {len(calibration)} images from {data_dir}")
        out = export_student(weights, out_dir, onnx=args.format == "onnx", calibration=calibration)
        print(f"exported {weights} -> {out}")
        if calibration is not None:
            print(int8_speed(out, checked).note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
