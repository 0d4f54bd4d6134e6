"""Does distillation beat a well-trained CE-only student? On a real dataset, per fold: the
CE-only MobileNetV3-Small with the default recipe (from scratch), the teachers (ImageNet-
pretrained EfficientNet-Lite0, fine-tuned; a ResNet18 from scratch), the students distilled
from each, all with the same student, recipe, epochs, folds and seed; mean ± std over folds,
each student's difference from the CE-only student paired by fold with its 95% interval, on
how many folds it reached its own teacher, and the minutes each run took.

    python benchmarks/distillation_quality.py --data_dir ../shared/datasets/trashnet-112 [--json]
        [--variants ce,lite0,resnet18,best] [-- further main.py options]

The runs are ordinary main.py runs under --output_dir (by default
models_saved/quality-benchmark), one after the other, each training its folds side by side
(one process per CPU core). A rerun reuses finished runs and folds, so an interrupted
benchmark continues, and --variants picks the rows to (re)compute.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime.process import prepare_process  # noqa: E402

prepare_process()  # must run before anything imports Paddle

import numpy as np  # noqa: E402

from utils.reporting.verdict import distillation_verdict  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Every run: MobileNetV3-Small from scratch at 112 px (the photos are 112x84) with the default
# recipe for weights `none` (configs/recipes/scratch.yaml), the full settings even on a CPU, no
# final student.
COMMON = ["--img_size", "112", "--student", "mobilenet_v3_small", "--student_weights", "none", "--preset", "full",
          "--final_model", "false", "--find_label_issues", "false", "--quiet"]
# How the students learn from a teacher, chosen on a tuning split (seed 7, fold 0;
# docs/distillation.md, "Round five"): kl on 50 stored views of every image.
METHOD = ["--kd", "kl", "--teacher_cache", "views", "--teacher_views", "50"]
LITE0 = ["--teacher", "efficientnet_lite0", "--teacher_weights", "imagenet", "--teacher_epochs", "10",
         "--teacher_lr", "0.001"]
RESNET18 = ["--teacher", "resnet18", "--teacher_weights", "none"]  # the scratch recipe's teacher schedule
# Each run: its main.py options, and what its rows are called.
VARIANTS = {
    "ce": (["--kd", "none", "--teacher_weights", "none"], "CE-only student"),
    "lite0": ([*LITE0, *METHOD], "EfficientNet-Lite0 (ImageNet, 10 epochs at 112 px)"),
    "resnet18": ([*RESNET18, *METHOD], "ResNet18 (from scratch, 30 epochs)"),
    "best": ([*LITE0, "--teacher_img_size", "224", *METHOD], "EfficientNet-Lite0 at 224 px"),
}


def run_command(args: argparse.Namespace, variant: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--data_dir", args.data_dir, "--num_folds", str(args.folds),
            "--seed", str(args.seed), "--output_dir", args.output_dir, "--log_dir", args.log_dir,
            "--run_name", f"quality-{variant}", *COMMON, *VARIANTS[variant][0], *args.extra]


def run_all(args: argparse.Namespace, variants: list[str]) -> None:
    for variant in variants:
        if _summary(args, variant) is None and subprocess.run(run_command(args, variant), check=False).returncode:
            raise UserError(f"the {variant} run failed")


@dataclasses.dataclass
class Row:
    name: str
    accuracies: list[float]
    minutes: Optional[float] = None

    @property
    def mean_std(self) -> str:
        return f"{100 * np.mean(self.accuracies):.1f} ± {100 * np.std(self.accuracies):.1f}"


def _summary(args: argparse.Namespace, variant: str) -> Optional[dict]:
    path = Path(args.output_dir) / f"quality-{variant}" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _accuracies(summary: dict, key: str) -> list[float]:
    return [fold[key] for fold in summary["folds"]]


def collect(args: argparse.Namespace) -> dict:
    """The rows (the CE-only student, then per teacher: the teacher and its student), each
    student's paired difference from the CE-only student, and its folds at or above its teacher."""
    summaries = {variant: summary for variant in VARIANTS if (summary := _summary(args, variant))}
    if "ce" not in summaries:
        raise UserError(f"no finished quality-ce run under {args.output_dir}: run the benchmark first")
    ce = Row(VARIANTS["ce"][1], _accuracies(summaries["ce"], "student_val_acc"), summaries["ce"]["seconds"] / 60)
    rows, students = [dataclasses.asdict(ce)], {}
    for variant, summary in summaries.items():
        if variant == "ce":
            continue
        teacher = _accuracies(summary, "teacher_val_acc")
        student = _accuracies(summary, "student_val_acc")
        name = VARIANTS[variant][1]
        rows += [dataclasses.asdict(Row(f"teacher: {name}", teacher)),
                 dataclasses.asdict(Row(f"student of {name}", student, summary["seconds"] / 60))]
        students[variant] = {"versus_ce": distillation_verdict(student, ce.accuracies).to_dict(),
                             "at_least_teacher": int((np.asarray(student) >= np.asarray(teacher)).sum())}
    return {"rows": rows, "students": students}


def _interval(verdict: dict) -> str:
    per_fold = ", ".join(f"{100 * d:+.1f}" for d in verdict["differences"])
    return f"{per_fold} | {100 * verdict['mean']:+.1f} | {100 * verdict['low']:+.1f} to {100 * verdict['high']:+.1f}"


def print_table(result: dict, args: argparse.Namespace, seconds: float) -> None:
    rows = [Row(**r) for r in result["rows"]]
    folds = len(rows[0].accuracies)
    print(f"{args.data_dir}, {folds} folds, seed {args.seed}; {' '.join(COMMON)} {' '.join(args.extra)}; "
          f"{seconds / 60:.0f} min in this call")
    print("| model | " + " | ".join(f"fold {k}" for k in range(folds)) + " | mean ± std | run minutes |")
    print("|---|" + "---|" * (folds + 2))
    for row in rows:
        minutes = "" if row.minutes is None else f"{row.minutes:.0f}"
        print(f"| {row.name} | " + " | ".join(f"{100 * a:.1f}" for a in row.accuracies) +
              f" | {row.mean_std} | {minutes} |")
    print()
    print("| student of | minus CE-only, per fold (points) | mean | 95% interval | at least its teacher on |")
    print("|---|---|---|---|---|")
    for variant, student in result["students"].items():
        print(f"| {VARIANTS[variant][1]} | {_interval(student['versus_ce'])} | "
              f"{student['at_least_teacher']} of {folds} folds |")


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default=str(ROOT / "models_saved" / "quality-benchmark"))
    parser.add_argument("--log_dir", default=str(ROOT / "logs" / "quality-benchmark"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"runs to run, comma-separated, of {', '.join(VARIANTS)}; the others are read if finished")
    parser.add_argument("--report_only", action="store_true", help="print the table from the finished runs")
    parser.add_argument("extra", nargs="*", help="further main.py options after --, e.g. -- --epochs 40")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    start = time.perf_counter()
    if not args.report_only:
        run_all(args, variants)
    result = collect(args)
    seconds = time.perf_counter() - start
    (Path(args.output_dir) / "quality.json").write_text(json.dumps({**result, "seconds": seconds}, indent=2))
    if args.json:
        print(json.dumps({**result, "seconds": seconds}, indent=2))
    else:
        print_table(result, args, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
