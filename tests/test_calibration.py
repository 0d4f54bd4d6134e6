"""What the out-of-fold predictions tell: label issues on a constructed case, temperature
scaling recovering a known temperature, the ECE against a hand computation, and the
cross-fitting that keeps each fold's temperature away from its own images."""
import dataclasses

import numpy as np
import pytest
from scipy.special import softmax

from utils.reporting.calibration import (
    coverage_table,
    cross_fitted_calibration,
    expected_calibration_error,
    fit_temperature,
)
from utils.reporting.label_issues import find_label_issues


def test_label_issues_are_the_images_whose_probabilities_contradict_their_label():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), labels] = 0.9
    probs += rng.uniform(0, 0.02, probs.shape)
    wrong = [3, 50, 97]  # given their class, but the evidence says the next one, confidently
    for i in wrong:
        probs[i] = 0.02
        probs[i, (labels[i] + 1) % 3] = 0.96
    probs /= probs.sum(axis=1, keepdims=True)
    issues = find_label_issues(labels, probs)
    assert sorted(issue.index for issue in issues) == wrong
    for issue in issues:
        assert issue.given == labels[issue.index] and issue.suggested == (labels[issue.index] + 1) % 3
        assert issue.score < 0.05
    assert find_label_issues(labels, np.eye(3)[labels] * 0.9 + 0.1 / 3) == []


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=3.0, size=(4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits, axis=1)])
    overconfident = true_logits * 2.5  # a model 2.5x too sure of itself
    assert fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.06)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.06)


def test_ece_against_a_hand_computation():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.62, 0.38], [0.3, 0.7], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 1, 0])
    # Bins of width 1/15: 0.95 and 1.0 share the last bin (14), 0.62 is in bin 9, 0.7 in bin 10.
    last = 3 / 5 * abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3)
    expected = last + 1 / 5 * abs(1 - 0.62) + 1 / 5 * abs(1 - 0.7)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_cross_fitting_halves_the_ece_of_an_overconfident_model_and_reports_each_fold():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2.0, size=(3000, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])
    probs = softmax(logits * 3.0, axis=1)
    fold_of = np.arange(3000) % 3
    calibration = cross_fitted_calibration(probs, labels, fold_of)
    assert len(calibration.fold_temperatures) == 3
    assert all(t == pytest.approx(3.0, rel=0.15) for t in calibration.fold_temperatures)
    assert calibration.ece_after < calibration.ece_before / 2
    assert calibration.applied_temperature == calibration.temperature
    # Where the cross-fitted error went up, the final model keeps its own probabilities.
    worse = dataclasses.replace(calibration, ece_after=calibration.ece_before + 0.01)
    assert worse.applied_temperature == 1.0 and worse.to_dict()["applied_temperature"] == 1.0
    table = coverage_table(calibration.calibrated_probs, labels, (0.0, 0.9))
    assert table[0]["coverage"] == 1.0 and table[1]["coverage"] < 1.0
    assert table[1]["accuracy"] > table[0]["accuracy"]
