"""report.md: one page that tells a run's story, built only from the files the
run saved, so that `python main.py --report <run_dir>` rebuilds it at any time."""
from __future__ import annotations

import html
import json
import re
from collections import Counter
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from utils.data.images import read_image
from utils.deploy.checkpoint import WEIGHTS_NAME, load_student
from utils.deploy.explain import NoSpatialMap, grad_cam, overlay, visible_image
from utils.reporting.label_issues import GALLERY_DIR
from utils.reporting.metrics import save_figure
from utils.reporting.out_of_fold import OOF_PROBS, analyse_out_of_fold, load_oof_probs, save_oof_probs
from utils.runtime import layout
from utils.runtime.config import read_yaml
from utils.runtime.errors import UserError
from utils.runtime.files import read_csv_rows, write_json_atomic, write_text_atomic
from utils.runtime.layout import PREDICTED, TRUE_LABEL
from utils.runtime.text import printable

GALLERY_SIZE = 16


RUN_FILES = ("summary.json", "config.yaml", "oof_predictions.csv", "classification_report.txt")
OLD_COLUMNS = {"label": TRUE_LABEL, "pred": PREDICTED}  # in oof_predictions.csv before 2026-12-07


def _damaged(path: Path) -> UserError:
    run = path.parent if (path.parent / "config.yaml").is_file() else path.parent.parent
    return UserError(f"{path} is damaged; run {layout.resume_command(run)} to write the run's outputs again")


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
    for fold, directory in layout.fold_dirs(run_dir).items():
        path = directory / "history.json"
        if not path.is_file():
            continue
        try:
            histories[fold] = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _damaged(path) from None
    oof_rows = [{OLD_COLUMNS.get(key, key): value for key, value in row.items()}
                for row in read_csv_rows(run_dir / "oof_predictions.csv")]
    if not oof_rows or not {"path", TRUE_LABEL, PREDICTED, "confidence"} <= set(oof_rows[0]):
        raise _damaged(run_dir / "oof_predictions.csv")
    return summary, (run_dir / "config.yaml").read_text(encoding="utf-8"), histories, oof_rows


_MARKDOWN_MARKS = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md(text: object) -> str:
    """Text from the data (a class name, a path) as plain text inside report.md's lines and table
    cells: HTML shown, not run; Markdown's marks and table bars escaped; control characters (a
    newline would end a table row) written as \\xNN."""
    return _MARKDOWN_MARKS.sub(r"\\\1", html.escape(printable(text), quote=False))


def code_block(text: str, info: str = "") -> list[str]:
    """`text` as a fenced block whose fence is longer than any run of backticks inside it, so that
    nothing in it (a class name with backticks) can end the block early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, printable_lines(text), fence]


def printable_lines(text: str) -> str:
    """Each line of `text` with its control characters (but the line breaks) escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


FOLD_MARKERS = "osD^v<>p*h"


def _train_ce(record: dict) -> float:
    """The epoch's hard-label cross-entropy: the 'ce' part, or the loss when that is all there is."""
    return record["train_parts"].get("ce", record["train_loss"])


def _distillation_terms(record: dict) -> float:
    return sum(value for name, value in record["train_parts"].items() if name != "ce")


