"""Position-bias estimation on synthetic position-based-model logs, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.position import (
    position_bias_em,
    position_bias_randpair,
    predict_relevance,
    propensity_error,
)
from sim.config import ConfigError

BETA, BIAS = np.array([1.0, -0.7]), -1.0  # true relevance: sigmoid(x @ BETA + BIAS)
R = 200  # replicates for the statistical tests


def pbm_log(rng, n_visits, theta, share=0.0):
    """A tiny PBM log: K items per visit ranked by a noisy relevance score.

    Returns per-impression arrays (n_visits * K,): original ranks, shown ranks,
    clicks, swapped flags and features (n, 2). On a share of visits rank 1 is
    swapped with a uniform rank 2..K (RandPair).
    """
    n_ranks = theta.size
    features = rng.normal(size=(n_visits, n_ranks, 2))
    score = features @ BETA + BIAS
    order = np.argsort(-(score + rng.normal(size=score.shape)), axis=1)
    features = np.take_along_axis(features, order[..., None], axis=1)
    relevance = 1.0 / (1.0 + np.exp(-np.take_along_axis(score, order, axis=1)))

    original = np.broadcast_to(np.arange(1, n_ranks + 1), (n_visits, n_ranks))
    swapped = rng.random(n_visits) < share
    partner = rng.integers(2, n_ranks + 1, n_visits)
    shown = original.copy()
    shown[swapped, 0] = partner[swapped]
    shown[swapped, partner[swapped] - 1] = 1

    examined = rng.random(shown.shape) < theta[shown - 1]
    clicks = examined & (rng.random(shown.shape) < relevance)
    flags = np.repeat(swapped, n_ranks)
    return (original.ravel(), shown.ravel(), clicks.ravel().astype(int), flags,
            features.reshape(-1, 2))


def inverse_rank(n_ranks, eta=1.0):
    return (1.0 / np.arange(1, n_ranks + 1)) ** eta


# ------------------------------------------------------------------ RandPair

def test_randpair_hand_computed():
    # Control: rank-1 items of two unswapped visits, one click (rate 1/2).
    # Swap visits moved the rank-1 item to rank 2 (clicked) and rank 3 (not).
    original = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    shown = np.array([1, 2, 3, 1, 2, 3, 2, 1, 3, 3, 2, 1])
    clicks = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1])
    swapped = np.repeat([False, False, True, True], 3)
    result = position_bias_randpair(original, shown, clicks, swapped, n_ranks=3)
    assert result.theta.tolist() == [1.0, 2.0, 0.0]
    assert result.n_impressions.tolist() == [2, 1, 1]
    assert result.n_clicks.tolist() == [1, 1, 0]
    # Delta method: rank 2 has p_k = 1, p_1 = 1/2: 0 + 1 * (1/4 / 2) / (1/16) = 2.
    assert result.stderr.tolist() == pytest.approx([0.0, np.sqrt(2.0), 0.0])


def test_randpair_recovers_theta_and_its_standard_error_over_replicates():
    theta = inverse_rank(5)
    rng = np.random.default_rng(11)
    estimates, stderrs = [], []
    for _ in range(R):
        original, shown, clicks, swapped, _ = pbm_log(rng, 3000, theta, share=0.5)
        result = position_bias_randpair(original, shown, clicks, swapped, 5)
        estimates.append(result.theta)
        stderrs.append(result.stderr)
    estimates, stderrs = np.array(estimates), np.array(stderrs)
    spread = estimates.std(axis=0, ddof=1)

    # Unbiased up to an O(1/n) ratio bias, far below the Monte Carlo error.
    mc_se = spread / np.sqrt(R)
    assert np.all(np.abs(estimates.mean(axis=0) - theta) <= 4 * mc_se + 1e-12)
    # The delta-method SE matches the replicate spread; a sample sd over R
    # replicates has relative standard error about 1 / sqrt(2 (R - 1)).
    sd_se = spread[1:] / np.sqrt(2 * (R - 1))
    assert np.all(np.abs(stderrs.mean(axis=0)[1:] - spread[1:]) <= 4 * sd_se)


def test_naive_click_ratio_is_biased_where_randpair_is_not():
    # The logger ranks by a noisy relevance score, so the click-rate ratio
    # mixes position bias with relevance: it is far outside sampling error.
    theta = inverse_rank(5)
    original, shown, clicks, swapped, _ = pbm_log(np.random.default_rng(2), 40_000,
                                                  theta, share=0.5)
    result = position_bias_randpair(original, shown, clicks, swapped, 5)
    plain = ~swapped
    rate = np.bincount(shown[plain] - 1, weights=clicks[plain]) / np.bincount(
        shown[plain] - 1)
    naive = rate / rate[0]
    assert np.all(np.abs(result.theta - theta)[1:] <= 4 * result.stderr[1:])
    assert np.all(theta[1:] - naive[1:] > 5 * result.stderr[1:])


# ------------------------------------------------------------- regression EM

def test_em_is_consistent_over_replicates_with_rank_depending_on_relevance():
    theta = inverse_rank(5)
    rng = np.random.default_rng(5)
    estimates, naive = [], []
    for _ in range(R):
        _, shown, clicks, _, features = pbm_log(rng, 4000, theta)
        result = position_bias_em(shown, clicks, features, 5)
        assert result.converged
        estimates.append(result.theta)
        rate = np.bincount(shown - 1, weights=clicks) / np.bincount(shown - 1)
        naive.append(rate / rate[0])
    estimates, naive = np.array(estimates), np.array(naive)
    mc_se = estimates.std(axis=0, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(estimates.mean(axis=0) - theta) <= 4 * mc_se + 1e-12)
    # The same test fails for the naive click-rate ratio on the same logs.
    naive_se = naive.std(axis=0, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(naive.mean(axis=0) - theta)[1:] > 4 * naive_se[1:])


def test_em_error_shrinks_with_log_size():
    theta = inverse_rank(5)
    rng = np.random.default_rng(9)
    errors = {}
    for n_visits in (1000, 16_000):
        values = []
        for _ in range(20):
            _, shown, clicks, _, features = pbm_log(rng, n_visits, theta)
            fit = position_bias_em(shown, clicks, features, 5)
            values.append(propensity_error(fit.theta, theta, ranks=(2, 3, 4, 5)))
        errors[n_visits] = np.array(values)
    # Root-n consistency predicts a ratio of 4; ask for at least 2.
    assert errors[16_000].mean() < errors[1000].mean() / 2


def test_em_log_likelihood_never_decreases_and_fit_is_self_consistent():
    theta = inverse_rank(6, eta=0.5)
    _, shown, clicks, _, features = pbm_log(np.random.default_rng(3), 5000, theta)
    result = position_bias_em(shown, clicks, features, 6)
    assert result.converged and result.log_likelihood.size == result.n_iter + 1
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)
    assert result.theta[0] == 1.0 and result.theta_fitted[0] == 1.0
    np.testing.assert_allclose(predict_relevance(result.coef, features),
                               result.relevance)
    # At the fixed point one more EM step, written out here from the paper's
    # posteriors, leaves theta_2..K unchanged, and the intercept's score
    # (mean posterior relevance minus mean fitted relevance) is zero.
    examine = result.theta_fitted[shown - 1]
    both = examine * result.relevance
    post_examine = np.where(clicks == 1, 1.0, (examine - both) / (1 - both))
    post_relevant = np.where(clicks == 1, 1.0, (result.relevance - both) / (1 - both))
    step = np.bincount(shown - 1, weights=post_examine) / np.bincount(shown - 1)
    np.testing.assert_allclose(step[1:], result.theta_fitted[1:], atol=1e-5)
    assert abs(post_relevant.mean() - result.relevance.mean()) < 1e-5


def test_em_without_anchor_reaches_the_same_curve():
    theta = inverse_rank(4)
    _, shown, clicks, _, features = pbm_log(np.random.default_rng(4), 20_000, theta)
    anchored = position_bias_em(shown, clicks, features, 4)
    free = position_bias_em(shown, clicks, features, 4, iterations=2000,
                            anchor_top=False)
    assert free.converged
    assert free.log_likelihood[-1] >= anchored.log_likelihood[-1] - 1e-9
    # Both are maximum-likelihood fits on one log; the free one may only move
    # along the weak scale direction, a fraction of the sampling error.
    spread = np.abs(anchored.theta - theta)[1:].max()
    assert np.abs(free.theta - anchored.theta).max() < spread


# ---------------------------------------------------------- propensity error

def test_propensity_error_hand_computed_and_scale_free():
    theta_hat, theta_true = np.array([2.0, 1.0, 0.5]), np.array([1.0, 0.5, 0.5])
    # Relative to rank 1: (1, .5, .25) vs (1, .5, .5): errors 0 and 1/2.
    assert propensity_error(theta_hat, theta_true, ranks=(2, 3)) == 0.25
    assert propensity_error(3 * theta_hat, theta_true / 7, ranks=(2, 3)) == 0.25
    assert propensity_error(inverse_rank(10), inverse_rank(10)) == 0.0


# ------------------------------------------------------------------ refusals

O = np.array([1, 2, 1, 2])
S = np.array([1, 2, 2, 1])
CL = np.array([1, 0, 1, 0])
SW = np.array([False, False, True, True])
X = np.array([[0.1], [0.5], [-0.3], [0.9]])
T = inverse_rank(3)

BAD = [
    ("rp-empty", lambda: position_bias_randpair([], [], [], [], 2),
     r"original_ranks must hold at least one impression, got an empty array"),
    ("rp-k-small", lambda: position_bias_randpair(O, S, CL, SW, 1),
     r"n_ranks must be an integer >= 2, got 1"),
    ("rp-k-mismatch", lambda: position_bias_randpair(O + 1, S, CL, SW, 2),
     r"original_ranks must be in 1..2 \(n_ranks\), got 3 \(impression 1\)"),
    ("rp-rank-float", lambda: position_bias_randpair(O * 1.0, S, CL, SW, 2),
     r"original_ranks must be integer ranks 1..2, got dtype float64"),
    ("rp-length", lambda: position_bias_randpair(O, S[:3], CL, SW, 2),
     r"shown_ranks must have one entry per impression \(4\), got 3"),
    ("rp-clicks", lambda: position_bias_randpair(O, S, CL * 2, SW, 2),
     r"clicks must be 0 or 1, got 2 \(impression 0\)"),
    ("rp-2d", lambda: position_bias_randpair(O[:, None], S, CL, SW, 2),
     r"original_ranks must be a 1-d \(impressions,\) array, got shape \(4, 1\)"),
    ("rp-no-swaps", lambda: position_bias_randpair(O, O, CL, SW & False, 2),
     r"swapped must flag at least one swap visit that moved the rank-1 item"),
    ("rp-moved-unflagged", lambda: position_bias_randpair(O, S, CL, ~SW, 2),
     r"shown_ranks must equal original_ranks off swap visits, got shown 2 for "
     r"original 1 \(impression 2\)"),
    ("rp-not-rank-one", lambda: position_bias_randpair(
        np.array([1, 2, 3, 2, 3]), np.array([1, 2, 3, 3, 2]), np.ones(5, int),
        np.array([0, 0, 0, 1, 1]), 3),
     r"a swap must exchange rank 1 with another rank, got original 2 shown at 3"),
    ("rp-rank-missing", lambda: position_bias_randpair(O, S, CL, SW, 3),
     r"swap visits that exchanged rank 1 with rank 3"),
    ("rp-no-control", lambda: position_bias_randpair(O[2:], S[2:], CL[2:], SW[2:], 2),
     r"need at least one of the unswapped visits for every rank 1..2, got none"),
    ("rp-no-top-click", lambda: position_bias_randpair(O, S, 1 - CL, SW, 2),
     r"the rank-1 items of the 1 unswapped visits must have at least one click"),
    ("em-empty", lambda: position_bias_em([], [], np.zeros((0, 1)), 2),
     r"ranks must hold at least one impression, got an empty array"),
    ("em-k-mismatch", lambda: position_bias_em(S, CL, X, 3),
     r"ranks must include every rank 1..3, got no impression at rank 3"),
    ("em-rank-high", lambda: position_bias_em(S + 1, CL, X, 2),
     r"ranks must be in 1..2 \(n_ranks\), got 3 \(impression 1\)"),
    ("em-clicks", lambda: position_bias_em(S, CL * 0.5, X, 2),
     r"clicks must be 0 or 1, got 0.5 \(impression 0\)"),
    ("em-features-shape", lambda: position_bias_em(S, CL, X[:3], 2),
     r"features must have shape \(n_impressions, f\) = \(4, f\), got \(3, 1\)"),
    ("em-features-nan", lambda: position_bias_em(S, CL, X * np.nan, 2),
     r"features must be finite, got nan \(impression 0, feature 0\)"),
    ("em-features-constant", lambda: position_bias_em(S, CL, np.ones((4, 1)), 2),
     r"features must have linearly independent columns"),
    ("em-no-top-click", lambda: position_bias_em(S, np.array([0, 1, 1, 0]), X, 2),
     r"clicks at rank 1 must include at least one click, got 0 over 2"),
    ("em-iterations", lambda: position_bias_em(S, CL, X, 2, iterations=0),
     r"iterations must be an integer >= 1, got 0"),
    ("em-tol", lambda: position_bias_em(S, CL, X, 2, tol=-1.0),
     r"tol must be a finite number >= 0, got -1.0"),
    ("em-l2", lambda: position_bias_em(S, CL, X, 2, l2=float("nan")),
     r"l2 must be a finite number >= 0, got nan"),
    ("em-anchor", lambda: position_bias_em(S, CL, X, 2, anchor_top=1),
     r"anchor_top must be True or False, got 1"),
    ("relevance-coef", lambda: predict_relevance(np.zeros(3), X),
     r"coef must have shape \(f \+ 1,\) for features of shape \(n, f\), got coef "
     r"\(3,\) and features \(4, 1\)"),
    ("pe-length", lambda: propensity_error(T, inverse_rank(4), ranks=(2, 3)),
     r"theta_hat must have the length of theta_true \(4 ranks\), got 3"),
    ("pe-true-zero", lambda: propensity_error(T, np.array([1.0, 0.0, 0.5]),
                                              ranks=(2, 3)),
     r"theta_true must be > 0 at every rank, got 0.0 \(rank 2\)"),
    ("pe-hat-top-zero", lambda: propensity_error(np.array([0.0, 1, 1]), T,
                                                 ranks=(2, 3)),
     r"theta_hat must be > 0 at rank 1, got 0.0 \(rank 1\)"),
    ("pe-hat-negative", lambda: propensity_error(np.array([1.0, -1, 1]), T,
                                                 ranks=(2, 3)),
     r"theta_hat must be >= 0, got -1.0 \(rank 2\)"),
    ("pe-nan", lambda: propensity_error(np.array([1.0, np.nan, 1]), T, ranks=(2,)),
     r"theta_hat must be finite, got nan \(rank 2\)"),
    ("pe-short", lambda: propensity_error(np.ones(1), np.ones(1)),
     r"theta_hat must be a 1-d \(K,\) array with K >= 2, got shape \(1,\)"),
    ("pe-default-ranks-beyond-k", lambda: propensity_error(T, T),
     r"ranks must be distinct integers in 2..3 \(K\), got \(2, 3, 4, 5, 6, 7, 8"),
    ("pe-rank-one", lambda: propensity_error(T, T, ranks=(1, 2)),
     r"ranks must be distinct integers in 2..3 \(K\), got \(1, 2\)"),
]


@pytest.mark.parametrize("call, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
