"""Which images may be in the wrong folder? Confident learning (Northcutt et al., JAIR 2021)
through cleanlab on the out-of-fold probabilities: every image was predicted by a model
that never trained on it, so an image the evidence confidently puts in another class is a
candidate to look at (not an error proven). Ranked by cleanlab's self-confidence label
quality score (the out-of-fold probability of the given label): lowest first."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from utils.data.images import read_image
from utils.runtime.files import write_csv_atomic

LABEL_ISSUES = "label_issues.csv"
GALLERY_DIR = "label_issues"
ISSUES_SHOWN = 12  # images shown in report.md
THUMBNAIL_SIDE = 224  # pixels, the longer side


@dataclasses.dataclass
class LabelIssue:
    index: int  # into the run's samples
    given: int
    suggested: int
    score: float  # the label quality score in [0, 1]: lower is more suspect


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """The images cleanlab flags, most suspect first."""
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    if len(np.unique(labels)) < 2 or len(labels) < 2:
        return []
    probs = np.clip(probs.astype(np.float64), 1e-12, None)
    probs /= probs.sum(axis=1, keepdims=True)
    # n_jobs=1: cleanlab's worker pool ends its forked workers with SIGTERM, which a run turns into
    # Ctrl-C (main.py), and each printed a traceback. The flagged images are the same either way.
    flagged = cleanlab_find(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    return [LabelIssue(int(i), int(labels[i]), int(probs[i].argmax()), float(scores[i])) for i in flagged]


def write_label_issues(run_dir: Path, paths: Sequence[str], classes: Sequence[str], issues: Sequence[LabelIssue]
                       ) -> None:
    """label_issues.csv (path, given label, suggested label, score) and thumbnails of the
    first ISSUES_SHOWN in label_issues/, which report.md shows."""
    write_csv_atomic(run_dir / LABEL_ISSUES, ["path", "given", "suggested", "score"],
                     [[paths[i.index], classes[i.given], classes[i.suggested], f"{i.score:.4f}"] for i in issues])
    gallery = run_dir / GALLERY_DIR
    gallery.mkdir(exist_ok=True)
    for old in gallery.glob("*.jpg"):
        old.unlink()
    for rank, issue in enumerate(issues[:ISSUES_SHOWN]):
        image = read_image(Path(paths[issue.index]))
        if image is None:
            continue
        factor = THUMBNAIL_SIDE / max(image.shape[:2])
        thumbnail = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(thumbnail, cv2.COLOR_RGB2BGR))
        if ok:
            encoded.tofile(str(gallery / f"{rank:02d}.jpg"))
