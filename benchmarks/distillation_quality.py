"""Does distillation make the student better than it is alone? On a real dataset,
from scratch: per fold, the teacher, the CE-only student, and students distilled
with each method (`kl`, `dkd`, `dist`), all with the same student, recipe, folds,
seed and epochs; mean ± std over folds, each method's paired difference to the
CE-only student with its 95% interval, and the time taken.

    python benchmarks/distillation_quality.py --data_dir ../shared/datasets/trashnet-112 [--json]

The runs are ordinary main.py runs under --output_dir (by default
models_saved/quality-benchmark): the first trains the teachers, the CE-only
students (--baseline) and the `kl` students; the others reuse the cached teachers
and their stored views, and run side by side, one process per CPU core. A rerun
reuses finished runs and folds, so an interrupted benchmark continues.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime.process import prepare_process  # noqa: E402

prepare_process()  # must run before anything imports Paddle

import numpy as np  # noqa: E402

from utils.reporting.verdict import distillation_verdict  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402
from utils.runtime.process import cpu_count  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("kl", "dkd", "dist")
# The benchmark's setting: from scratch (the scratch recipe, configs/recipes/scratch.yaml), 96 px,
# MobileNetV3-Small taught by a ResNet18 (a ResNet50 from scratch at 64 px was a weaker teacher
# and twice as slow), with the budget's epochs: 30 for the teacher, 20 for every student, and the
# teacher's outputs on 20 stored views per image (one per epoch). No final student.
SETTINGS = ["--img_size", "96", "--student", "mobilenet_v3_small", "--teacher", "resnet18", "--teacher_weights",
            "none", "--student_weights", "none", "--teacher_epochs", "30", "--epochs", "20", "--patience", "10",
            "--teacher_cache", "views", "--teacher_views", "20", "--final_model", "false", "--quiet"]


def run_command(args: argparse.Namespace, method: str, parallel_folds: int) -> list[str]:
    command = [sys.executable, str(ROOT / "main.py"), "--data_dir", args.data_dir, "--num_folds", str(args.folds),
               "--seed", str(args.seed), "--output_dir", args.output_dir, "--log_dir", args.log_dir,
               "--run_name", f"quality-{method}", "--kd", method, "--parallel_folds", str(parallel_folds),
               *SETTINGS, *args.extra]
    return command + (["--baseline"] if method == METHODS[0] else [])


def run_all(args: argparse.Namespace) -> None:
    """The first method with the teachers and the baseline, then the others side by side."""
    first = subprocess.run(run_command(args, METHODS[0], cpu_count()), check=False)
    if first.returncode != 0:
        raise UserError(f"the {METHODS[0]} run failed (exit {first.returncode})")
    others = [subprocess.Popen(run_command(args, method, max(1, cpu_count() // (len(METHODS) - 1))))
              for method in METHODS[1:]]
    for method, process in zip(METHODS[1:], others):
        if process.wait() != 0:
            raise UserError(f"the {method} run failed (exit {process.returncode})")


@dataclasses.dataclass
class Row:
    name: str
    accuracies: list[float]

    @property
    def mean_std(self) -> str:
        return f"{100 * np.mean(self.accuracies):.1f} ± {100 * np.std(self.accuracies):.1f}"


def collect(args: argparse.Namespace) -> dict:
    summaries = {method: json.loads((Path(args.output_dir) / f"quality-{method}" / "summary.json").read_text())
                 for method in METHODS}
    first = summaries[METHODS[0]]
    rows = [Row("teacher", [f["teacher_val_acc"] for f in first["folds"]]),
            Row("CE-only student", [f["baseline_val_acc"] for f in first["folds"]])]
    rows += [Row(f"`{method}` student", [f["student_val_acc"] for f in summaries[method]["folds"]])
             for method in METHODS]
    baseline = rows[1].accuracies
    verdicts = {method: distillation_verdict([f["student_val_acc"] for f in summaries[method]["folds"]], baseline)
                for method in METHODS}
    return {"rows": [dataclasses.asdict(r) for r in rows], "verdicts": {m: v.to_dict() for m, v in verdicts.items()},
            "macro_f1": {m: summaries[m]["student_val_macro_f1_mean"] for m in METHODS},
            "run_seconds": {m: summaries[m]["seconds"] for m in METHODS}}


def print_table(result: dict, args: argparse.Namespace, seconds: float) -> None:
    rows = [Row(**r) for r in result["rows"]]
    folds = len(rows[0].accuracies)
    print(f"{args.data_dir}, {folds} folds, seed {args.seed}; {' '.join(SETTINGS)} {' '.join(args.extra)}; "
          f"{seconds / 60:.0f} min in all")
    print("| model | " + " | ".join(f"fold {k}" for k in range(folds)) + " | mean ± std |")
    print("|---|" + "---|" * (folds + 1))
    for row in rows:
        print(f"| {row.name} | " + " | ".join(f"{100 * a:.1f}" for a in row.accuracies) + f" | {row.mean_std} |")
    print()
    print("| method | distilled - CE-only, per fold (points) | mean | 95% interval | better on | verdict |")
    print("|---|---|---|---|---|---|")
    for method, verdict in result["verdicts"].items():
        per_fold = ", ".join(f"{100 * d:+.1f}" for d in verdict["differences"])
        better = sum(d > 0 for d in verdict["differences"])
        print(f"| `{method}` | {per_fold} | {100 * verdict['mean']:+.1f} | {100 * verdict['low']:+.1f} to "
              f"{100 * verdict['high']:+.1f} | {better} of {folds} folds | {verdict['outcome']} |")


@reports_user_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default=str(ROOT / "models_saved" / "quality-benchmark"))
    parser.add_argument("--log_dir", default=str(ROOT / "logs" / "quality-benchmark"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="further main.py options after --, e.g. -- --epochs 40")
    args = parser.parse_args()
    start = time.perf_counter()
    run_all(args)
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
