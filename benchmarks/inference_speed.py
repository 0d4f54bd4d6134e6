"""Inference speed: the dynamic graph against the exported model through Paddle
Inference (oneDNN) and, when paddle2onnx and onnxruntime are installed, through
ONNX Runtime, measured side by side in one process, with their ratios.

    python benchmarks/inference_speed.py [--model_path RUN_OR_FOLD] [--student mobilenet_v2 --img_size 224] [--json]

Without --model_path an untrained student of the given architecture is used:
speed does not depend on the weights.
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
from utils.deploy.checkpoint import save_checkpoint  # noqa: E402
from utils.deploy.export import export_student  # noqa: E402
from utils.deploy.inference import DynamicModel, ExportedModel, OnnxModel, find_weights  # noqa: E402
from utils.deploy.spec import ModelSpec  # noqa: E402
from utils.runtime.errors import reports_user_errors  # noqa: E402


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
        if args.model_path:
            weights = find_weights(args.model_path, "models_saved", None)[0]
        else:
            model = build_student(args.student, 1000)
            weights = Path(tmp) / "fold0" / "best.pdparams"
            spec = ModelSpec(tuple(str(i) for i in range(1000)), args.student, 1.0, "none", "all", args.img_size,
                             "random_resized", (0.5,) * 3, (0.5,) * 3)
            save_checkpoint(weights.parent, model.state_dict(), spec, {})
        dynamic = DynamicModel(weights)
        with_onnx = all(importlib.util.find_spec(name) for name in ("paddle2onnx", "onnxruntime"))
        exported_dir = export_student(weights, Path(tmp) / "exported", onnx=with_onnx)
        img_size = dynamic.spec.img_size
        backends = {"dynamic_graph": dynamic, "paddle_inference_onednn": ExportedModel(exported_dir, use_gpu=False)}
        if with_onnx:
            backends["onnxruntime"] = OnnxModel(exported_dir)
        results = {"model": f"{dynamic.spec.student} ({dynamic.spec.attention}), {img_size} px"}
        results.update({name: measure(model, img_size, args.repeats, args.batch) for name, model in backends.items()})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
