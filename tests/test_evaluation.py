"""Error-estimation estimators against closed forms over many observation masks.

A fixed small matrix (N = 200 cells, true ratings, fixed predictions, value-based
propensities) is observed R times with independent Bernoulli masks. Tolerances
are 4 Monte Carlo standard errors taken from the spread of the replicates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from estimators.evaluation import (
    ESTIMATORS,
    Estimate,
    estimate_error,
    ips_variance,
    naive_expectation,
)
from estimators.metrics import cell_errors
from sim.config import ConfigError

N_CELLS = 200
REPLICATES = 4000
MARGINAL = (0.2, 0.15, 0.2, 0.25, 0.2)


def value_propensity(ratings: np.ndarray) -> np.ndarray:
    """p = 0.5 for stars >= 4, halved for each star below 4 (value-based MNAR)."""
    return 0.5 * 0.5 ** np.maximum(4 - ratings, 0)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(2016)
    ratings = rng.choice(np.arange(1, 6), size=N_CELLS, p=MARGINAL)
    # Predictions lean high and some fall outside [1, 5]; cell_errors clips them.
    predictions = np.clip(4.0 + rng.normal(0.0, 1.2, N_CELLS), 0.0, 6.0)
    p_observe = value_propensity(ratings)
    masks = np.random.default_rng(1).random((REPLICATES, N_CELLS)) < p_observe
    assert masks.any(axis=1).all()  # no empty draw, so IPS needs no special case
    return predictions, ratings, p_observe, masks


@pytest.fixture(scope="module", params=["mse", "mae"])
def draws(request, world):
    """Per loss: errors of all cells, propensities, and each estimator's draws."""
    predictions, ratings, p_observe, masks = world
    errors = cell_errors(predictions, ratings, request.param)
    estimates = {
        name: np.array([estimate_error(errors[m], p_observe[m], N_CELLS, name)
                        for m in masks])
        for name in ESTIMATORS
    }
    return errors, p_observe, estimates


def mc_se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size))


def column(estimates: np.ndarray, field: str) -> np.ndarray:
    return estimates[:, Estimate._fields.index(field)]


def test_ips_is_unbiased(draws):
    errors, _, estimates = draws
    values = column(estimates["ips"], "value")
    assert abs(values.mean() - errors.mean()) <= 4 * mc_se(values)


def test_ips_spread_matches_horvitz_thompson(draws):
    errors, p_observe, estimates = draws
    values = column(estimates["ips"], "value")
    sd = values.std(ddof=1)
    # Standard error of a sample SD: sd * sqrt((kurtosis - 1) / (4 R)).
    kurtosis = ((values - values.mean()) ** 4).mean() / values.var() ** 2
    se_sd = sd * math.sqrt((kurtosis - 1) / (4 * values.size))
    sd_ht = math.sqrt(ips_variance(errors, p_observe))
    assert 0.15 * sd_ht >= 4 * se_sd  # the 15% band is several SE wide
    assert abs(sd - sd_ht) <= 0.15 * sd_ht


def test_ips_squared_se_is_unbiased_for_ht_variance(draws):
    errors, p_observe, estimates = draws
    se_squared = column(estimates["ips"], "se") ** 2
    truth = ips_variance(errors, p_observe)
    assert abs(se_squared.mean() - truth) <= 4 * mc_se(se_squared)


def test_naive_matches_its_exact_expectation_and_misses_the_truth(draws):
    errors, p_observe, estimates = draws
    values = column(estimates["naive"], "value")
    expected = naive_expectation(errors, p_observe)
    assert abs(values.mean() - expected) <= 4 * mc_se(values)
    assert abs(values.mean() - errors.mean()) > 10 * mc_se(values)


def test_snips_delta_method_se_matches_spread(draws):
    # The delta method is a large-sample approximation; at N = 200 it is held
    # to the same 15% band as the exact HT formula above.
    _, _, estimates = draws
    values = column(estimates["snips"], "value")
    rms_se = math.sqrt((column(estimates["snips"], "se") ** 2).mean())
    assert abs(rms_se - values.std(ddof=1)) <= 0.15 * values.std(ddof=1)


# --- exact expectations by enumerating every mask of a tiny matrix -------------


def enumerate_masks(p_observe: np.ndarray):
    """Yield (mask, probability) for all 2^N observation masks."""
    for bits in itertools.product([False, True], repeat=p_observe.size):
        mask = np.array(bits)
        yield mask, float(np.prod(np.where(mask, p_observe, 1 - p_observe)))


