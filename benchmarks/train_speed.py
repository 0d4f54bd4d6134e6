"""Training speed, measured side by side in one run, in images per second, with
their ratios: the data loader alone; a CE-only student epoch; distillation with
the frozen teacher in the loop; distillation replayed from the teacher view
cache (and the time to label the views); in a child process with Paddle's
default CPU settings (no MKL_DEBUG_CPU_TYPE, two OpenMP threads), the CE-only
epoch again, to show what the tuned settings gain; and two tuned CE-only child
processes at once, one per core, as main.py trains folds, for the machine's
total throughput.

    python benchmarks/train_speed.py --data_dir ../shared/datasets/trashnet-112 --img_size 112 [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# A child process measures one CE-only epoch in the CPU settings its environment gives it.
CE_ONLY_CHILD = "--ce_only_child"
if CE_ONLY_CHILD not in sys.argv:
    from utils.runtime import prepare_process

    prepare_process()  # must run before anything imports Paddle

import os  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402

from models.student import build_student  # noqa: E402
from models.teacher import build_teacher, freeze_teacher  # noqa: E402
from utils.config import DEFAULT_CONFIG, _read_yaml, build_config  # noqa: E402
from utils.errors import reports_user_errors  # noqa: E402
from utils.data import ImageDataset, load_images, make_loader, scan_dataset  # noqa: E402
from utils.losses import CrossEntropyLoss, KLDistillationLoss  # noqa: E402
from utils.optimization import build_optimizer, warmup_cosine  # noqa: E402
from utils.runtime import cpu_count  # noqa: E402
from utils.train import LiveTeacher, grad_scaler, train_one_epoch  # noqa: E402
from utils.view_cache import CachedTeacher, label_views  # noqa: E402
from utils.transforms import build_train_transform, resize_size  # noqa: E402


def images_per_second(run, images: int) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def ce_only_children(count: int, env: dict[str, str]) -> list[float]:
    """img/s of `count` CE-only epochs run at once, one child process each. The children
    set up and warm up first, then start measuring together, at a time given to them."""
    start_at = time.time() + 120
    command = [sys.executable, __file__, *sys.argv[1:], CE_ONLY_CHILD, "--start_at", str(start_at)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(count)]
    outputs = [child.communicate() for child in children]
    for child, (_, err) in zip(children, outputs):
        if child.returncode != 0:
            raise RuntimeError(f"a benchmark child process failed: {err.strip().splitlines()[-1:]}")
    return [float(out.strip().splitlines()[-1]) for out, _ in outputs]


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="images per measurement")
    parser.add_argument("--views", type=int, default=2, help="teacher views labelled for the cache")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(CE_ONLY_CHILD, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start_at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    cfg = build_config({**_read_yaml(DEFAULT_CONFIG), "data_dir": args.data_dir, "img_size": args.img_size,
                        "batch_size": args.batch_size, "student": args.student})
    index = scan_dataset(Path(args.data_dir))
    rng = np.random.default_rng(0)
    picked = [index.samples[i] for i in rng.permutation(len(index.samples))[:args.images]]
    images, kept, _ = load_images(picked, resize_size(cfg.img_size))
    dataset = ImageDataset(images, [s.label for s in kept], build_train_transform(cfg), (cfg.seed, 0, 1), args.views)
    loader = make_loader(dataset, cfg.batch_size, train=True, num_workers=cfg.num_workers)
    seen = len(loader) * cfg.batch_size
    num_classes = len(index.classes)

    def student_epoch(loss_fn, teacher):
        model = build_student(cfg.student, num_classes, "none")
        schedule = warmup_cosine(cfg.lr, 1, 0, len(loader))
        optimizer = build_optimizer(model, schedule, cfg.weight_decay)
        return lambda: train_one_epoch(model, teacher, loader, optimizer, schedule, loss_fn, cfg.mixup_alpha,
                                       np.random.default_rng(0), grad_scaler(False), 1, desc="benchmark")

    # Every measurement follows an untimed epoch: a process's first epoch pays one-off costs.
    student_epoch(CrossEntropyLoss(), None)()
    if args.ce_only_child:
        epoch = student_epoch(CrossEntropyLoss(), None)
        time.sleep(max(0.0, args.start_at - time.time()))
        print(json.dumps(images_per_second(epoch, seen)))
        return 0
    default_env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    [default_rate] = ce_only_children(1, {**default_env, "OMP_NUM_THREADS": "2"})
    side_by_side = ce_only_children(cpu_count(), dict(os.environ))
    teacher, _ = build_teacher(num_classes, "none")
    freeze_teacher(teacher)
    kd_loss = KLDistillationLoss(cfg.alpha, cfg.temperature)
    start = time.perf_counter()
    stored = label_views(teacher, dataset, args.views, cfg.img_size, "cpu")
    labelling_seconds = time.perf_counter() - start
    rates = {
        "loader_only": images_per_second(lambda: [None for _ in loader], seen),
        "ce_only_student": images_per_second(student_epoch(CrossEntropyLoss(), None), seen),
        "distillation_teacher_in_loop": images_per_second(student_epoch(kd_loss, LiveTeacher(teacher)), seen),
        "distillation_view_cache": images_per_second(
            student_epoch(kd_loss, CachedTeacher(stored, cfg.temperature)), seen),
        "ce_only_student_paddle_default_settings": default_rate,
        f"ce_only_students_{len(side_by_side)}_processes_at_once_total": sum(side_by_side),
    }
    result = {
        "setting": f"{cfg.student}, {cfg.img_size} px, batch {cfg.batch_size}, {seen} images per measurement",
        "img_per_s": rates,
        "view_cache_labelling": {"views": args.views, "images": len(dataset), "seconds": round(labelling_seconds, 1),
                                 "img_per_s": args.views * len(dataset) / labelling_seconds},
        "time_ratio_teacher_in_loop_vs_ce": rates["ce_only_student"] / rates["distillation_teacher_in_loop"],
        "time_ratio_view_cache_vs_ce": rates["ce_only_student"] / rates["distillation_view_cache"],
        "ce_speedup_vs_paddle_defaults": rates["ce_only_student"] / rates["ce_only_student_paddle_default_settings"],
        "ce_machine_throughput_vs_paddle_defaults": sum(side_by_side) / default_rate,
        "loader_vs_ce_speed": rates["loader_only"] / rates["ce_only_student"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(result["setting"])
    for name, rate in rates.items():
        print(f"{name:<40} {rate:>8.1f} img/s")
    labelling = result["view_cache_labelling"]
    print(f"labelling {labelling['views']} views of {labelling['images']} images: {labelling['seconds']}s "
          f"({labelling['img_per_s']:.1f} img/s)")
    print("per epoch, distillation with the teacher in the loop costs "
          f"{result['time_ratio_teacher_in_loop_vs_ce']:.2f}x "
          f"CE-only training, from the view cache {result['time_ratio_view_cache_vs_ce']:.2f}x; CE-only training runs "
          f"{result['ce_speedup_vs_paddle_defaults']:.2f}x Paddle's default settings in one process, and "
          f"{result['ce_machine_throughput_vs_paddle_defaults']:.2f}x in total with one process per core; the "
          f"loader alone {result['loader_vs_ce_speed']:.1f}x CE-only training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