def plot_training_curves(histories: dict[int, dict], out: Path) -> None:
    """Per epoch, for every fold (one marker each): the student's training and validation
    cross-entropy side by side (the distillation terms, on another scale, get a panel of
    their own), its training and validation accuracy, and the teacher's curves."""
    with_kd = any(_distillation_terms(r) for h in histories.values() for r in h["student"])
    fig, axes = plt.subplots(1, 3 if with_kd else 2, figsize=(16 if with_kd else 11, 4.2))
    ce_ax, acc_ax = axes[0], axes[1]
    colours = {"train": "tab:blue", "val": "tab:orange", "teacher train": "tab:green", "teacher val": "tab:red",
               "CE-only train": "tab:gray", "CE-only val": "tab:brown"}
    for fold, history in sorted(histories.items()):
        marker = FOLD_MARKERS[fold % len(FOLD_MARKERS)]
        for who, records in (("", history["student"]), ("teacher ", history.get("teacher", [])),
                             ("CE-only ", history.get("baseline", []))):
            if not records:
                continue
            epochs = [r["epoch"] for r in records]
            style = dict(marker=marker, markersize=4, alpha=0.85)
            ce_ax.plot(epochs, [_train_ce(r) for r in records], "--", color=colours[f"{who}train"], **style)
            ce_ax.plot(epochs, [r["val_loss"] for r in records], "-", color=colours[f"{who}val"], **style)
            acc_ax.plot(epochs, [r["train_acc"] for r in records], "--", color=colours[f"{who}train"], **style)
            acc_ax.plot(epochs, [r["val_acc"] for r in records], "-", color=colours[f"{who}val"], **style)
        if with_kd:
            axes[2].plot([r["epoch"] for r in history["student"]],
                         [_distillation_terms(r) for r in history["student"]], "-", color="tab:purple",
                         marker=marker, markersize=4, label=f"fold {fold}")
    ce_ax.set_title("cross-entropy with the true labels")
    # Training accuracy is measured on the augmented (and, with Mixup or CutMix, mixed) images, so it
    # can sit below the validation accuracy.
    acc_ax.set_title("accuracy (train: on augmented, mixed images)")
    drawn = {"teacher ": any(h.get("teacher") for h in histories.values()),
             "CE-only ": any(h.get("baseline") for h in histories.values())}
    handles = [plt.Line2D([], [], color=colour, linestyle="--" if "train" in name else "-",
                          label=name if name.startswith(("teacher", "CE-only")) else f"student {name}")
               for name, colour in colours.items()
               if all(drawn[who] or not name.startswith(who) for who in drawn)]
    handles += [plt.Line2D([], [], color="grey", marker=FOLD_MARKERS[f % len(FOLD_MARKERS)], linestyle="none",
                           label=f"fold {f}") for f in sorted(histories)]
    for ax in (ce_ax, acc_ax):
        ax.legend(handles=handles, fontsize=7)
    if with_kd:
        axes[2].set_title("distillation terms (sum of the method's non-CE parts)")
        axes[2].legend(fontsize=7)
    last = max(r["epoch"] for h in histories.values() for r in [*h["student"], *h.get("teacher", [])])
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    save_figure(fig, out, dpi=100)


def _explained(row: dict, run_dir: Path, students: dict) -> Optional[np.ndarray]:
    """The image as its fold's student saw it, with the Grad-CAM map of the class it predicted;
    None when the image or the student is gone."""
    weights = layout.fold_dir(run_dir, int(row["fold"])) / WEIGHTS_NAME
    image = read_image(row["path"], max_short_side=256)
    if image is None or not weights.is_file():
        return None
    if row["fold"] not in students:
        students[row["fold"]] = load_student(weights)
    model, spec, _ = students[row["fold"]]
    seen = spec.eval_transform()(image)
    try:
        cam, _ = grad_cam(model, seen, list(spec.classes).index(row[PREDICTED]))
    except NoSpatialMap:  # shown as seen, without a map that would be noise
        return visible_image(seen, spec.mean, spec.std)
    return overlay(visible_image(seen, spec.mean, spec.std), cam)


def plot_misclassified(oof_rows: list[dict], out: Path, run_dir: Path) -> int:
    """The out-of-fold mistakes the students were most sure of, with true and predicted labels,
    each shown as its student saw it with the Grad-CAM map of the wrong class: what it looked at."""
    wrong = [row for row in oof_rows if row[TRUE_LABEL] != row[PREDICTED]]
    wrong = sorted(wrong, key=lambda row: -float(row["confidence"]))[:GALLERY_SIZE]
    columns = 4
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    students: dict = {}
    for ax, row in zip(axes.flat, wrong):
        picture = _explained(row, run_dir, students)
        if picture is not None:
            ax.imshow(picture)
        ax.set_title(f"true {row[TRUE_LABEL]}\npred {row[PREDICTED]} ({float(row['confidence']):.2f})", fontsize=8)
    save_figure(fig, out, dpi=90)
    return len(wrong)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def model_warnings(oof_rows: list[dict], classes: list[str]) -> list[str]:
    """What makes the students useless, in words: one answer for every image, or no better
    than always answering the most common class (1 / classes when they are balanced)."""
    predicted = Counter(row[PREDICTED] for row in oof_rows)
    truth = Counter(row[TRUE_LABEL] for row in oof_rows)
    accuracy = sum(row[PREDICTED] == row[TRUE_LABEL] for row in oof_rows) / len(oof_rows)
    majority = max(truth.values()) / len(oof_rows)
    warnings = []
    if len(predicted) == 1:
        warnings.append(f"the students answer '{md(next(iter(predicted)))}' for every image: they learned nothing "
                        "about the pictures (train longer, or check the data)")
    elif accuracy <= majority + 0.01:
        warnings.append(f"out-of-fold accuracy {accuracy:.4f} is no better than always answering the most common "
                        f"class ({majority:.4f}; chance with {len(classes)} classes is {1 / len(classes):.4f}): "
                        "the students are at chance level")
    return warnings