def test_naive_expectation_equals_enumeration():
    rng = np.random.default_rng(3)
    errors = rng.uniform(0.0, 4.0, 9)
    p_observe = rng.uniform(0.05, 1.0, 9)
    p_observe[4] = 1.0
    total = probability = 0.0
    for mask, prob in enumerate_masks(p_observe):
        if mask.any():
            total += prob * errors[mask].mean()
            probability += prob
    assert naive_expectation(errors, p_observe) == pytest.approx(
        total / probability, rel=1e-12)


def test_naive_expectation_conditions_on_some_observation():
    # One cell: naive is e whenever it is observed, whatever p is.
    assert naive_expectation([2.5], [0.01]) == pytest.approx(2.5, rel=1e-12)


def test_ips_variance_equals_enumeration():
    rng = np.random.default_rng(4)
    errors = rng.uniform(0.0, 4.0, 8)
    p_observe = rng.uniform(0.05, 1.0, 8)
    values, probs = [], []
    for mask, prob in enumerate_masks(p_observe):
        values.append((errors[mask] / p_observe[mask]).sum() / errors.size)
        probs.append(prob)
    values, probs = np.array(values), np.array(probs)
    mean = (probs * values).sum()
    assert mean == pytest.approx(errors.mean(), rel=1e-12)  # unbiased, exactly
    variance = (probs * (values - mean) ** 2).sum()
    assert ips_variance(errors, p_observe) == pytest.approx(variance, rel=1e-12)


# --- SNIPS: consistent, not unbiased ---------------------------------------------

TINY_ERRORS = np.array([4.0, 0.0, 0.0, 1.0])
TINY_P = np.array([0.2, 0.9, 0.9, 0.5])


def snips_draws(errors, p_observe, replicates, seed):
    masks = np.random.default_rng(seed).random((replicates, errors.size)) < p_observe
    masks = masks[masks.any(axis=1)]  # SNIPS is defined given one observed cell
    return np.array([
        estimate_error(errors[m], p_observe[m], errors.size, "snips").value
        for m in masks
    ])


def test_snips_is_biased_on_a_tiny_matrix_as_enumeration_predicts():
    total = probability = 0.0
    for mask, prob in enumerate_masks(TINY_P):
        if mask.any():
            weight = 1 / TINY_P[mask]
            total += prob * (weight * TINY_ERRORS[mask]).sum() / weight.sum()
            probability += prob
    exact = total / probability
    values = snips_draws(TINY_ERRORS, TINY_P, 4000, seed=5)
    truth = TINY_ERRORS.mean()
    assert abs(values.mean() - exact) <= 4 * mc_se(values)
    assert abs(values.mean() - truth) > 4 * mc_se(values)


def test_snips_bias_shrinks_with_size():
    truth = TINY_ERRORS.mean()
    small = snips_draws(TINY_ERRORS, TINY_P, 4000, seed=6)
    large = snips_draws(np.tile(TINY_ERRORS, 100), np.tile(TINY_P, 100), 2000, seed=7)
    bias_small, bias_large = small.mean() - truth, large.mean() - truth
    assert abs(bias_large) <= 4 * mc_se(large)
    margin = 4 * math.hypot(mc_se(small), mc_se(large))
    assert abs(bias_small) - abs(bias_large) > margin


# --- hand-computed values ----------------------------------------------------------


def test_hand_computed_estimates():
    errors, p_observe, n_cells = [1.0, 4.0], [0.5, 1.0], 4
    ips = estimate_error(errors, p_observe, n_cells, "ips")
    assert ips.value == pytest.approx((2 + 4) / 4)
    assert ips.se == pytest.approx(math.sqrt((1 * 0.5 / 0.25 + 0) / 16))
    assert (ips.n, ips.ess, ips.max_weight) == (2, pytest.approx(9 / 5), 2.0)
    snips = estimate_error(errors, p_observe, n_cells, "snips")
    assert snips.value == pytest.approx(6 / 3)
    # residuals e - 2 = [-1, 2], weights [2, 1]: (4 * 1 * 0.5 + 0) / 3^2
    assert snips.se == pytest.approx(math.sqrt(2 / 9))
    naive = estimate_error(errors, p_observe, n_cells, "naive")
    assert naive.value == pytest.approx(2.5)
    assert naive.se == pytest.approx(np.std(errors, ddof=1) / math.sqrt(2))
    assert (naive.ess, naive.max_weight) == (2.0, 1.0)
    for est in (ips, snips, naive):
        assert est.ci_low == pytest.approx(est.value - 1.959964 * est.se)
        assert est.ci_high == pytest.approx(est.value + 1.959964 * est.se)


