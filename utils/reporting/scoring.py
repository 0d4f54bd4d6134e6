"""Scoring predictions on a labelled folder: when the images sit in sub-folders named after the
model's classes (a test split laid out as the training data was), each image's folder is its
label, and inference ends with the accuracy, the per-class report and the confusion matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from utils.deploy.inference import Prediction
from utils.reporting.metrics import save_confusion_matrix, write_classification_report
from utils.runtime.errors import UserError, examples

SCORE_FILES = ("classification_report.txt", "confusion_matrix.png")  # what `score` writes


def folder_labels(image_root: Path, paths: Sequence[Path], classes: Sequence[str], mode: str) -> Optional[dict]:
    """path -> class name from the sub-folder of `image_root` each image is in; None when the
    images are not laid out by class (mode `auto`) or `mode` is `false`. With `true`, a layout
    that does not match the model's classes is refused in one line."""
    if mode == "false":
        return None
    if not image_root.is_dir():
        if mode == "true":
            raise UserError(f"--labels_from_folders true: {image_root} is a file, not a folder of class folders")
        return None
    folders = {}
    for path in paths:
        parts = path.relative_to(image_root).parts
        folders[str(path)] = parts[0] if len(parts) > 1 else "(top level)"
    unknown = sorted(set(folders.values()) - set(classes))
    if unknown and mode == "true":
        raise UserError(f"--labels_from_folders true: {examples(unknown, 5)} under {image_root} "
                        f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of the model "
                        f"({', '.join(classes)})")
    return None if unknown else folders


def score(predictions: Sequence[Prediction], labels: dict, classes: Sequence[str], out_dir: Path) -> str:
    """For one prediction or more: the accuracy (of the top class, also where the prediction was
    `unsure`), the per-class report and the confusion matrix, written to `out_dir`; the text to print."""
    index = {name: k for k, name in enumerate(classes)}
    truth = np.array([index[labels[p.path]] for p in predictions])
    predicted = np.array([index[p.top[0][0]] for p in predictions])
    out_dir.mkdir(parents=True, exist_ok=True)
    report_name, matrix_name = SCORE_FILES
    report = write_classification_report(out_dir / report_name, truth, predicted, classes)
    save_confusion_matrix(out_dir / matrix_name, truth, predicted, classes,
                          f"{len(predictions)} labelled images")
    accuracy = float(np.mean(truth == predicted))
    return (f"accuracy {accuracy:.4f} on {len(predictions)} images labelled by their folders\n{report}"
            f"report and confusion matrix in {out_dir}")