def _cell(value) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _mean_std(summary: dict, name: str) -> str:
    mean = summary.get(f"{name}_mean")
    return "-" if mean is None else f"{mean:.4f} ± {summary.get(f'{name}_std') or 0:.4f}"


def _fold_table(summary: dict, flipped: bool) -> list[str]:
    """Per fold and on average: the sizes, each model's accuracy, and, when the training flipped images
    (a mirrored image is then one the student knows), the student with flip test-time augmentation."""
    columns = [("teacher acc", "teacher_val_acc"), ("CE-only acc", "baseline_val_acc"),
               ("student acc", "student_val_acc"),
               *([("with flip TTA", "student_val_acc_tta")] if flipped else []),
               *([("top-5", "student_val_top5")] if summary.get("student_val_top5_mean") is not None else []),
               ("macro-F1", "student_val_macro_f1")]
    lines = ["| fold | train | val | " + " | ".join(title for title, _ in columns) + " | best epoch |",
             "|---|---|---|" + "---|" * len(columns) + "---|"]
    for f in summary["folds"]:
        cells = " | ".join(_cell(f.get(key)) for _, key in columns)
        lines.append(f"| {f['fold']} | {f['n_train']} | {f['n_val']} | {cells} | {f['best_epoch']} |")
    means = " | ".join(_mean_std(summary, key) for _, key in columns)
    lines.append(f"| mean ± std | | | {means} | |")
    return lines


def _last_epoch_note(summary: dict, epochs: Optional[int]) -> list[str]:
    """Folds whose best epoch was their last were still improving when training stopped."""
    still_improving = [str(f["fold"]) for f in summary["folds"] if epochs and f["best_epoch"] == epochs]
    if not still_improving:
        return []
    return [f"Fold(s) {', '.join(still_improving)}: the best epoch was the last ({epochs}): more epochs may help "
            "(`--epochs`).", ""]


def _final_model_section(summary: dict) -> list[str]:
    final = summary.get("final_model")
    if not final:
        return ["No final student (`--final_model false`): inference.py and export.py use the fold ensemble."]
    if "final_test_acc" in summary:
        measured = (f"On the {summary['n_test']} held-out test/ images it scores accuracy "
                    f"{summary['final_test_acc']:.4f} (macro-F1 {summary['final_test_macro_f1']:.4f}), against "
                    f"{summary['test_acc']:.4f} for the fold ensemble (macro-F1 {summary['test_macro_f1']:.4f}); the "
                    "cross-validated estimate was "
                    f"{_mean_std(summary, 'student_val_acc')}.")
    else:
        measured = ("It has no held-out images of its own: its expected accuracy is the cross-validated estimate, "
                    f"{_mean_std(summary, 'student_val_acc')}.")
    return ["## The model to ship", "",
            f"`final/`: one student trained on all {final['trained_on']} images for {final['epochs']} epochs (the "
            "median best epoch of the folds), distilled from the fold teachers. inference.py and export.py use it "
            f"by default (`--ensemble` for the folds). {measured}", ""]


def _verdict_section(summary: dict) -> list[str]:
    verdict = summary.get("verdict")
    unlabeled = bool(summary.get("unlabeled"))
    # What the baseline student lacks: the teacher (a CE-only student) or, with --unlabeled_dir, the photos.
    title, base, student = (("Did the unlabeled photos help?", "without them", "with them") if unlabeled else
                            ("Did distillation help?", "CE-only student", "distilled student"))
    if not verdict:
        return [f"## {title}", "",
                "Not measured: run with `--baseline` to train a CE-only student beside each distilled one.", ""]
    lines = [f"## {title}", "", f"**{verdict['sentence'][0].upper()}{verdict['sentence'][1:]}.**", "",
             f"| fold | teacher | {base} | {student} | difference |", "|---|---|---|---|---|"]
    for f, difference in zip(summary["folds"], verdict["differences"]):
        lines.append(f"| {f['fold']} | {_cell(f['teacher_val_acc'])} | {f['baseline_val_acc']:.4f} "
                     f"| {f['student_val_acc']:.4f} | {100 * difference:+.1f} points |")
    lines.append(f"| mean | {_cell(summary['teacher_val_acc_mean'])} | {summary['baseline_val_acc_mean']:.4f} "
                 f"| {summary['student_val_acc_mean']:.4f} | {100 * verdict['mean']:+.1f} points "
                 f"(95% interval {100 * verdict['low']:+.1f} to {100 * verdict['high']:+.1f}) |")
    weaker = [f["fold"] for f in summary["folds"] if f["teacher_val_acc"] is not None
              and f["teacher_val_acc"] < f["baseline_val_acc"]]
    if weaker and not unlabeled:
        lines += ["", f"The teacher of fold(s) {', '.join(map(str, weaker))} is less accurate than the CE-only "
                      "student: a teacher has to be better than the student alone to help it."]
    if summary.get("student_cam_agreement_mean") is None:
        lines += ["", "Where the students look (their Grad-CAM maps against the teacher's) is not measurable here: "
                      "the networks' last feature maps are too small at this input size."]
    else:
        lines += ["", "Where the students look: the mean correlation of each student's Grad-CAM maps with the "
                      f"teacher's (on up to 64 validation images per fold, for the class the teacher predicts) is "
                      f"{summary['baseline_cam_agreement_mean']:.2f} for the "
                      + ("student without the unlabeled photos" if unlabeled else "CE-only student")
                      + f" and {summary['student_cam_agreement_mean']:.2f} for the "
                      + ("one with them" if unlabeled else "distilled one") + " (1: the same maps)."]
    return lines + [""]