def test_naive_needs_no_propensity():
    assert estimate_error([1.0, 3.0], None, 10, "naive").value == 2.0


def test_single_cell_gives_infinite_se_where_undefined():
    assert estimate_error([2.0], [0.5], 3, "naive").se == math.inf
    assert estimate_error([2.0], [0.5], 3, "snips").se == math.inf
    ips = estimate_error([2.0], [0.5], 3, "ips")
    assert ips.se == pytest.approx(math.sqrt(4 * 0.5 / 0.25) / 3)


def test_all_cells_observed_with_certainty_has_zero_se():
    for name in ("ips", "snips"):
        est = estimate_error([1.0, 2.0, 6.0], [1.0, 1.0, 1.0], 3, name)
        assert (est.value, est.se) == (pytest.approx(3.0), 0.0)


# --- refusals -----------------------------------------------------------------------

GOOD = dict(errors=[1.0, 2.0, 3.0, 4.0], propensity=[0.5, 0.5, 0.5, 0.5],
            n_cells=10, estimator="ips")

REFUSALS = [
    ("p-zero", dict(propensity=[0.5, 0.5, 0.5, 0.0]),
     r"propensity must be in \(0, 1\], got 0.0 \(index 3\)"),
    ("p-negative", dict(propensity=[-0.1, 0.5, 0.5, 0.5]),
     r"propensity must be in \(0, 1\], got -0.1 \(index 0\)"),
    ("p-above-one", dict(propensity=[0.5, 1.5, 0.5, 0.5]),
     r"propensity must be in \(0, 1\], got 1.5 \(index 1\)"),
    ("p-nan", dict(propensity=[0.5, 0.5, math.nan, 0.5]),
     r"propensity must be in \(0, 1\], got nan \(index 2\)"),
    ("p-missing", dict(propensity=None),
     "propensity must be an array of p_observe for estimator 'ips', got None"),
    ("length", dict(propensity=[0.5, 0.5, 0.5]),
     r"propensity must have the same length as errors \(4\), got 3"),
    ("no-observed", dict(errors=[], propensity=[]),
     r"errors must be non-empty \(at least one observed cell\), got 0 cells"),
    ("errors-nan", dict(errors=[1.0, math.nan, 3.0, 4.0]),
     r"errors must be finite, got nan \(index 1\)"),
    ("errors-2d", dict(errors=[[1.0, 2.0, 3.0, 4.0]]),
     r"errors must be a 1-D array, got shape \(1, 4\)"),
    ("estimator", dict(estimator="dr"),
     "estimator must be one of naive, ips, snips, got 'dr'"),
    ("n-cells-small", dict(n_cells=3),
     r"n_cells must be an integer >= the number of observed cells \(4\), got 3"),
    ("n-cells-float", dict(n_cells=10.0),
     r"n_cells must be an integer >= the number of observed cells \(4\), got 10.0"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_estimate_error_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        estimate_error(**{**GOOD, **changes})


CLOSED_FORM_REFUSALS = [
    ("p-zero", [1.0, 2.0], [0.5, 0.0],
     r"p_all must be in \(0, 1\], got 0.0 \(index 1\)"),
    ("length", [1.0, 2.0], [0.5],
     r"p_all must have the same length as errors_all \(2\), got 1"),
    ("empty", [], [],
     r"errors_all must be non-empty \(at least one cell\), got 0 cells"),
    ("errors-nan", [math.nan], [0.5],
     r"errors_all must be finite, got nan \(index 0\)"),
]


@pytest.mark.parametrize("function", [ips_variance, naive_expectation])
@pytest.mark.parametrize("errors_all, p_all, message",
                         [r[1:] for r in CLOSED_FORM_REFUSALS],
                         ids=[r[0] for r in CLOSED_FORM_REFUSALS])
def test_closed_form_refusals(function, errors_all, p_all, message):
    with pytest.raises(ConfigError, match=message):
        function(errors_all, p_all)
