"""Parameters, FLOPs, size and CPU speed of students and the teacher.

    python -m utils.reporting.complexity --student mobilenet_v3_large --attention eca --img_size 224 --num_classes 101
    python -m utils.reporting.complexity --all [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

from utils.runtime.process import prepare_process

prepare_process()  # must run before anything imports Paddle

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402

from models.attention import ATTENTIONS  # noqa: E402
from models.student import STUDENTS, build_student  # noqa: E402
from models.teacher import build_teacher  # noqa: E402
from utils.runtime.config import img_size_problem  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402


@dataclasses.dataclass
class Complexity:
    model: str
    attention: str
    params_m: float
    flops_g: float
    size_mb: float
    latency_ms: float
    throughput: float


def count_parameters(model: nn.Layer) -> int:
    """Learnable parameters, as published counts give them (BatchNorm running statistics excluded)."""
    return sum(int(np.prod(p.shape)) for p in model.parameters() if p.trainable)


def count_flops(model: nn.Layer, img_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1, the unit in which these
    networks' FLOPs are published (MobileNetV2 0.30G, ResNet50 4.1G at 224 px).

    Counted by hooks on the layers that carry the arithmetic (convolutions and
    linear layers). paddle.flops does the same but fails under NumPy 2.
    """
    total = [0]

    def conv_hook(layer, inputs, output):
        kernel = int(np.prod(layer.weight.shape[1:]))  # in_channels / groups * kernel area
        total[0] += kernel * int(np.prod(output.shape[1:]))

    def linear_hook(layer, inputs, output):
        total[0] += int(np.prod(layer.weight.shape))

    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, (nn.Conv1D, nn.Conv2D)):
            hooks.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(linear_hook))
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 3, img_size, img_size]))
    for hook in hooks:
        hook.remove()
    return total[0]


@paddle.no_grad()
def measure_speed(model: nn.Layer, img_size: int, repeats: int = 10, batch: int = 32) -> tuple[float, float]:
    """Median batch-1 latency (ms) after warm-up, and batch throughput (images/s), dynamic graph, eval mode."""
    model.eval()
    one = paddle.randn([1, 3, img_size, img_size])
    for _ in range(3):
        model(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(one).numpy()
        times.append(time.perf_counter() - start)
    many = paddle.randn([batch, 3, img_size, img_size])
    model(many)
    start = time.perf_counter()
    model(many).numpy()
    return 1000 * statistics.median(times), batch / (time.perf_counter() - start)


def describe(model: nn.Layer, name: str, attention: str, img_size: int, speed: bool) -> Complexity:
    params = count_parameters(model)
    latency, throughput = measure_speed(model, img_size) if speed else (float("nan"), float("nan"))
    return Complexity(name, attention, params / 1e6, count_flops(model, img_size) / 1e9, params * 4 / 2**20,
                      latency, throughput)


def print_table(rows: list[Complexity]) -> None:
    print(f"{'model':<20} {'attention':<9} {'params (M)':>10} {'FLOPs (G)':>9} {'size (MB)':>9} "
          f"{'latency (ms)':>12} {'img/s':>7}")
    for r in rows:
        print(f"{r.model:<20} {r.attention:<9} {r.params_m:>10.2f} {r.flops_g:>9.3f} {r.size_mb:>9.2f} "
              f"{r.latency_ms:>12.1f} {r.throughput:>7.1f}")


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--attention", default="none")
    parser.add_argument("--attention_blocks", default="all")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--all", action="store_true", help="every student x attention, plus the ResNet50 teacher")
    parser.add_argument("--no_speed", action="store_true", help="skip the latency and throughput measurements")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if img_size_problem(args.img_size):
        raise UserError(f"--img_size {img_size_problem(args.img_size)}")
    if args.num_classes < 2:
        raise UserError("--num_classes must be at least 2")
    speed = not args.no_speed
    if args.all:
        combos = [(s, a) for s in STUDENTS for a in ["none", *ATTENTIONS]]
    else:
        combos = [(args.student, args.attention)]
    rows = [describe(build_student(s, args.num_classes, attention=a, attention_blocks=args.attention_blocks),
                     s, a, args.img_size, speed) for s, a in combos]
    if args.all:
        teacher, _ = build_teacher(args.num_classes, "none")
        rows.append(describe(teacher, "resnet50 (teacher)", "-", args.img_size, speed))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
