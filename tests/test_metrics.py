"""Regression and interval metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from socmap.metrics import REGRESSION_METRICS, interval_metrics, r2_score, regression_metrics

OBSERVED = np.array([1.0, 2.0, 3.0, 4.0])
PREDICTED = np.array([2.0, 2.0, 3.0, 5.0])  # errors 1, 0, 0, 1


def test_regression_metrics_of_a_small_pair_equal_the_hand_computed_values():
    figures = regression_metrics(OBSERVED, PREDICTED)
    assert set(figures) == set(REGRESSION_METRICS) | {"n"}
    # SS_res 2, SS_tot 5 around the mean 2.5
    assert figures["r2"] == pytest.approx(0.6, rel=1e-12)
    assert figures["mae"] == pytest.approx(0.5, rel=1e-12)
    assert figures["rmse"] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert figures["bias"] == pytest.approx(0.5, rel=1e-12)
    # quartiles 1.75 and 3.25 (linear interpolation)
    assert figures["rpiq"] == pytest.approx(1.5 / math.sqrt(0.5), rel=1e-12)
    # covariance 1.25, variances 1.25 and 1.5, means 2.5 and 3
    assert figures["ccc"] == pytest.approx(2 * 1.25 / (1.25 + 1.5 + 0.25), rel=1e-12)
    assert figures["r2_pearson"] == pytest.approx(1.25**2 / (1.25 * 1.5), rel=1e-12)
    assert figures["n"] == 4


def test_bias_is_predicted_minus_observed():
    assert regression_metrics(OBSERVED, OBSERVED - 2.0)["bias"] == pytest.approx(-2.0)
    assert regression_metrics(OBSERVED, OBSERVED + 0.5)["bias"] == pytest.approx(0.5)


def test_a_shifted_prediction_correlates_perfectly_but_does_not_concord():
    observed, predicted = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])
    figures = regression_metrics(observed, predicted)
    assert figures["r2_pearson"] == pytest.approx(1.0)
    assert figures["ccc"] == pytest.approx(4 / 7)  # 2·(2/3) / (2/3 + 2/3 + 1²)
    assert figures["r2"] == pytest.approx(-0.5)  # 1 − 3 / 2


def test_r2_is_negative_when_worse_than_the_mean_and_nan_for_a_constant_target():
    assert r2_score([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-3.0)  # 1 − 8 / 2
    assert r2_score([[1.0, 2.0], [3.0, 4.0]], [[2.0, 2.0], [3.0, 5.0]]) == pytest.approx(0.6)  # raveled
    assert math.isnan(r2_score([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))


def test_a_perfect_prediction():
    figures = regression_metrics(OBSERVED, OBSERVED)
    assert (figures["r2"], figures["rmse"], figures["mae"]) == (1.0, 0.0, 0.0)
    assert figures["ccc"] == pytest.approx(1.0, rel=1e-12)
    assert figures["rpiq"] == math.inf


@pytest.mark.parametrize("observed, predicted, sizes", [([1.0, 2.0, 3.0], [1.0, 2.0], "3 and 2"),
                                                        ([], [], "0 and 0")])
def test_pairs_of_other_lengths_are_a_value_error(observed, predicted, sizes):
    with pytest.raises(ValueError, match=f"same non-zero length, got {sizes}"):
        regression_metrics(observed, predicted)
    with pytest.raises(ValueError, match=f"got {sizes}"):
        r2_score(observed, predicted)


def test_picp_counts_the_edges_as_inside_and_the_width_is_the_mean_width():
    observed = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    lower = np.array([0.0, 2.0, 3.5, 3.0, 6.0])
    upper = np.array([2.0, 2.0, 4.0, 5.0, 7.0])  # inside: yes, on both edges, below, yes, below
    assert interval_metrics(observed, lower, upper) == {"picp": pytest.approx(0.6),
                                                        "interval_width": pytest.approx(1.1)}
