"""What the out-of-fold predictions tell about the labels and the confidence. Every image
was predicted once by a model that never trained on it; from those probabilities
(oof_probs.npy) come the likely label issues (label_issues.py) and the cross-fitted
temperature scaling (calibration.py), written beside the run and summed up in
summary.json under `label_issues` and `calibration`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from utils.reporting.calibration import coverage_table, cross_fitted_calibration, save_reliability_diagram
from utils.reporting.label_issues import LABEL_ISSUES, find_label_issues, write_label_issues
from utils.runtime.files import write_array_atomic
from utils.runtime.layout import PREDICTED

OOF_PROBS = "oof_probs.npy"  # (images, classes) float32, rows as oof_predictions.csv, columns as summary's classes
RELIABILITY = "reliability.png"


def save_oof_probs(run_dir: Path, probs: np.ndarray) -> None:
    write_array_atomic(run_dir / OOF_PROBS, probs.astype(np.float32))


def load_oof_probs(run_dir: Path, oof_rows: Sequence[dict], classes: Sequence[str]) -> Optional[np.ndarray]:
    """The saved matrix; for a run from before it was saved, the folds' own validation
    probabilities (fold{k}/val_probs.npy, in the order of that fold's rows of
    oof_predictions.csv), when they agree with its predictions; otherwise None."""
    shape = (len(oof_rows), len(classes))
    try:
        probs = np.load(run_dir / OOF_PROBS)
        return probs if probs.shape == shape else None
    except (OSError, ValueError):
        pass
    probs = np.zeros(shape, dtype=np.float32)
    folds = np.array([int(row["fold"]) for row in oof_rows])
    for fold in sorted(set(folds.tolist())):
        try:
            fold_probs = np.load(run_dir / f"fold{fold}" / "val_probs.npy")
        except (OSError, ValueError):
            return None
        if fold_probs.shape != ((folds == fold).sum(), len(classes)):
            return None
        probs[folds == fold] = fold_probs
    predicted = [classes[i] for i in probs.argmax(axis=1)]
    return probs if predicted == [row[PREDICTED] for row in oof_rows] else None


def analyse_out_of_fold(run_dir: Path, paths: Sequence[str], classes: Sequence[str], labels: np.ndarray,
                        fold_of: np.ndarray, probs: np.ndarray, find_issues: bool) -> dict:
    """Label issues (when asked for) and calibration, written to the run; their summary."""
    calibration = cross_fitted_calibration(probs, labels, fold_of)
    save_reliability_diagram(run_dir / RELIABILITY, probs, calibration.calibrated_probs, labels)
    summary = {"calibration": {**calibration.to_dict(), "coverage": coverage_table(calibration.calibrated_probs,
                                                                                   labels)}}
    if find_issues:
        issues = find_label_issues(labels, probs)
        write_label_issues(run_dir, paths, classes, issues)
        summary["label_issues"] = {"count": len(issues), "file": LABEL_ISSUES}
    else:
        summary["label_issues"] = None
    return summary
