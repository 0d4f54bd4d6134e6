"""Training speed, measured side by side in one process: the data loader alone,
a CE-only student step, and a distillation step (frozen teacher forward +
student step), in images per second, with their ratios.

    python benchmarks/train_speed.py --data_dir ../shared/datasets/trashnet-112 --img_size 112 [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime import prepare_process  # noqa: E402

prepare_process()  # must run before anything imports Paddle

import numpy as np  # noqa: E402

from models.student import build_student  # noqa: E402
from models.teacher import build_teacher, freeze_teacher  # noqa: E402
from utils.config import DEFAULT_CONFIG, _read_yaml, build_config  # noqa: E402
from utils.errors import reports_user_errors  # noqa: E402
from utils.data import ImageDataset, load_images, make_loader, scan_dataset  # noqa: E402
from utils.losses import CrossEntropyLoss, KLDistillationLoss  # noqa: E402
from utils.optimization import build_optimizer, warmup_cosine  # noqa: E402
from utils.train import grad_scaler, train_one_epoch  # noqa: E402
from utils.transforms import build_train_transform, resize_size  # noqa: E402


def images_per_second(run, images: int) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="images per measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = build_config({**_read_yaml(DEFAULT_CONFIG), "data_dir": args.data_dir, "img_size": args.img_size,
                        "batch_size": args.batch_size, "student": args.student})
    index = scan_dataset(Path(args.data_dir))
    rng = np.random.default_rng(0)
    picked = [index.samples[i] for i in rng.permutation(len(index.samples))[:args.images]]
    images, kept, _ = load_images(picked, resize_size(cfg.img_size))
    dataset = ImageDataset(images, [s.label for s in kept], build_train_transform(cfg))
    loader = make_loader(dataset, cfg.batch_size, train=True, num_workers=cfg.num_workers)
    seen = len(loader) * cfg.batch_size
    num_classes = len(index.classes)

    def student_epoch(loss_fn, teacher):
        model = build_student(cfg.student, num_classes, "none")
        schedule = warmup_cosine(cfg.lr, 1, 0, len(loader))
        optimizer = build_optimizer(model, schedule, cfg.weight_decay)
        return lambda: train_one_epoch(model, teacher, loader, optimizer, schedule, loss_fn, cfg.mixup_alpha,
                                       np.random.default_rng(0), grad_scaler(False), desc="benchmark")

    teacher, _ = build_teacher(num_classes, "none")
    freeze_teacher(teacher)
    rates = {
        "loader_only": images_per_second(lambda: [None for _ in loader], seen),
        "ce_only_student": images_per_second(student_epoch(CrossEntropyLoss(), None), seen),
        "distillation_teacher_in_loop": images_per_second(
            student_epoch(KLDistillationLoss(cfg.alpha, cfg.temperature), teacher), seen),
    }
    result = {
        "setting": f"{cfg.student}, {cfg.img_size} px, batch {cfg.batch_size}, {seen} images per measurement",
        "img_per_s": rates,
        "time_ratio_distillation_vs_ce": rates["ce_only_student"] / rates["distillation_teacher_in_loop"],
        "loader_vs_ce_speed": rates["loader_only"] / rates["ce_only_student"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(result["setting"])
    for name, rate in rates.items():
        print(f"{name:<30} {rate:>8.1f} img/s")
    print(f"distillation costs {result['time_ratio_distillation_vs_ce']:.2f}x the time of CE-only training; "
          f"the loader alone runs {result['loader_vs_ce_speed']:.1f}x faster than CE-only training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
