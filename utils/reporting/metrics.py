"""Accuracy, F1, classification reports and confusion-matrix images (scikit-learn, matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: training machines often have no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, classification_report, f1_score

from utils.runtime.files import write_atomically, write_text_atomic

# Class names are drawn as they are: a name with a dollar sign is not TeX for matplotlib to parse.
matplotlib.rcParams["text.parse_math"] = False


def save_figure(fig: plt.Figure, path: Path, dpi: int) -> None:
    """A matplotlib figure as a PNG file, written whole or not at all, then closed."""
    fig.tight_layout()
    write_atomically(path, lambda partial: fig.savefig(partial, dpi=dpi, format="png"))
    plt.close(fig)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(accuracy_score(labels, preds))


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """The share of images whose true class is among the k most probable."""
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def top_k(num_classes: int) -> Optional[int]:
    """The k reported beside top-1: 5, for more than 5 classes."""
    return 5 if num_classes > 5 else None


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    return float(f1_score(labels, preds, labels=list(range(num_classes)), average="macro", zero_division=0))


def write_classification_report(path: Path, labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> str:
    report = classification_report(
        labels, preds, labels=list(range(len(classes))), target_names=list(classes), digits=4, zero_division=0
    )
    write_text_atomic(path, report)
    return report


ANNOTATED_CLASSES = 30
MAX_FIGURE_INCHES = 20.0


def save_confusion_matrix(path: Path, labels: np.ndarray, preds: np.ndarray, classes: Sequence[str],
                          title: str) -> None:
    """Counts in large type, so that the image reads without zooming where VisualDL shows it
    (about 400 pixels wide) as well as in report.md. Beyond ANNOTATED_CLASSES the counts are
    colour only, every k-th class is named and the image stops growing: 200 classes would
    otherwise take minutes to draw 40,000 numbers on a 9,000-pixel image."""
    many = len(classes) > ANNOTATED_CLASSES
    size = min(MAX_FIGURE_INCHES, max(5.0, 0.55 * len(classes) + 2.5))
    font = 16 if len(classes) <= 8 else 12 if len(classes) <= 20 else 8
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        labels, preds, labels=list(range(len(classes))), display_labels=list(classes), include_values=not many,
        ax=ax, colorbar=many, xticks_rotation=45, cmap="Blues", text_kw={"fontsize": font},
    )
    ax.tick_params(labelsize=font - 2)
    if many:  # every class named would be unreadable and slow to draw: every k-th, as many as fit
        every = -(-len(classes) // ANNOTATED_CLASSES)
        ticks = list(range(0, len(classes), every))
        ax.set_xticks(ticks, [classes[k] for k in ticks], rotation=90)
        ax.set_yticks(ticks, [classes[k] for k in ticks])
    ax.set_xlabel("predicted", fontsize=font - 2)
    ax.set_ylabel("true", fontsize=font - 2)
    ax.set_title(title, fontsize=font - 3)
    save_figure(fig, path, dpi=80)
