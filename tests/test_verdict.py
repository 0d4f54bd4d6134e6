"""The verdict's arithmetic: paired differences, their mean and 95% t-interval, the sentence."""
import math

import pytest

from utils.reporting.verdict import distillation_verdict


def test_interval_is_the_t_interval_of_the_paired_differences():
    distilled, baseline = [0.80, 0.78, 0.83], [0.76, 0.75, 0.77]
    verdict = distillation_verdict(distilled, baseline)
    differences = [0.04, 0.03, 0.06]
    assert verdict.differences == pytest.approx(differences)
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert verdict.mean == pytest.approx(mean)
    assert (verdict.low, verdict.high) == pytest.approx((mean - half, mean + half))
    assert verdict.outcome == "helped"
    assert verdict.sentence.startswith("distillation helped: +4.3 points")


def test_a_loss_on_every_fold_did_not_help_and_a_mixed_result_cannot_tell():
    worse = distillation_verdict([0.70, 0.71, 0.69, 0.70, 0.72], [0.73, 0.74, 0.72, 0.74, 0.75])
    assert worse.outcome == "did not help" and "it cost 3.2 points" in worse.sentence
    mixed = distillation_verdict([0.75, 0.70, 0.73], [0.72, 0.74, 0.72])
    assert mixed.outcome == "cannot tell" and "includes 0" in mixed.sentence
    assert mixed.low < 0 < mixed.high
