"""Did distillation help? The paired per-fold differences between the distilled
student and the CE-only student (same folds, same recipe, same epochs), their
mean with a 95% t-interval over folds, and a plain sentence."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass
class Verdict:
    differences: list[float]  # distilled - CE-only accuracy, per fold
    mean: float
    low: float  # the 95% interval of the mean difference
    high: float
    outcome: str  # helped | did not help | cannot tell
    sentence: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def distillation_verdict(distilled: Sequence[float], baseline: Sequence[float], what: str = "distillation"
                         ) -> Verdict:
    """`distilled` and `baseline`: validation accuracies per fold, in the same fold order; `what` the
    baseline lacks, as the sentence names it ("distillation", "the unlabeled photos")."""
    differences = np.asarray(distilled, dtype=float) - np.asarray(baseline, dtype=float)
    folds = len(differences)
    mean = float(differences.mean())
    spread = float(differences.std(ddof=1)) if folds > 1 else math.inf
    half = float(stats.t.ppf(0.975, folds - 1)) * spread / math.sqrt(folds) if folds > 1 else math.inf
    low, high = mean - half, mean + half
    interval = f"95% interval {_points(low)} to {_points(high)} points over {folds} folds"
    if low > 0:
        outcome, sentence = "helped", f"{what} helped: {_points(mean)} points of accuracy ({interval})"
    elif high < 0:
        outcome, sentence = "did not help", (f"{what} did not help: it cost {_points(-mean)[1:]} points of "
                                             f"accuracy ({interval})")
    else:
        outcome = "cannot tell"
        sentence = (f"cannot tell whether {what} helped: {_points(mean)} points of accuracy, but the "
                    f"{interval} includes 0 (more folds would narrow it)")
    return Verdict([float(d) for d in differences], mean, low, high, outcome, sentence)
