"""Training speed, measured side by side in one run, in images per second, with
their ratios.

Part `kernels`: CE-only student training with Paddle's convolutions and with
the project's fast ones (kernels/cpu_kernels.py: the compiled depthwise
convolution and MobileNetV3 gates, convolutions through oneDNN, and small maps as
one product per batch), for MobileNetV3-Small and MobileNetV2 at 64 and 112 px,
alternated and each the best of two rounds; and the ResNet50 teacher's training
at the same sizes, with Paddle's convolutions and with the project's.

Part `distillation` (--student at --img_size, as main.py trains it): the data
loader alone; a CE-only student epoch; distillation with the frozen teacher in
the loop; distillation replayed from the teacher view cache (and the time to
label the views); in a child process with Paddle's defaults (its depthwise
kernel, no MKL_DEBUG_CPU_TYPE, two OpenMP threads, glibc's memory settings),
the CE-only epoch again, to show what the tool's settings gain; and one tuned
CE-only child process per core at once, as main.py trains folds, for the
machine's total throughput.

Part `data_parallel` (--student at --img_size, batch --batch_size per process): the
machine's CE-only training throughput with one process, with two processes training
one model data-parallel (paddle.distributed.launch, gloo on the CPU, gradients
averaged every step), and with two independent processes side by side (two folds
at once, as main.py trains them).

    python benchmarks/train_speed.py --data_dir ../shared/datasets/trashnet-112 \
        [--parts kernels,distillation,data_parallel] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# A child process measures one CE-only epoch with the tool's settings, or with Paddle's
# defaults, for which the tool's process set-up must not run.
CHILD, DEFAULTS = "--child", "paddle_defaults"
if f"{CHILD}={DEFAULTS}" not in sys.argv:
    from utils.runtime.process import prepare_process

    prepare_process()  # must run before anything imports Paddle

import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from kernels.cpu_kernels import use_fast_cpu_kernels  # noqa: E402
from models.student import build_student, input_normalization  # noqa: E402
from models.teacher import build_teacher, freeze_teacher  # noqa: E402
from utils.data.dataset import ImageDataset, make_loader  # noqa: E402
from utils.data.folders import scan_dataset  # noqa: E402
from utils.data.images import load_images  # noqa: E402
from utils.data.transforms import build_train_transform, resize_size  # noqa: E402
from utils.distill.methods import create_method  # noqa: E402
from utils.distill.signal import LiveTeacher, StoredViews  # noqa: E402
from utils.distill.view_cache import label_views  # noqa: E402
from utils.engine.loops import TrainingSettings, grad_scaler, train_one_epoch  # noqa: E402
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss  # noqa: E402
from utils.engine.optimization import build_optimizer, warmup_cosine  # noqa: E402
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml  # noqa: E402
from utils.runtime.distributed import init_distributed, rank, world_size  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402
from utils.runtime.process import cpu_count  # noqa: E402

KERNEL_SETTINGS = [("mobilenet_v3_small", 64), ("mobilenet_v2", 112), ("mobilenet_v3_small", 112),
                   ("mobilenet_v2", 64)]
PARTS = ("kernels", "distillation", "data_parallel")


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class Bench:
    """Decoded images and the loaders and models a measurement needs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        index = scan_dataset(Path(args.data_dir))
        self.num_classes = len(index.classes)
        rng = np.random.default_rng(0)
        picked = [index.samples[i] for i in rng.permutation(len(index.samples))[:args.images]]
        largest = max([args.img_size] + [size for _, size in KERNEL_SETTINGS])
        self.images, kept, _ = load_images(picked, resize_size(largest))
        self.labels = [s.label for s in kept]

    def config(self, img_size: int, student: str):
        return build_config({**read_yaml(DEFAULT_CONFIG), "data_dir": self.args.data_dir, "img_size": img_size,
                             "batch_size": self.args.batch_size, "student": student})

    def loader(self, cfg, count: int | None = None, views: int | None = None):
        transform = build_train_transform(cfg.augment, cfg.data.img_size, input_normalization(cfg.student.student))
        dataset = ImageDataset(self.images[:count], self.labels[:count], transform, (cfg.data.seed, 0, 1), views)
        return make_loader(dataset, cfg.data.batch_size, train=True, num_workers=cfg.runtime.num_workers)

    def epoch(self, model, cfg, loader, loss_fn=None, teacher=None, trainer=None):
        """One training epoch of `model` over `loader`, as a function to time; `trainer`, when
        given, is its paddle.DataParallel wrapper (made once per model)."""
        schedule = warmup_cosine(cfg.optim.lr, 1, 0, len(loader))
        optimizer = build_optimizer(model, schedule, cfg.optim.weight_decay)
        settings = TrainingSettings(cfg.optim.lr, 1, 0, cfg.optim.weight_decay, cfg.augment.mixup_alpha, False, None)
        return lambda: train_one_epoch(model, teacher, loader, optimizer, schedule,
                                       loss_fn or CrossEntropyOnly(HardLabelLoss()), settings,
                                       np.random.default_rng(0), grad_scaler(False), 1, desc="benchmark",
                                       trainer=trainer)

    def rate(self, model, cfg, loss_fn=None, teacher=None, loader=None) -> float:
        """img/s of one epoch, after a few untimed steps (a model's first steps pay one-off costs)."""
        loader = loader or self.loader(cfg)
        self.epoch(model, cfg, self.loader(cfg, count=3 * cfg.data.batch_size), loss_fn, teacher)()
        return len(loader) * cfg.data.batch_size / seconds(self.epoch(model, cfg, loader, loss_fn, teacher))

    def student(self, cfg, fast: bool):
        model = build_student(cfg.student.student, self.num_classes, "none")
        if fast and use_fast_cpu_kernels(model)["depthwise"] == 0:
            raise UserError("the fast depthwise convolution is not available on this machine")
        return model

    def teacher(self, fast: bool):
        model, _ = build_teacher(self.num_classes, "none")
        if fast:
            use_fast_cpu_kernels(model)
        return model


