"""A PyTorch reference for the quality benchmark: torchvision's MobileNetV3-Small, trained from
scratch with the same recipe on the same folds as this project's CE-only student, so that the
project's accuracy is compared with a reference implementation, not only with itself.

    python benchmarks/peer_quality.py --data_dir ../shared/datasets/trashnet-112 \\
        --torch_python /tmp/torch-venv/bin/python [--seed 42] [--folds 3] [--epochs 50] [--jobs 2]

The folds are this project's (utils/data/splits.py, after its duplicate check), written to a
file that the PyTorch side reads; each fold trains in a process of its own with one thread
(PyTorch is never a requirement of this project: --torch_python names a separate
virtualenv with torch and torchvision). The recipe: random-resized crops of at least
--crop_scale_min of the image, horizontal flips, ImageNet normalisation, AdamW without
weight decay on norm and bias parameters, linear warmup then cosine decay per step, label
smoothing; evaluation resizes the short side to img_size / 0.875 and crops the centre, as the
project does. Prints per fold the best epoch's and the last epoch's validation accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_split(args: argparse.Namespace, path: Path) -> int:
    """This project's samples and folds (what its runs train on), as JSON for the PyTorch side."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from utils.data.folders import drop_duplicates, scan_dataset
    from utils.data.splits import make_folds
    from utils.runtime.files import file_digest

    data_dir = Path(args.data_dir)
    index = scan_dataset(data_dir)
    index, _ = drop_duplicates(index, {s.path: file_digest(s.path) for s in index.samples}, data_dir)
    labels = [s.label for s in index.samples]
    fold_of = {int(i): fold.fold for fold in make_folds(np.array(labels), args.folds, args.seed)
               for i in fold.val_indices}
    path.write_text(json.dumps({"classes": index.classes,
                                "samples": [[s.path, s.label, fold_of[i]] for i, s in enumerate(index.samples)]}))
    return len(index.samples)


def train_fold(args: argparse.Namespace) -> dict:
    """One fold in PyTorch (this function runs under --torch_python, without Paddle)."""
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision
    from torchvision.transforms import v2 as T

    torch.set_num_threads(1)
    torch.manual_seed(args.seed + args.fold)
    split = json.loads(Path(args.split).read_text())
    resize = round(args.img_size / 0.875)

    def decode(path: str) -> torch.Tensor:
        image = cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        if min(height, width) > resize:  # as the project keeps images in memory: short side at most `resize`
            scale = resize / min(height, width)
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous()

    rows = split["samples"]
    train = [(decode(p), label) for p, label, fold in rows if fold != args.fold]
    val = [(decode(p), label) for p, label, fold in rows if fold == args.fold]
    normalize = T.Compose([T.ToDtype(torch.float32, scale=True),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    augment = T.Compose([T.RandomResizedCrop(args.img_size, scale=(args.crop_scale_min, 1.0), antialias=True),
                         T.RandomHorizontalFlip(), normalize])
    evaluate = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(args.img_size), normalize])
    model = torchvision.models.mobilenet_v3_small(num_classes=len(split["classes"]))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    warmup, total = args.warmup_epochs * steps_per_epoch, args.epochs * steps_per_epoch

    def rate(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    accuracies, start = [], time.time()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train)).tolist()
        for at in range(0, len(order), args.batch_size):
            chosen = [train[k] for k in order[at:at + args.batch_size]]
            images = torch.stack([augment(image) for image, _ in chosen])
            labels = torch.tensor([label for _, label in chosen])
            loss = F.cross_entropy(model(images), labels, label_smoothing=args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for at in range(0, len(val), 64):
                chosen = val[at:at + 64]
                images = torch.stack([evaluate(image) for image, _ in chosen])
                correct += int((model(images).argmax(1) == torch.tensor([label for _, label in chosen])).sum())
        accuracies.append(correct / len(val))
    return {"fold": args.fold, "best": max(accuracies), "last": accuracies[-1], "best_epoch":
            int(np.argmax(accuracies)) + 1, "minutes": round((time.time() - start) / 60, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir")
    parser.add_argument("--torch_python")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_epochs", type=int, default=3)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--crop_scale_min", type=float, default=0.25)
    parser.add_argument("--split", help=argparse.SUPPRESS)  # the worker's: the folds file
    parser.add_argument("--fold", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.split:  # a worker, under --torch_python
        print(json.dumps(train_fold(args)))
        return 0
    if not args.data_dir or not args.torch_python:
        parser.error("--data_dir and --torch_python are needed")
    recipe = [f"--{key}={value}" for key, value in vars(args).items()
              if key not in ("data_dir", "torch_python", "jobs", "split", "fold") and value is not None]
    with tempfile.TemporaryDirectory() as scratch:
        split = Path(scratch) / "split.json"
        count = write_split(args, split)
        print(f"{count} images, {args.folds} folds (seed {args.seed}), torchvision MobileNetV3-Small, "
              f"{args.epochs} epochs at {args.img_size} px", flush=True)

        def run(fold: int) -> dict:
            done = subprocess.run([args.torch_python, __file__, *recipe, f"--split={split}", f"--fold={fold}"],
                                  capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, check=False)
            if done.returncode != 0:
                raise SystemExit(f"fold {fold} failed: {done.stderr.strip().splitlines()[-1:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run, range(args.folds)))
    for result in results:
        print(f"fold {result['fold']}: best epoch {100 * result['best']:.1f}% (epoch {result['best_epoch']}), "
              f"last {100 * result['last']:.1f}%, {result['minutes']} min")
    best = [100 * r["best"] for r in results]
    print(f"mean {statistics.mean(best):.1f} ± {statistics.pstdev(best):.1f} (best epoch); last "
          f"{statistics.mean(100 * r['last'] for r in results):.1f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