def _how_far_to_trust(summary: dict, flagged: int) -> list[str]:
    """How reliable the list is at the run's accuracy: every image the students get wrong is a
    candidate, so below a high accuracy most candidates are correctly labelled hard photos."""
    wrong, images = 1.0 - summary["oof_acc"], sum(fold["n_val"] for fold in summary["folds"])
    if wrong < 0.1:
        return []
    share = f" ({100 * flagged / images:.0f}% of the images)"
    return [f"How far to trust this list: the students get {100 * wrong:.0f}% of the images wrong without seeing "
            f"their labels, so at this accuracy most of the {flagged} candidates{share} are likely hard photos with "
            "the right label, not mistakes; read it from the top (the lowest score first), where mistakes are "
            "likeliest, and expect the list to grow more precise as the students get better.", ""]


def _label_issues_section(run_dir: Path, summary: dict) -> list[str]:
    found = summary.get("label_issues")
    if not found:
        return []
    lines = ["## Labels worth a second look", "",
             f"{found['count']} image(s) whose folder the out-of-fold predictions disagree with (confident "
             "learning, cleanlab; every image was predicted by a model that never trained on it). These are "
             "**candidates to look at, not errors proven**: a hard or unusual photo of the right class lands here "
             f"too. All of them, most suspect first: `{found['file']}` (path, given, suggested, score: the "
             "out-of-fold probability of the given label).", "", *_how_far_to_trust(summary, found["count"])]
    rows = _read_csv(run_dir / found["file"])
    shown = sorted((run_dir / GALLERY_DIR).glob("*.jpg"))
    if shown:
        lines += ["| image | given | suggested | score |", "|---|---|---|---|"]
        for path, row in zip(shown, rows):
            given, suggested = md(row["given"]), md(row["suggested"])
            lines.append(f"| ![{given} or {suggested}?]({GALLERY_DIR}/{path.name}) | {given} | {suggested} "
                         f"| {float(row['score']):.3f} |")
        lines.append("")
    return lines


def _calibration_section(summary: dict) -> list[str]:
    calibration = summary.get("calibration")
    if not calibration:
        return []
    lines = ["## Can the confidence be trusted?", "",
             "Expected calibration error (ECE, 15 bins: how far the top probability is from the accuracy it "
             "promises) of the out-of-fold predictions, as trained and after temperature scaling. Each fold's "
             "temperature was fitted on the other folds' predictions, so the figure after is honest.", "",
             "| fold | temperature | ECE as trained | ECE scaled |", "|---|---|---|---|"]
    for fold, (temperature, before, after) in enumerate(zip(calibration["fold_temperatures"],
                                                            calibration["fold_ece_before"],
                                                            calibration["fold_ece_after"])):
        lines.append(f"| {fold} | {temperature:.2f} | {100 * before:.1f}% | {100 * after:.1f}% |")
    applied = calibration.get("applied_temperature", calibration["temperature"])
    verdict = (f"The final model divides its logits by {applied:.2f}." if applied != 1.0 else
               "Scaling did not lower the error here, so the final model keeps its own probabilities "
               "(temperature 1).")
    lines += [f"| all | {calibration['temperature']:.2f} | {100 * calibration['ece_before']:.1f}% "
              f"| {100 * calibration['ece_after']:.1f}% |", "", verdict, "",
              "![reliability diagram](reliability.png)", "",
              "Choosing `inference.py --min_confidence P`: the share of images answered (the rest are labelled "
              "`unsure`) and the accuracy on them, out of fold, with scaled probabilities.", "",
              "| P | answered | accuracy on those |", "|---|---|---|"]
    for row in calibration["coverage"]:
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"| {row['min_confidence']:.2f} | {100 * row['coverage']:.1f}% | {accuracy} |")
    return lines + [""]