def measure_kernels(bench: Bench) -> dict:
    rows = []
    for student, size in KERNEL_SETTINGS:
        cfg = bench.config(size, student)
        rates = {"paddle": 0.0, "fast": 0.0}
        for _ in range(2):
            for kernel in rates:
                rates[kernel] = max(rates[kernel], bench.rate(bench.student(cfg, kernel == "fast"), cfg))
        rows.append({"model": student, "img_size": size, "paddle_img_per_s": rates["paddle"],
                     "fast_img_per_s": rates["fast"], "speedup": rates["fast"] / rates["paddle"]})
        print(f"{student:<20} {size:>4} px  Paddle's kernel {rates['paddle']:>7.1f} img/s  fast "
              f"{rates['fast']:>7.1f} img/s  {rates['fast'] / rates['paddle']:.2f}x", file=sys.stderr, flush=True)
    for size in sorted({size for _, size in KERNEL_SETTINGS}):
        cfg = bench.config(size, "mobilenet_v2")
        rates = {kernel: bench.rate(bench.teacher(kernel == "fast"), cfg) for kernel in ("paddle", "fast")}
        rows.append({"model": "resnet50 (teacher)", "img_size": size, "paddle_img_per_s": rates["paddle"],
                     "fast_img_per_s": rates["fast"], "speedup": rates["fast"] / rates["paddle"]})
    return {"rows": rows}


