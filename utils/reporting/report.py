"""report.md: one page that tells a run's story, built only from the files the
run saved, so that `python main.py --report <run_dir>` rebuilds it at any time."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from utils.data.images import read_image
from utils.runtime.errors import UserError

GALLERY_SIZE = 16


RUN_FILES = ("summary.json", "config.yaml", "oof_predictions.csv", "classification_report.txt")


def _damaged(path: Path) -> UserError:
    return UserError(f"{path} is damaged; run python main.py --resume {path.parent.name} to write the run's "
                     "outputs again")


def _load(run_dir: Path) -> tuple[dict, str, dict[int, dict], list[dict]]:
    """summary.json, config.yaml, every fold's history and the out-of-fold rows, checked."""
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run ({', '.join(missing)} missing)")
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        if not isinstance(summary, dict) or not isinstance(summary.get("folds"), list) or "classes" not in summary:
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise _damaged(run_dir / "summary.json") from None
    histories = {}
    for path in sorted(run_dir.glob("fold*/history.json")):
        try:
            histories[int(path.parent.name[4:])] = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _damaged(path) from None
    with open(run_dir / "oof_predictions.csv", newline="", encoding="utf-8") as handle:
        oof_rows = list(csv.DictReader(handle))
    if not oof_rows or not {"path", "label", "pred", "confidence"} <= set(oof_rows[0]):
        raise _damaged(run_dir / "oof_predictions.csv")
    return summary, (run_dir / "config.yaml").read_text(encoding="utf-8"), histories, oof_rows


def plot_training_curves(histories: dict[int, dict], out: Path) -> None:
    """Student loss and accuracy per epoch, training and validation, one line per fold."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for fold, history in histories.items():
        epochs = [e["epoch"] for e in history["student"]]
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            # Markers, so that a run of one epoch still shows its points.
            line, = ax.plot(epochs, [e[f"val_{key}"] for e in history["student"]], "o-", label=f"fold {fold} val")
            ax.plot(epochs, [e[f"train_{key}"] for e in history["student"]], "o--", color=line.get_color(),
                    label=f"fold {fold} train")
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(f"student {name}")
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_misclassified(oof_rows: list[dict], out: Path) -> int:
    """The out-of-fold mistakes the students were most sure of, with true and predicted labels."""
    wrong = [row for row in oof_rows if row["label"] != row["pred"]]
    wrong = sorted(wrong, key=lambda row: -float(row["confidence"]))[:GALLERY_SIZE]
    columns = 4
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, wrong):
        image = read_image(row["path"], max_short_side=256)
        if image is not None:
            ax.imshow(image)
        ax.set_title(f"true {row['label']}\npred {row['pred']} ({float(row['confidence']):.2f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return len(wrong)


def _cell(value) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _mean_std(summary: dict, name: str) -> str:
    mean = summary.get(f"{name}_mean")
    return "-" if mean is None else f"{mean:.4f} ± {summary.get(f'{name}_std') or 0:.4f}"


def _fold_table(summary: dict) -> list[str]:
    lines = ["| fold | train | val | teacher acc | CE-only acc | student acc | macro-F1 | best epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for f in summary["folds"]:
        lines.append(f"| {f['fold']} | {f['n_train']} | {f['n_val']} | {_cell(f['teacher_val_acc'])} "
                     f"| {_cell(f.get('baseline_val_acc'))} | {f['student_val_acc']:.4f} "
                     f"| {f['student_val_macro_f1']:.4f} | {f['best_epoch']} |")
    lines.append(f"| mean ± std | | | {_mean_std(summary, 'teacher_val_acc')} "
                 f"| {_mean_std(summary, 'baseline_val_acc')} | {_mean_std(summary, 'student_val_acc')} "
                 f"| {_mean_std(summary, 'student_val_macro_f1')} | |")
    return lines


def _verdict_section(summary: dict) -> list[str]:
    verdict = summary.get("verdict")
    if not verdict:
        return ["## Did distillation help?", "",
                "Not measured: run with `--baseline` to train a CE-only student beside each distilled one.", ""]
    lines = ["## Did distillation help?", "", f"**{verdict['sentence'][0].upper()}{verdict['sentence'][1:]}.**", "",
             "| fold | teacher | CE-only student | distilled student | distilled - CE-only |", "|---|---|---|---|---|"]
    for f, difference in zip(summary["folds"], verdict["differences"]):
        lines.append(f"| {f['fold']} | {_cell(f['teacher_val_acc'])} | {f['baseline_val_acc']:.4f} "
                     f"| {f['student_val_acc']:.4f} | {100 * difference:+.1f} points |")
    lines.append(f"| mean | {_cell(summary['teacher_val_acc_mean'])} | {summary['baseline_val_acc_mean']:.4f} "
                 f"| {summary['student_val_acc_mean']:.4f} | {100 * verdict['mean']:+.1f} points "
                 f"(95% interval {100 * verdict['low']:+.1f} to {100 * verdict['high']:+.1f}) |")
    weaker = [f["fold"] for f in summary["folds"] if f["teacher_val_acc"] is not None
              and f["teacher_val_acc"] < f["baseline_val_acc"]]
    if weaker:
        lines += ["", f"The teacher of fold(s) {', '.join(map(str, weaker))} is less accurate than the CE-only "
                      "student: a teacher has to be better than the student alone to help it."]
    return lines + [""]


def write_report(run_dir: Path) -> Path:
    """report.md (and its figures) from the run's saved files."""
    summary, config, histories, oof_rows = _load(run_dir)
    try:
        return _write_report(run_dir, summary, config, histories, oof_rows)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise _damaged(run_dir / "summary.json") from None


def _write_report(run_dir: Path, summary: dict, config: str, histories: dict[int, dict], oof_rows: list[dict]
                  ) -> Path:
    if histories:
        plot_training_curves(histories, run_dir / "training_curves.png")
    mistakes = plot_misclassified(oof_rows, run_dir / "misclassified.png")
    counts = Counter(row["label"] for row in oof_rows)
    lines = [
        f"# Run {run_dir.name}",
        "",
        "## Dataset",
        "",
        f"{sum(counts.values())} images in {len(summary['classes'])} classes: "
        + ", ".join(f"{name} {counts[name]}" for name in summary["classes"]) + ".",
        "",
        f"Skipped files: {len(summary['skipped_files'])}.",
        *[f"- `{item['path']}`: {item['reason']}" for item in summary["skipped_files"]],
        "",
        "## Cross-validation",
        "",
        "Validation accuracy of each fold's teacher, of the CE-only student (with `--baseline`), "
        "and of the distilled student's best epoch.",
        "",
        *_fold_table(summary),
        "",
        *_verdict_section(summary),
        f"Out-of-fold accuracy (every image predicted by the fold that did not train on it): "
        f"{summary['oof_acc']:.4f}.",
    ]
    if "test_acc" in summary:
        lines += ["", f"Held-out test set ({summary['n_test']} images), fold ensemble: accuracy "
                      f"{summary['test_acc']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}."]
    lines += [
        "",
        "## Out-of-fold classification report",
        "",
        "```",
        (run_dir / "classification_report.txt").read_text(encoding="utf-8").rstrip(),
        "```",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    if histories:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    lines += [f"## Most confidently misclassified ({mistakes})", "", "![misclassified](misclassified.png)", "",
              "## Configuration", "", "```yaml", config.rstrip(), "```", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
