"""Can a distilled student beat its teacher? On a real dataset, from scratch: per fold,
the teacher, the CE-only student and the distilled students, all with the same student,
recipe, folds and seed; mean ± std over folds, and an ablation row for each addition
(feature distillation, the temperature schedule, a long student schedule), each paired
by fold with its 95% interval, the students' Grad-CAM agreement with the teacher, and
the time taken.

    python benchmarks/distillation_quality.py --data_dir ../shared/datasets/trashnet-112 [--json]
        [--variants long,short,features,schedule] [-- further main.py options]

The runs are ordinary main.py runs under --output_dir (by default
models_saved/quality-benchmark): the first (`long`) trains the teachers, stores their
views, and trains the CE-only students (--baseline, the same epochs and recipe) and the
`dist` students; the others reuse the cached teachers and their stored views, one run
per CPU core at a time. A rerun reuses finished runs and folds, so an interrupted
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
from utils.runtime.process import cpu_count  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The benchmark's setting: from scratch (the scratch recipe, configs/recipes/scratch.yaml), 96 px,
# MobileNetV3-Small taught by a ResNet18 (a ResNet50 from scratch at 64 px was a weaker teacher
# and twice as slow) trained 30 epochs per fold, `dist` (the best method of the previous round),
# the teacher's outputs on 20 stored views per image. No final student.
SETTINGS = ["--img_size", "96", "--student", "mobilenet_v3_small", "--teacher", "resnet18", "--teacher_weights",
            "none", "--student_weights", "none", "--teacher_epochs", "30", "--kd", "dist", "--teacher_cache",
            "views", "--teacher_views", "20", "--final_model", "false", "--quiet"]
LONG, SHORT = 60, 20  # student epochs: the long (patient) schedule and the previous round's
# Each row: what it adds to the `long` run, and the row it is paired with in the ablation.
VARIANTS = {
    "long": (["--epochs", str(LONG), "--baseline"], None),
    "short": (["--epochs", str(SHORT)], "long"),
    "features": (["--epochs", str(LONG), "--feature_kd", "fitnet"], "long"),
    # The cats-vs-dogs article's schedule: T from 10 down to 2, linearly over training.
    "schedule": (["--epochs", str(LONG), "--dist_temperature", "10", "--temperature_schedule", "linear",
                  "--temperature_end", "2"], "long"),
}
DESCRIPTIONS = {
    "long": f"`dist`, {LONG} epochs",
    "short": f"`dist`, {SHORT} epochs",
    "features": f"`dist` + feature KD (fitnet), {LONG} epochs",
    "schedule": f"`dist`, T 10 -> 2 linear, {LONG} epochs",
}


def run_command(args: argparse.Namespace, variant: str, parallel_folds: int) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--data_dir", args.data_dir, "--num_folds", str(args.folds),
            "--seed", str(args.seed), "--output_dir", args.output_dir, "--log_dir", args.log_dir,
            "--run_name", f"quality-{variant}", "--parallel_folds", str(parallel_folds), *SETTINGS,
            *VARIANTS[variant][0], *args.extra]


def run_all(args: argparse.Namespace, variants: list[str]) -> None:
    """The `long` run first (it trains the teachers), then the others side by side, one per core."""
    first, others = variants[:1] if variants[0] == "long" else [], [v for v in variants if v != "long"]
    for variant in first:
        if subprocess.run(run_command(args, variant, cpu_count()), check=False).returncode != 0:
            raise UserError(f"the {variant} run failed")
    for at in range(0, len(others), cpu_count()):
        batch = others[at:at + cpu_count()]
        processes = [subprocess.Popen(run_command(args, variant, 1)) for variant in batch]
        for variant, process in zip(batch, processes):
            if process.wait() != 0:
                raise UserError(f"the {variant} run failed (exit {process.returncode})")


@dataclasses.dataclass
class Row:
    name: str
    accuracies: list[float]
    cam_agreement: Optional[float] = None
    minutes: Optional[float] = None

    @property
    def mean_std(self) -> str:
        return f"{100 * np.mean(self.accuracies):.1f} ± {100 * np.std(self.accuracies):.1f}"


def _summary(args: argparse.Namespace, variant: str) -> Optional[dict]:
    path = Path(args.output_dir) / f"quality-{variant}" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def collect(args: argparse.Namespace) -> dict:
    summaries = {variant: summary for variant in VARIANTS if (summary := _summary(args, variant))}
    if "long" not in summaries:
        raise UserError(f"no finished quality-long run under {args.output_dir}: run the benchmark first")
    long = summaries["long"]
    rows = [Row("teacher (ResNet18, 30 epochs)", [f["teacher_val_acc"] for f in long["folds"]]),
            Row(f"CE-only student, {LONG} epochs", [f["baseline_val_acc"] for f in long["folds"]],
                long.get("baseline_cam_agreement_mean"))]
    rows += [Row(DESCRIPTIONS[variant], [f["student_val_acc"] for f in summary["folds"]],
                 summary.get("student_cam_agreement_mean"), summary["seconds"] / 60)
             for variant, summary in summaries.items()]
    ablation = {}
    for variant, summary in summaries.items():
        paired_with = VARIANTS[variant][1]
        if paired_with in summaries:
            ablation[variant] = distillation_verdict(
                [f["student_val_acc"] for f in summary["folds"]],
                [f["student_val_acc"] for f in summaries[paired_with]["folds"]]).to_dict()
    versus_ce = {variant: distillation_verdict([f["student_val_acc"] for f in summary["folds"]],
                                               rows[1].accuracies).to_dict()
                 for variant, summary in summaries.items()}
    return {"rows": [dataclasses.asdict(r) for r in rows], "ablation": ablation, "versus_ce": versus_ce,
            "teacher": rows[0].accuracies}


def _interval(verdict: dict) -> str:
    per_fold = ", ".join(f"{100 * d:+.1f}" for d in verdict["differences"])
    return f"{per_fold} | {100 * verdict['mean']:+.1f} | {100 * verdict['low']:+.1f} to {100 * verdict['high']:+.1f}"


def print_table(result: dict, args: argparse.Namespace, seconds: float) -> None:
    rows = [Row(**r) for r in result["rows"]]
    folds = len(rows[0].accuracies)
    print(f"{args.data_dir}, {folds} folds, seed {args.seed}; {' '.join(SETTINGS)} {' '.join(args.extra)}; "
          f"{seconds / 60:.0f} min in this call")
    print("| model | " + " | ".join(f"fold {k}" for k in range(folds)) +
          " | mean ± std | Grad-CAM agreement with the teacher | run minutes |")
    print("|---|" + "---|" * (folds + 3))
    for row in rows:
        agreement = "" if row.cam_agreement is None else f"{row.cam_agreement:.2f}"
        minutes = "" if row.minutes is None else f"{row.minutes:.0f}"
        print(f"| {row.name} | " + " | ".join(f"{100 * a:.1f}" for a in row.accuracies) +
              f" | {row.mean_std} | {agreement} | {minutes} |")
    teacher = np.asarray(result["teacher"])
    print()
    print("| student | minus CE-only, per fold (points) | mean | 95% interval | at least its teacher on |")
    print("|---|---|---|---|---|")
    for variant, verdict in result["versus_ce"].items():
        student = np.asarray([r for r in rows if r.name == DESCRIPTIONS[variant]][0].accuracies)
        at_least = int((student >= teacher).sum())
        print(f"| {DESCRIPTIONS[variant]} | {_interval(verdict)} | {at_least} of {folds} folds |")
    if result["ablation"]:
        print()
        print("| addition | paired with | difference per fold (points) | mean | 95% interval | verdict |")
        print("|---|---|---|---|---|---|")
        for variant, verdict in result["ablation"].items():
            outcome = {"helped": "helped", "did not help": "hurt", "cannot tell": "cannot tell"}[verdict["outcome"]]
            print(f"| {DESCRIPTIONS[variant]} | {DESCRIPTIONS[VARIANTS[variant][1]]} | {_interval(verdict)} "
                  f"| {outcome} |")


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
                        help=f"rows to run, comma-separated, of {', '.join(VARIANTS)}; the others are read if finished")
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
