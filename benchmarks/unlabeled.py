"""Do photos nobody labelled help? In each fold of the quality benchmark's split, a third of the
training photos keep their labels and the other two thirds go to an unlabeled folder, their
labels hidden; the validation photos are the fold's own. Rows, per fold and on average:

    CE-only student on the labelled third
    distilled student on the labelled third            (the same run's --baseline)
    distilled student with the unlabeled two thirds    (--unlabeled_dir)
    distilled student with every label                 (the ceiling)

with the paired differences and their 95% intervals, the share of the gap to the ceiling the
unlabeled photos close, and the minutes each run took.

    python benchmarks/unlabeled.py --data_dir ../shared/datasets/trashnet-112 [--folds 3] [--seed 42]
        [--output_dir DIR] [--ceiling_from models_saved/quality-benchmark/quality-lite0] [-- main.py options]

Each fold is built from links to the photos (nothing is copied) and trained as fold 0 of a
2-fold run whose --split_file puts the fold's validation photos in fold 0; the runs are ordinary
main.py runs under --output_dir, two at a time, and a rerun reuses finished ones.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.runtime.process import prepare_process  # noqa: E402

prepare_process()

import numpy as np  # noqa: E402

from utils.data.folders import drop_duplicates, scan_dataset  # noqa: E402
from utils.data.splits import make_folds  # noqa: E402
from utils.reporting.verdict import distillation_verdict  # noqa: E402
from utils.runtime.files import file_digest  # noqa: E402
from utils.runtime.process import cpu_count  # noqa: E402

# The student and its teacher: the quality benchmark's (benchmarks/distillation_quality.py).
SETTINGS = ["--img_size", "112", "--student", "mobilenet_v3_small", "--student_weights", "none",
            "--teacher", "efficientnet_lite0", "--teacher_weights", "imagenet", "--teacher_epochs", "10",
            "--teacher_lr", "0.001", "--kd", "kl", "--teacher_cache", "views", "--teacher_views", "50",
            "--epochs", "50", "--final_model", "false", "--find_label_issues", "false", "--quiet", "--preset", "full"]


def link_photos(paths: list[str], root: Path, data_dir: Path, flat: bool = False) -> None:
    """Links to `paths` under `root`: in their class folders, or all in one folder (`flat`)."""
    for path in paths:
        relative = Path(path).relative_to(data_dir)
        target = root / (relative.name if flat else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(Path(path).resolve())


def build_folds(args: argparse.Namespace, work: Path) -> list[dict]:
    """Per fold: the labelled third's folder and split file, the unlabeled folder, and the fully
    labelled folder and split file."""
    data_dir = Path(args.data_dir)
    index = scan_dataset(data_dir)
    index, _ = drop_duplicates(index, {s.path: file_digest(s.path) for s in index.samples}, data_dir)
    labels = np.array([s.label for s in index.samples])
    paths = [s.path for s in index.samples]
    built = []
    for fold in make_folds(labels, args.folds, args.seed):
        rng = np.random.default_rng([args.seed, fold.fold])
        labelled, unlabeled = [], []
        for label in np.unique(labels):  # a stratified third of the training photos keeps its labels
            members = rng.permutation(fold.train_indices[labels[fold.train_indices] == label])
            cut = round(len(members) / 3)
            labelled += members[:cut].tolist()
            unlabeled += members[cut:].tolist()
        base = work / f"fold{fold.fold}"
        sets = {"third": labelled, "full": fold.train_indices.tolist()}
        entry = {"fold": fold.fold, "unlabeled": str(base / "unlabeled"),
                 "validation": {str(Path(paths[i]).resolve()) for i in fold.val_indices}}
        for name, train in sets.items():
            folder = base / name
            link_photos([paths[i] for i in [*train, *fold.val_indices]], folder, data_dir)
            split = {str(Path(paths[i]).relative_to(data_dir)): int(i not in set(fold.val_indices.tolist()))
                     for i in [*train, *fold.val_indices]}
            (base / f"{name}.json").write_text(json.dumps(split))
            entry[name] = (str(folder), str(base / f"{name}.json"))
        link_photos([paths[i] for i in unlabeled], base / "unlabeled", data_dir, flat=True)
        built.append(entry)
    return built


def runs(args: argparse.Namespace, folds: list[dict]) -> dict[str, list[str]]:
    """The main.py command of every run, by name."""
    commands = {}
    for fold in folds:
        k = fold["fold"]
        common = ["--num_folds", "2", "--folds", "0", "--seed", str(args.seed), "--output_dir", args.output_dir,
                  "--log_dir", str(Path(args.output_dir) / "logs"), "--parallel_folds", "1", *SETTINGS]
        third, third_split = fold["third"]
        full, full_split = fold["full"]
        commands[f"unlabeled-{k}"] = ["--data_dir", third, "--split_file", third_split, "--unlabeled_dir",
                                      fold["unlabeled"], "--baseline", *common]
        commands[f"ce-{k}"] = ["--data_dir", third, "--split_file", third_split, *common, "--kd", "none"]
        if not args.ceiling_from:
            commands[f"ceiling-{k}"] = ["--data_dir", full, "--split_file", full_split, *common]
    return {name: [*command, *args.extra, "--run_name", f"unlabeled-benchmark-{name}"]
            for name, command in commands.items()}


def fold_result(args: argparse.Namespace, name: str) -> dict | None:
    kind, k = name.rsplit("-", 1)
    if kind == "ceiling" and args.ceiling_from:
        path = Path(args.ceiling_from) / f"fold{k}" / "result.json"
    else:
        path = Path(args.output_dir) / f"unlabeled-benchmark-{name}" / "fold0" / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_ceiling_run(run_dir: Path, folds: list[dict]) -> None:
    """A finished run of the quality benchmark serves as the ceiling only if it validated every
    fold on the same photos (its folds.json: each photo's validation fold)."""
    if not (run_dir / "folds.json").is_file():
        raise SystemExit(f"--ceiling_from {run_dir}: not a run folder (no folds.json)")
    split = json.loads((run_dir / "folds.json").read_text())
    for fold in folds:
        theirs = {str(Path(path).resolve()) for path, k in split.items() if k == fold["fold"]}
        if theirs != fold["validation"]:
            raise SystemExit(f"--ceiling_from {run_dir}: fold {fold['fold']} validates on other photos")


def run(args: argparse.Namespace, name: str, command: list[str]) -> None:
    if fold_result(args, name) is not None:
        return
    started = time.time()
    log = Path(args.output_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, str(ROOT / "main.py"), *command], stdout=out,
                              stderr=subprocess.STDOUT, check=False).returncode
    (Path(args.output_dir) / f"{name}.minutes").write_text(f"{(time.time() - started) / 60:.1f}\n")
    if code != 0:
        raise SystemExit(f"the {name} run failed (exit {code}): see {log}")


