"""Does the run find mislabelled images? Flip the labels of a seeded share of the images
(each moved to another class's folder, in a copy of the data), train as usual, and compare
the run's label_issues.csv with the flipped images: precision (how many flagged images
were flipped) and recall (how many flipped images were flagged).

    python benchmarks/label_noise.py                       # the digits demo's settings
    python benchmarks/label_noise.py --data_dir ../shared/datasets/trashnet-112 --config configs/cpu.yaml

The copy and the run go under --work_dir (a scratch folder by default; the data are
never changed). Further main.py options go after --.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from utils.data.folders import has_class_folders, write_digits_demo  # noqa: E402
from utils.runtime.config import DEMO_CONFIG  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def noisy_copy(source: Path, target: Path, share: float, seed: int) -> dict[str, tuple[str, str]]:
    """Copy the class folders of `source` to `target`, moving a seeded `share` of the images
    to another (random) class; the moved images' new paths -> (true class, given class)."""
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = [(c, p) for c in classes for p in sorted((source / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    rng = np.random.default_rng(seed)
    flipped_at = set(rng.choice(len(images), size=round(share * len(images)), replace=False).tolist())
    flipped = {}
    for i, (label, path) in enumerate(images):
        given = label
        if i in flipped_at:
            given = classes[(classes.index(label) + rng.integers(1, len(classes))) % len(classes)]
        destination = target / given / f"{label}-{path.name}"  # the true class in the name keeps names apart
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        if given != label:
            flipped[str(destination)] = (label, given)
    return flipped


def score(ranked: list[str], flipped: set[str], recall_target: float = 0.7) -> dict:
    """Precision and recall of the flagged list (`ranked`, most suspect first), and the precision
    of its shortest head that finds `recall_target` of the flipped images (None if it never does)."""
    found = np.cumsum([path in flipped for path in ranked])
    hits = int(found[-1]) if ranked else 0
    reached = np.flatnonzero(found >= recall_target * len(flipped)) if flipped else []
    head = int(reached[0]) + 1 if len(reached) else None
    return {"flagged": len(ranked), "flipped": len(flipped), "flagged_and_flipped": hits,
            "precision": hits / len(ranked) if ranked else None, "recall": hits / len(flipped) if flipped else None,
            f"precision_at_recall_{recall_target}": int(found[head - 1]) / head if head else None}


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="class folders (default: the digits demo's images)")
    parser.add_argument("--config", help=f"main.py's --config (default: {DEMO_CONFIG.name} for the digits)")
    parser.add_argument("--share", type=float, default=0.05, help="share of the images whose label is flipped")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work_dir", help="where the noisy copy and the run go (default: a scratch folder)")
    parser.add_argument("extra", nargs="*", help="further main.py options after --")
    args = parser.parse_args()
    if not 0 < args.share < 1:
        raise UserError(f"--share must be between 0 and 1, not {args.share}")
    source = Path(args.data_dir) if args.data_dir else ROOT / "data" / "digits"
    if args.data_dir is None and not has_class_folders(source):
        write_digits_demo(source)
    if not has_class_folders(source):
        raise UserError(f"{source} has no class folders")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="label-noise-"))
    noisy = work / "data"
    if noisy.exists():
        shutil.rmtree(noisy)
    flipped = noisy_copy(source, noisy, args.share, args.seed)
    config = args.config or str(DEMO_CONFIG)
    command = [sys.executable, str(ROOT / "main.py"), "--data_dir", str(noisy), "--config", config,
               "--seed", str(args.seed), "--output_dir", str(work / "models_saved"), "--log_dir", str(work / "logs"),
               "--run_name", "noisy", "--final_model", "false", "--quiet", *args.extra]
    start = time.perf_counter()
    if subprocess.run(command, check=False).returncode != 0:
        raise UserError("the training run failed")
    run = work / "models_saved" / "noisy"
    with open(run / "label_issues.csv", newline="", encoding="utf-8") as handle:
        ranked = [str(Path(row["path"])) for row in csv.DictReader(handle)]  # most suspect first
    result = {"data": str(source), "config": config, "share": args.share, "seed": args.seed,
              **score(ranked, set(flipped)),
              "oof_acc": json.loads((run / "summary.json").read_text())["oof_acc"],
              "minutes": (time.perf_counter() - start) / 60}
    (work / "label_noise.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
