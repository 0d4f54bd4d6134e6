"""Can the student's confidence be trusted? Temperature scaling (Guo et al., ICML 2017)
fitted on the out-of-fold predictions, cross-fitted so that the figure reported is
honest: each fold's temperature is fitted on the other folds' predictions and judged
on its own. The expected calibration error (15 equal-width confidence bins), a
reliability diagram, and accuracy against coverage for a "not sure" threshold.

A fold's saved probabilities are softmaxes, so their logarithms are its logits up to a
constant per image, which a softmax ignores: softmax(log p / T) is the temperature-
scaled prediction.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
# Temperatures searched: far beyond what a trained classifier needs either way.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# "Not sure" thresholds shown in the report, with the accuracy and share of images answered at each.
CONFIDENCE_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, None))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the same model gives with its logits divided by `temperature`."""
    return softmax(log_probs(probs) / temperature, axis=1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels."""
    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                             bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)), method="bounded",
                             options={"xatol": 1e-5})
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images in the bin) x |accuracy - mean
    confidence| in it; a confidence of exactly 1 falls in the last bin."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


@dataclasses.dataclass
class Calibration:
    temperature: float  # fitted on every out-of-fold prediction: the final model's
    fold_temperatures: list[float]  # each fitted on the other folds
    fold_ece_before: list[float]
    fold_ece_after: list[float]
    ece_before: float  # out of fold, all images
    ece_after: float  # out of fold, each fold scaled by its cross-fitted temperature
    calibrated_probs: np.ndarray  # the cross-fitted probabilities

    @property
    def applied_temperature(self) -> float:
        """The final model's: the fitted temperature where cross-fitting shows that it lowers the
        out-of-fold ECE, otherwise 1 (a scaling that does not help is not applied)."""
        return self.temperature if self.ece_after < self.ece_before else 1.0

    def to_dict(self) -> dict:
        return {**{key: value for key, value in dataclasses.asdict(self).items() if key != "calibrated_probs"},
                "applied_temperature": self.applied_temperature}


def cross_fitted_calibration(probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray) -> Calibration:
    """Each fold scaled by the temperature fitted on the other folds; the ECE before and after."""
    logits, calibrated = log_probs(probs), np.empty_like(probs)
    temperatures, before, after = [], [], []
    for fold in sorted(set(fold_of.tolist())):
        own = fold_of == fold
        others = ~own if (~own).any() else own  # one fold alone has nothing else to learn from
        temperature = fit_temperature(logits[others], labels[others])
        calibrated[own] = softmax(logits[own] / temperature, axis=1)
        temperatures.append(temperature)
        before.append(expected_calibration_error(probs[own], labels[own]))
        after.append(expected_calibration_error(calibrated[own], labels[own]))
    return Calibration(fit_temperature(logits, labels), temperatures, before, after,
                       expected_calibration_error(probs, labels), expected_calibration_error(calibrated, labels),
                       calibrated)


def coverage_table(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS
                   ) -> list[dict]:
    """For each threshold P: the share of images whose top probability reaches P (answered; the
    rest would be "unsure") and the accuracy on those."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    rows = []
    for threshold in thresholds:
        answered = confidence >= threshold
        rows.append({"min_confidence": threshold, "coverage": float(answered.mean()),
                     "accuracy": float(correct[answered].mean()) if answered.any() else None})
    return rows


def save_reliability_diagram(path: Path, probs_before: np.ndarray, probs_after: np.ndarray, labels: np.ndarray,
                             bins: int = ECE_BINS) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for probs, name in ((probs_before, "as trained"), (probs_after, "temperature-scaled")):
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.minimum((confidence * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        axis.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used],
                  marker="o", label=f"{name} (ECE {100 * expected_calibration_error(probs, labels):.1f}%)")
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title("Reliability, out-of-fold predictions")
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