def table(args: argparse.Namespace, folds: int) -> str:
    rows = {"CE-only, labelled third": [], "distilled, labelled third": [], "distilled, with the unlabeled two thirds":
            [], "distilled, every label (the ceiling)": [], "teacher, labelled third": []}
    minutes = []
    for k in range(folds):
        unlabeled, ce, ceiling = (fold_result(args, f"{kind}-{k}") for kind in ("unlabeled", "ce", "ceiling"))
        rows["CE-only, labelled third"].append(ce["student_val_acc"])
        rows["distilled, labelled third"].append(unlabeled["baseline_val_acc"])
        rows["distilled, with the unlabeled two thirds"].append(unlabeled["student_val_acc"])
        rows["distilled, every label (the ceiling)"].append(ceiling["student_val_acc"])
        rows["teacher, labelled third"].append(unlabeled["teacher_val_acc"])
        minutes += [float((Path(args.output_dir) / f"{kind}-{k}.minutes").read_text())
                    for kind in ("unlabeled", "ce", "ceiling") if kind != "ceiling" or not args.ceiling_from]
    lines = ["| model | " + " | ".join(f"fold {k}" for k in range(folds)) + " | mean ± std |",
             "|---|" + "---|" * (folds + 1)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {100 * np.mean(values):.1f} ± {100 * np.std(values):.1f} |")
    with_unlabeled = rows["distilled, with the unlabeled two thirds"]
    without = rows["distilled, labelled third"]
    ceiling = rows["distilled, every label (the ceiling)"]
    lines.append("")
    for name, base in (("the unlabeled photos (with - without)", without),
                       ("distillation on the labelled third (distilled - CE-only)", rows["CE-only, labelled third"])):
        plus = with_unlabeled if base is without else without
        verdict = distillation_verdict(plus, base, name.split(" (")[0])
        lines.append(f"- {name}: per fold " + ", ".join(f"{100 * d:+.1f}" for d in verdict.differences)
                     + f"; {verdict.sentence}")
    closed = [(w - o) / (c - o) if c > o else float("nan") for w, o, c in zip(with_unlabeled, without, ceiling)]
    lines.append("- share of the gap to the ceiling closed: " + ", ".join(f"{100 * c:.0f}%" for c in closed)
                 + f" (mean {100 * np.nanmean(closed):.0f}%)")
    lines.append(f"- minutes: {sum(minutes):.0f} in all, runs of {min(minutes):.0f} to {max(minutes):.0f}"
                 + (f" (the ceiling: {args.ceiling_from})" if args.ceiling_from else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=cpu_count())
    parser.add_argument("--output_dir", default=str(ROOT / "models_saved" / "unlabeled-benchmark"))
    parser.add_argument("--ceiling_from", help="the quality benchmark's finished distilled run (e.g. "
                        "quality-lite0) as the ceiling, instead of training it again: same folds and settings")
    parser.add_argument("extra", nargs="*", help="further main.py options after --")
    args = parser.parse_args()
    folds = build_folds(args, Path(args.output_dir) / "photos")
    if args.ceiling_from:
        check_ceiling_run(Path(args.ceiling_from), folds)
    commands = runs(args, folds)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda item: run(args, *item), commands.items()))
    unfinished = [k for k in range(args.folds) if fold_result(args, f"ceiling-{k}") is None]
    if unfinished:
        raise SystemExit(f"--ceiling_from {args.ceiling_from}: fold(s) {unfinished} not finished yet; run this "
                         "again when they are (finished runs are reused)")
    text = f"{args.data_dir}, {args.folds} folds, seed {args.seed}; {' '.join(SETTINGS + args.extra)}\n\n"
    text += table(args, args.folds)
    (Path(args.output_dir) / "unlabeled.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
