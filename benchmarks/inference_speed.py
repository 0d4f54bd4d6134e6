"""Inference speed: the dynamic graph against the exported model through Paddle
Inference (oneDNN) and, when paddle2onnx and onnxruntime are installed, through
ONNX Runtime in float and in INT8 (static quantization), measured side by side in
one process, with their ratios.

    python benchmarks/inference_speed.py [--model_path RUN_OR_FOLD] [--student mobilenet_v2 --img_size 224] [--json]

Without --model_path an untrained student of the given architecture is used (speed
does not depend on the weights) and INT8 is calibrated on random inputs. With a run
directory, its fold 0 is measured: INT8 is calibrated on 200 of the run's images, and
the float and INT8 models classify the fold's validation images (which fold 0 never
trained on): the agreement rate and both accuracies are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime.process import prepare_process  # noqa: E402

prepare_process()  # must run before anything imports Paddle

import numpy as np  # noqa: E402

from models.student import build_student  # noqa: E402
from utils.data.images import read_image  # noqa: E402
from utils.data.transforms import resize_size  # noqa: E402
from utils.deploy.checkpoint import save_checkpoint  # noqa: E402
from utils.deploy.export import calibration_images, export_student, run_data_dir  # noqa: E402
from utils.deploy.inference import DynamicModel, ExportedModel, OnnxModel, find_weights  # noqa: E402
from utils.deploy.spec import ModelSpec  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402

CALIBRATION_IMAGES = 200


def measure(model, img_size: int, repeats: int, batch: int) -> dict:
    one = np.random.default_rng(0).normal(size=(1, 3, img_size, img_size)).astype("float32")
    many = np.random.default_rng(1).normal(size=(batch, 3, img_size, img_size)).astype("float32")
    for _ in range(3):
        model.logits(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.logits(one)
        times.append(time.perf_counter() - start)
    model.logits(many)
    start = time.perf_counter()
    for _ in range(3):
        model.logits(many)
    return {"latency_ms_batch1": 1000 * statistics.median(times),
            f"img_per_s_batch{batch}": 3 * batch / (time.perf_counter() - start)}


def validation_images(run_dir: Path, fold: int) -> tuple[list[Path], list[str]]:
    """The images fold `fold` of a run was validated on, and their classes (their folder names)."""
    try:
        fold_of = json.loads((run_dir / "folds.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{run_dir} has no readable folds.json: give a run directory of main.py") from None
    paths = [Path(path) for path, k in fold_of.items() if k == fold]
    return paths, [path.parent.name for path in paths]


def int8_agreement(float_model, int8_model, run_dir: Path, batch: int) -> dict:
    """Float and INT8 on fold 0's validation images: how often they agree, and each one's accuracy."""
    paths, labels = validation_images(run_dir, 0)
    transform, classes = float_model.spec.eval_transform(), list(float_model.spec.classes)
    predicted = {"float": [], "int8": []}
    for start in range(0, len(paths), batch):
        images = [read_image(str(path), resize_size(float_model.spec.img_size)) for path in paths[start:start + batch]]
        if any(image is None for image in images):
            raise UserError(f"an image of {run_dir}/folds.json can no longer be read: is the data still there?")
        inputs = np.stack([transform(image) for image in images]).astype("float32")
        for name, model in (("float", float_model), ("int8", int8_model)):
            predicted[name].extend(classes[i] for i in model.logits(inputs).argmax(axis=1))
    truth = np.array(labels)
    float_pred, int8_pred = np.array(predicted["float"]), np.array(predicted["int8"])
    return {"images": len(paths), "agreement": float(np.mean(float_pred == int8_pred)),
            "float_accuracy": float(np.mean(float_pred == truth)), "int8_accuracy": float(np.mean(int8_pred == truth))}


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", help="a run or fold directory; its first fold is measured")
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = None
        if args.model_path:
            weights = find_weights(args.model_path, "models_saved", None)[0]
            if (Path(args.model_path) / "folds.json").is_file():
                run_dir = Path(args.model_path)
                weights = find_weights(args.model_path, "models_saved", fold=0)[0]
        else:
            model = build_student(args.student, 1000)
            weights = Path(tmp) / "fold0" / "best.pdparams"
            spec = ModelSpec(tuple(str(i) for i in range(1000)), args.student, 1.0, "none", "all", args.img_size,
                             "random_resized", (0.5,) * 3, (0.5,) * 3)
            save_checkpoint(weights.parent, model.state_dict(), spec, {})
        dynamic = DynamicModel(weights)
        with_onnx = all(importlib.util.find_spec(name) for name in ("paddle2onnx", "onnxruntime"))
        img_size = dynamic.spec.img_size
        calibration = None
        if with_onnx:
            data_dir = run_data_dir(weights)
            calibration = (calibration_images(dynamic.spec, data_dir, CALIBRATION_IMAGES) if run_dir and data_dir else
                           np.random.default_rng(2).normal(size=(32, 3, img_size, img_size)).astype("float32"))
        exported_dir = export_student(weights, Path(tmp) / "exported", onnx=with_onnx, calibration=calibration)
        backends = {"dynamic_graph": dynamic, "paddle_inference_onednn": ExportedModel(exported_dir, use_gpu=False)}
        if with_onnx:
            backends["onnxruntime"] = OnnxModel(exported_dir)
            backends["onnxruntime_int8"] = OnnxModel(exported_dir, int8=True)
        results = {"model": f"{dynamic.spec.student} ({dynamic.spec.attention}), {img_size} px"}
        results.update({name: measure(model, img_size, args.repeats, args.batch) for name, model in backends.items()})
        if with_onnx and run_dir:
            results["int8_vs_float"] = int8_agreement(backends["onnxruntime"], backends["onnxruntime_int8"], run_dir,
                                                      args.batch)
    slow = results["dynamic_graph"]
    results["speed_up_over_dynamic_graph"] = {
        name: {key: (slow[key] / results[name][key] if key.startswith("latency") else results[name][key] / slow[key])
               for key in slow}
        for name in backends if name != "dynamic_graph"
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{results['model']}; the speed-ups are over the dynamic graph")
    print(f"{'backend':<26} {'batch-1 latency (ms)':>21} {f'batch-{args.batch} img/s':>14} {'speed-up':>18}")
    for name in backends:
        latency, throughput = results[name].values()
        ratios = results["speed_up_over_dynamic_graph"].get(name)
        speed_up = "{:.1f}x / {:.1f}x".format(*ratios.values()) if ratios else "1x"
        print(f"{name:<26} {latency:>21.1f} {throughput:>14.1f} {speed_up:>18}")
    if "onnxruntime_int8" in results:
        int8, onnx = results["onnxruntime_int8"], results["onnxruntime"]
        print("INT8 over float ONNX Runtime: {:.2f}x batch-1 latency, {:.2f}x throughput".format(
            onnx["latency_ms_batch1"] / int8["latency_ms_batch1"],
            int8[f"img_per_s_batch{args.batch}"] / onnx[f"img_per_s_batch{args.batch}"]))
    if "int8_vs_float" in results:
        check = results["int8_vs_float"]
        print(f"on fold 0's {check['images']} validation images: INT8 agrees with float on "
              f"{100 * check['agreement']:.1f}%; accuracy {100 * check['float_accuracy']:.1f}% float, "
              f"{100 * check['int8_accuracy']:.1f}% INT8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