def ce_only_children(count: int, settings: str, env: dict[str, str], data_parallel: bool = False) -> list[float]:
    """img/s of `count` CE-only epochs run at once, one child process each (or one data-parallel
    job of `count` ranks). The children set up and warm up first, then start measuring
    together, at a time given to them; each writes its rate to a file of its own."""
    start_at = time.time() + 60
    with tempfile.TemporaryDirectory() as tmp:
        child_args = [__file__, *sys.argv[1:], f"{CHILD}={settings}", "--start_at", str(start_at),
                      "--rate_file", str(Path(tmp) / "rate")]
        if data_parallel:
            launcher = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(count),
                        "--log_dir", str(Path(tmp) / "launch_logs")]
            children = [subprocess.Popen(launcher + child_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, env={k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"})]
        else:
            children = [subprocess.Popen([sys.executable, *child_args, "--child_index", str(i)],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                        for i in range(count)]
        for child in children:
            output = child.communicate()[0]
            if child.returncode != 0:
                raise RuntimeError(f"a benchmark child process failed: {output.strip().splitlines()[-1:]}")
        return [float(path.read_text()) for path in sorted(Path(tmp).glob("rate.*"))]


def measure_data_parallel(bench: Bench) -> dict:
    env = dict(os.environ)
    [one] = ce_only_children(1, "tuned", env)
    data_parallel = sum(ce_only_children(2, "tuned", env, data_parallel=True))
    side_by_side = sum(ce_only_children(2, "tuned", env))
    cfg = bench.config(bench.args.img_size, bench.args.student)
    setting = f"{cfg.student.student}, {cfg.data.img_size} px, CE-only, batch {cfg.data.batch_size} per process"
    return {"setting": setting,
            "img_per_s": {"one_process": one, "two_processes_data_parallel": data_parallel,
                          "two_processes_side_by_side": side_by_side},
            "data_parallel_vs_one": data_parallel / one, "side_by_side_vs_one": side_by_side / one}


def measure_distillation(bench: Bench) -> dict:
    args = bench.args
    cfg = bench.config(args.img_size, args.student)
    loader = bench.loader(cfg, views=args.views)
    seen = len(loader) * cfg.data.batch_size
    default_env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    [default_rate] = ce_only_children(1, DEFAULTS, {**default_env, "OMP_NUM_THREADS": "2"})
    side_by_side = ce_only_children(cpu_count(), "tuned", dict(os.environ))
    teacher, _ = build_teacher(bench.num_classes, "none")
    freeze_teacher(teacher)
    kd_loss = create_method(cfg.replace(kd="kl").distill, HardLabelLoss(), cfg.optim.epochs)
    start = time.perf_counter()
    stored = label_views(teacher, loader.dataset, args.views, cfg.data.img_size, "cpu")
    labelling_seconds = time.perf_counter() - start
    rates = {
        "loader_only": seen / seconds(lambda: [None for _ in loader]),
        "ce_only_student": bench.rate(bench.student(cfg, True), cfg, loader=loader),
        "distillation_teacher_in_loop": bench.rate(bench.student(cfg, True), cfg, kd_loss, LiveTeacher(teacher),
                                                   loader),
        "distillation_view_cache": bench.rate(bench.student(cfg, True), cfg, kd_loss,
                                              StoredViews(stored, kd_loss.temperature_at), loader),
        "ce_only_student_paddle_defaults": default_rate,
        f"ce_only_students_{len(side_by_side)}_processes_at_once_total": sum(side_by_side),
    }
    return {
        "setting": f"{cfg.student.student}, {cfg.data.img_size} px, batch {cfg.data.batch_size}, "
                   f"{seen} images per measurement",
        "img_per_s": rates,
        "view_cache_labelling": {"views": args.views, "images": len(loader.dataset),
                                 "seconds": round(labelling_seconds, 1),
                                 "img_per_s": args.views * len(loader.dataset) / labelling_seconds},
        "time_ratio_teacher_in_loop_vs_ce": rates["ce_only_student"] / rates["distillation_teacher_in_loop"],
        "time_ratio_view_cache_vs_ce": rates["ce_only_student"] / rates["distillation_view_cache"],
        "ce_speedup_vs_paddle_defaults": rates["ce_only_student"] / default_rate,
        "ce_machine_throughput_vs_paddle_defaults": sum(side_by_side) / default_rate,
        "loader_vs_ce_speed": rates["loader_only"] / rates["ce_only_student"],
    }


def print_kernels(result: dict) -> None:
    print("| model | px | Paddle's depthwise kernel | fast kernel | speed-up |")
    print("|---|---|---|---|---|")
    for row in result["rows"]:
        fast = f"{row['fast_img_per_s']:.1f} img/s" if row["fast_img_per_s"] else "-"
        speedup = f"**{row['speedup']:.2f}x**" if row["speedup"] else "-"
        print(f"| {row['model']} | {row['img_size']} | {row['paddle_img_per_s']:.1f} img/s | {fast} | {speedup} |")


def print_distillation(result: dict) -> None:
    print(result["setting"])
    for name, rate in result["img_per_s"].items():
        print(f"{name:<40} {rate:>8.1f} img/s")
    labelling = result["view_cache_labelling"]
    print(f"labelling {labelling['views']} views of {labelling['images']} images: {labelling['seconds']}s "
          f"({labelling['img_per_s']:.1f} img/s)")
    print("per epoch, distillation with the teacher in the loop costs "
          f"{result['time_ratio_teacher_in_loop_vs_ce']:.2f}x CE-only training, from the view cache "
          f"{result['time_ratio_view_cache_vs_ce']:.2f}x; CE-only training runs "
          f"{result['ce_speedup_vs_paddle_defaults']:.2f}x Paddle's defaults in one process, and "
          f"{result['ce_machine_throughput_vs_paddle_defaults']:.2f}x in total with one process per core; the "
          f"loader alone {result['loader_vs_ce_speed']:.1f}x CE-only training")


def print_data_parallel(result: dict) -> None:
    print(result["setting"])
    for name, rate in result["img_per_s"].items():
        print(f"{name:<40} {rate:>8.1f} img/s in total")
    print(f"two data-parallel processes train {result['data_parallel_vs_one']:.2f}x as many images per second as one "
          f"process; two independent folds side by side {result['side_by_side_vs_one']:.2f}x")


def child_rate(bench: Bench, settings: str, start_at: float) -> float:
    init_distributed()
    cfg = bench.config(bench.args.img_size, bench.args.student)
    model = bench.student(cfg, fast=settings != DEFAULTS)
    trainer = paddle.DataParallel(model) if world_size() > 1 else model
    loader = bench.loader(cfg)
    bench.epoch(model, cfg, bench.loader(cfg, count=3 * cfg.data.batch_size), trainer=trainer)()
    run = bench.epoch(model, cfg, loader, trainer=trainer)
    time.sleep(max(0.0, start_at - time.time()))
    return len(loader) * cfg.data.batch_size / seconds(run)


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--parts", default="kernels,distillation", help=", ".join(PARTS) + ", comma-separated")
    parser.add_argument("--img_size", type=int, default=112, help="for the distillation part")
    parser.add_argument("--student", default="mobilenet_v2", help="for the distillation part")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="images per measurement")
    parser.add_argument("--views", type=int, default=2, help="teacher views labelled for the cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(CHILD, choices=(DEFAULTS, "tuned"), help=argparse.SUPPRESS)
    parser.add_argument("--start_at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rate_file", help=argparse.SUPPRESS)
    parser.add_argument("--child_index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not parts or set(parts) - set(PARTS):
        raise UserError(f"--parts takes {', '.join(PARTS)}, comma-separated")

    bench = Bench(args)
    if args.child:
        rate = child_rate(bench, args.child, args.start_at)
        Path(f"{args.rate_file}.{args.child_index + rank()}").write_text(json.dumps(rate))
        return 0
    results = {}
    if "kernels" in parts:
        results["kernels"] = measure_kernels(bench)
    if "distillation" in parts:
        results["distillation"] = measure_distillation(bench)
    if "data_parallel" in parts:
        results["data_parallel"] = measure_data_parallel(bench)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if "kernels" in results:
        print_kernels(results["kernels"])
    if "distillation" in results:
        print_distillation(results["distillation"])
    if "data_parallel" in results:
        print_data_parallel(results["data_parallel"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