def _read_csv(path: Path) -> list[dict]:
    return read_csv_rows(path) if path.is_file() else []


def reanalyse(run_dir: Path) -> None:
    """Label issues and calibration again, from the saved out-of-fold probabilities, into
    summary.json (a run from before they were saved is left as it is)."""
    summary, _, _, oof_rows = _load(run_dir)
    classes = summary["classes"]
    probs = load_oof_probs(run_dir, oof_rows, classes)
    if probs is None:
        print(f"{run_dir}: no {OOF_PROBS} and no fold probabilities that match its predictions, so no label "
              "issues or calibration")
        return
    save_oof_probs(run_dir, probs)
    position = {name: i for i, name in enumerate(classes)}
    labels = np.array([position[row[TRUE_LABEL]] for row in oof_rows])
    fold_of = np.array([int(row["fold"]) for row in oof_rows])
    summary.update(analyse_out_of_fold(run_dir, [row["path"] for row in oof_rows], classes, labels, fold_of, probs,
                                       find_issues=True))
    write_json_atomic(run_dir / "summary.json", summary)


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
    mistakes = plot_misclassified(oof_rows, run_dir / "misclassified.png", run_dir)
    counts = Counter(row[TRUE_LABEL] for row in oof_rows)
    settings = read_yaml(run_dir / "config.yaml")
    flipped = float(settings.get("hflip", 0.5)) > 0
    lines = [
        f"# Run {run_dir.name}",
        "",
        *[f"> **Warning:** {warning}" for warning in model_warnings(oof_rows, summary["classes"])],
        "",
        f"Run time: {_duration(summary.get('seconds', 0))}.",
        "",
        "## Dataset",
        "",
        f"{sum(counts.values())} images in {len(summary['classes'])} classes: "
        + ", ".join(f"{md(name)} {counts[name]}" for name in summary["classes"]) + ".",
        "",
        *([f"Unlabeled photos: {summary['unlabeled']['images']} from {md(summary['unlabeled']['dir'])}, "
           f"{summary['unlabeled']['ratio']:g} for every labelled image in each student epoch; the students learn "
           "the teachers' answers on them (the distillation term only).", ""] if summary.get("unlabeled") else []),
        f"Skipped files: {len(summary['skipped_files'])}.",
        *[f"- {md(item['path'])}: {md(item['reason'])}" for item in summary["skipped_files"]],
        "",
        "## Cross-validation",
        "",
        "Validation accuracy of each fold's teacher, of the CE-only student (with `--baseline`), "
        "and of the distilled student's best epoch"
        + (", also with flip test-time augmentation (the mean of its predictions for the image and its mirror "
           "image)" if flipped else "") + " and top-5 (with more than 5 classes).",
        "",
        *_fold_table(summary, flipped),
        "",
        *_last_epoch_note(summary, settings.get("epochs")),
        *_verdict_section(summary),
        f"Out-of-fold accuracy (every image predicted by the fold that did not train on it): "
        f"{summary['oof_acc']:.4f}.",
    ]
    lines += ["", *_final_model_section(summary)]
    if "test_acc" in summary and "final_test_acc" not in summary:  # else the section above gives both
        lines += ["", f"Held-out test set ({summary['n_test']} images): the fold ensemble accuracy "
                  f"{summary['test_acc']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}."]
    lines += [
        "",
        "## Out-of-fold classification report",
        "",
        *code_block((run_dir / "classification_report.txt").read_text(encoding="utf-8").rstrip()),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    if histories:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    lines += [*_label_issues_section(run_dir, summary), *_calibration_section(summary)]
    lines += [f"## Most confidently misclassified ({mistakes})", "",
              "Each image as its fold's student saw it, coloured by Grad-CAM where the student found the class "
              "it wrongly predicted (red: most; not coloured where the student's last feature maps are too small at "
              "this input size to show where it looked).", "", "![misclassified](misclassified.png)", "",
              "## Configuration", "", *code_block(config.rstrip(), "yaml"), ""]
    out = run_dir / "report.md"
    write_text_atomic(out, "\n".join(lines))
    return out
