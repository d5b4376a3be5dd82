"""Whole-matrix MSE / MAE / DCG@K estimation (naive, IPS, SNIPS, EIB, DR) and the
misleading prediction matrices of sim.predictions.

A 30 x 40 world (N = 1,200 cells) with value-based propensities is observed
R = 500 times with independent Bernoulli masks. The closed forms of
`imputed_moments` give EIB's and DR's exact means and variances; tolerances
are 4 Monte Carlo standard errors of the replicates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.evaluation import (
    MATRIX_ESTIMATORS,
    Estimate,
    estimate_matrix_metric,
    imputed_moments,
    matrix_cell_values,
    matrix_metric,
)
from sim.config import ConfigError
from sim.predictions import (
    PREDICTION_MATRICES,
    check_predictions,
    coarsened,
    make_predictions,
    rare_wrong,
    shifted,
)
from sim.world import WorldConfig, sample_world

N_USERS, N_ITEMS, REPLICATES, K = 30, 40, 500, 5
MARGINAL = (0.2, 0.15, 0.2, 0.25, 0.2)
METRICS = [("mse", None), ("mae", None), ("dcg", K)]


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(2019)
    world = sample_world(WorldConfig(n_users=N_USERS, n_items=N_ITEMS), MARGINAL,
                         rng)
    ratings = world.ratings.astype(np.float64)
    p_observe = 0.5 * 0.5 ** np.maximum(4 - ratings, 0)
    predictions = make_predictions("rare-noisy", ratings, p_observe, rng)
    masks = np.random.default_rng(1).random((REPLICATES,) + ratings.shape) < p_observe
    return ratings, p_observe, predictions, masks


@pytest.fixture(scope="module", params=METRICS, ids=[m[0] for m in METRICS])
def draws(request, world):
    """Per metric: cell values, a wrong imputation, and (R, 2) value/se draws."""
    metric, k = request.param
    ratings, p_observe, predictions, masks = world
    values = matrix_cell_values(predictions, ratings, metric, k)
    # A wrong imputation: every missing rating is taken to be 3 stars.
    wrong = matrix_cell_values(predictions, np.full_like(ratings, 3.0), metric, k)
    hidden = np.where(masks[0], ratings, np.nan)  # unobserved ratings unreadable
    assert np.isnan(hidden).any()
    out: dict[str, list] = {}
    for mask in masks:
        ratings_seen = np.where(mask, ratings, np.nan)
        for name in MATRIX_ESTIMATORS:
            est = estimate_matrix_metric(predictions, ratings_seen, mask, p_observe,
                                         metric, name, k, imputed=wrong)
            out.setdefault(name, []).append([est.value, est.se])
        exact = estimate_matrix_metric(predictions, ratings_seen, mask, p_observe,
                                       metric, "eib", k, imputed=values)
        out.setdefault("eib-exact", []).append([exact.value, exact.se])
    scale = N_ITEMS if metric == "dcg" else 1.0
    truth = matrix_metric(predictions, ratings, metric, k)
    return dict(values=values, wrong=wrong, scale=scale, truth=truth,
                p=p_observe, est={key: np.array(v) for key, v in out.items()})


def mc_se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size))


def test_truth_is_the_scaled_cell_mean(draws):
    assert draws["truth"] == pytest.approx(draws["scale"] * draws["values"].mean())


@pytest.mark.parametrize("name", ["ips", "dr"])
def test_unbiased_with_true_propensities_whatever_the_imputation(draws, name):
    values = draws["est"][name][:, 0]
    assert abs(values.mean() - draws["truth"]) <= 4 * mc_se(values)


def test_snips_is_consistent_at_this_size(draws):
    values = draws["est"]["snips"][:, 0]
    assert abs(values.mean() - draws["truth"]) <= 4 * mc_se(values)


def test_eib_is_biased_with_a_wrong_imputation_as_its_closed_form_says(draws):
    mean, _ = imputed_moments(draws["values"].ravel(), draws["wrong"].ravel(),
                              draws["p"].ravel(), "eib")
    values = draws["est"]["eib"][:, 0]
    assert abs(values.mean() - draws["scale"] * mean) <= 4 * mc_se(values)
    assert abs(values.mean() - draws["truth"]) > 10 * mc_se(values)


def test_eib_with_the_right_imputation_is_exact(draws):
    exact = draws["est"]["eib-exact"]
    np.testing.assert_allclose(exact[:, 0], draws["truth"], rtol=1e-12)
    assert (exact[:, 1] == 0.0).all()


def test_naive_misses_the_truth(draws):
    values = draws["est"]["naive"][:, 0]
    assert abs(values.mean() - draws["truth"]) > 10 * mc_se(values)


@pytest.mark.parametrize("name", ["eib", "dr"])
def test_spread_matches_closed_form_and_se_is_unbiased(draws, name):
    _, variance = imputed_moments(draws["values"].ravel(), draws["wrong"].ravel(),
                                  draws["p"].ravel(), name)
    exact = draws["scale"] * math.sqrt(variance)
    values = draws["est"][name][:, 0]
    sd = values.std(ddof=1)
    kurtosis = ((values - values.mean()) ** 4).mean() / values.var() ** 2
    se_sd = sd * math.sqrt((kurtosis - 1) / (4 * values.size))
    assert 0.15 * exact >= 4 * se_sd
    assert abs(sd - exact) <= 0.15 * exact
    se_squared = draws["est"][name][:, 1] ** 2
    assert abs(se_squared.mean() - exact**2) <= 4 * mc_se(se_squared)


# --- hand-computed values ------------------------------------------------------------


def test_dcg_cell_values_by_hand():
    predictions = np.array([[0.1, 0.9, 0.5], [2.0, 2.0, 1.0]])
    ratings = np.array([[1.0, 4.0, 2.0], [3.0, 5.0, 1.0]])
    values = matrix_cell_values(predictions, ratings, "dcg", 2)
    # user 0 ranks items 1, 2, 0; user 1 ranks 0, 1 (tie by id), 2.
    expected = np.array([[0.0, 4.0, 2.0 / math.log2(3)],
                         [3.0, 5.0 / math.log2(3), 0.0]])
    np.testing.assert_allclose(values, expected)
    assert matrix_metric(predictions, ratings, "dcg", 2) == pytest.approx(
        expected.sum() / 2)


def test_eib_and_dr_by_hand():
    predictions = np.array([[3.0, 3.0]])
    ratings = np.array([[5.0, np.nan]])  # the second rating is never read
    observed = np.array([[True, False]])
    p_observe = np.array([[0.5, 0.2]])
    imputed = np.array([[1.0, 2.0]])
    eib = estimate_matrix_metric(predictions, ratings, observed, p_observe, "mse",
                                 "eib", imputed=imputed)
    assert eib.value == pytest.approx((4.0 + 2.0) / 2)
    assert eib.se == pytest.approx(math.sqrt(0.5 * 9.0) / 2)
    dr = estimate_matrix_metric(predictions, ratings, observed, p_observe, "mse",
                                "dr", imputed=imputed)
    assert dr.value == pytest.approx((1.0 + 3.0 / 0.5 + 2.0) / 2)
    assert dr.se == pytest.approx(math.sqrt(0.5 * 36.0) / 2)
    assert (dr.n, dr.max_weight, eib.max_weight) == (1, 2.0, 1.0)
    ips = estimate_matrix_metric(predictions, ratings, observed, p_observe, "mse",
                                 "ips")
    assert ips.value == pytest.approx(4.0 / 0.5 / 2)
    naive = estimate_matrix_metric(predictions, ratings, observed, None, "mse",
                                   "naive")
    assert naive.value == 4.0


def test_imputed_moments_by_hand():
    assert imputed_moments([2.0, 0.0], [1.0, 1.0], [0.5, 1.0], "eib") == (
        pytest.approx((0.5 * 2 + 0.5 * 1 + 0.0) / 2),
        pytest.approx((0.25 * 1 + 0.0) / 4))
    assert imputed_moments([2.0, 0.0], [1.0, 1.0], [0.5, 1.0], "dr") == (
        pytest.approx(1.0), pytest.approx((0.5 / 0.5 * 1) / 4))


# --- sim.predictions -----------------------------------------------------------------


def test_naive_ranks_two_matrices_in_the_wrong_order(world):
    ratings, p_observe, _, masks = world
    rng = np.random.default_rng(9)
    good_where_seen = rare_wrong(ratings, p_observe, rng, share=0.2)
    honest = shifted(ratings, p_observe, rng, shift=1.2)
    truths = [matrix_metric(m, ratings, "mse") for m in (good_where_seen, honest)]
    assert truths[0] > truths[1]  # rare-wrong is worse over the full matrix
    naive = np.array([[estimate_matrix_metric(m, ratings, mask, None, "mse",
                                              "naive").value
                       for m in (good_where_seen, honest)] for mask in masks[:200]])
    gap = naive[:, 0] - naive[:, 1]
    assert gap.mean() < -4 * mc_se(gap)  # but looks better on the observed cells


def test_rare_wrong_is_wrong_exactly_on_the_rarest_cells():
    ratings = np.array([[1.0, 2.0], [5.0, 4.0]])
    p_observe = np.array([[0.1, 0.3], [0.9, 0.2]])
    predictions = rare_wrong(ratings, p_observe, np.random.default_rng(0), share=0.5,
                             noise=0.0)
    np.testing.assert_array_equal(predictions, [[5.0, 2.0], [5.0, 2.0]])


def test_coarsened_two_bins_of_five_stars():
    ratings = np.arange(1.0, 6.0)[None, :]
    out = coarsened(ratings, np.full((1, 5), 0.5), np.random.default_rng(0))
    np.testing.assert_array_equal(out, [[1.5, 1.5, 4.0, 4.0, 4.0]])


def test_every_builtin_matrix_has_the_world_shape(world):
    ratings, p_observe, _, _ = world
    for name in PREDICTION_MATRICES:
        out = make_predictions(name, ratings, p_observe, np.random.default_rng(0))
        assert out.shape == ratings.shape and np.isfinite(out).all()


PREDICTION_REFUSALS = [
    ("name", lambda: make_predictions("perfect", [[1.0]], [[0.5]],
                                      np.random.default_rng(0)),
     "predictions must be one of rare-wrong, shifted, rare-noisy, coarsened, got "
     "'perfect'"),
    ("ratings-zero", lambda: shifted([[0.0, 2.0]], [[0.5, 0.5]], None),
     r"ratings must be finite stars >= 1, got 0.0 \(user 0, item 0\)"),
    ("p-shape", lambda: shifted([[1.0, 2.0]], [[0.5]], None),
     r"p_observe must be an array of shape \(1, 2\) like ratings, got shape \(1, 1\)"),
    ("p-range", lambda: shifted([[1.0, 2.0]], [[0.5, 1.5]], None),
     r"p_observe must be in \[0, 1\], got 1.5 \(user 0, item 1\)"),
    ("share", lambda: rare_wrong([[1.0]], [[0.5]], np.random.default_rng(0),
                                 share=2.0),
     "share must be a number >= 0.0 and <= 1.0, got 2.0"),
    ("bins", lambda: coarsened([[1.0, 5.0]], [[0.5, 0.5]], None, bins=6),
     r"bins must be an integer in \[1, 5\], got 6"),
    ("user-shape", lambda: check_predictions(np.ones((2, 2)), (2, 3)),
     r"predictions must be an array of shape \(2, 3\), got shape \(2, 2\)"),
    ("user-nan", lambda: check_predictions([[1.0, np.nan]], (1, 2)),
     r"predictions must be finite, got nan \(user 0, item 1\)"),
]


@pytest.mark.parametrize("call, message", [r[1:] for r in PREDICTION_REFUSALS],
                         ids=[r[0] for r in PREDICTION_REFUSALS])
def test_prediction_refusals(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# --- refusals -------------------------------------------------------------------------

GOOD = dict(predictions=np.array([[3.0, 3.0]]), ratings=np.array([[5.0, np.nan]]),
            observed=np.array([[True, False]]), p_observe=np.array([[0.5, 0.0]]),
            metric="mse", estimator="dr", imputed=np.array([[1.0, 2.0]]))

REFUSALS = [
    ("estimator", dict(estimator="switch-dr"),
     "estimator must be one of naive, ips, snips, eib, dr, got 'switch-dr'"),
    ("metric", dict(metric="rmse"), "metric must be one of mse, mae, dcg, got 'rmse'"),
    ("k-missing", dict(metric="dcg"),
     r"k must be an integer >= 1 \(the cut-off of DCG@K\), got None"),
    ("predictions-1d", dict(predictions=np.array([3.0, 3.0])),
     r"predictions must be a \(U, I\) array with at least one user and one item, "
     r"got shape \(2,\)"),
    ("predictions-nan", dict(predictions=np.array([[3.0, np.nan]])),
     r"predictions must be finite, got nan \(user 0, item 1\)"),
    ("observed-int", dict(observed=np.array([[1, 0]])),
     "observed must be a boolean \\(U, I\\) mask, got dtype int64"),
    ("observed-shape", dict(observed=np.array([[True, False, False]])),
     r"observed must be an array of shape \(U, I\) = \(1, 2\) like predictions, got "
     r"shape \(1, 3\)"),
    ("observed-none", dict(observed=np.array([[False, False]])),
     "observed must be a mask with at least one observed cell, got no observed cell"),
    ("ratings-nan-at-observed", dict(ratings=np.array([[np.nan, 5.0]])),
     r"ratings must be finite at observed cells, got nan \(user 0, item 0\)"),
    ("p-zero-at-observed", dict(p_observe=np.array([[0.0, 0.5]])),
     r"p_observe must be in \(0, 1\] at observed cells, got 0.0 \(user 0, item 0\)"),
    ("p-missing", dict(p_observe=None),
     r"p_observe must be a \(U, I\) array of observation propensities for "
     "estimator 'dr', got None"),
    ("imputed-missing", dict(imputed=None),
     r"imputed must be a \(U, I\) array of imputed cell values for estimator 'dr', "
     "got None"),
    ("imputed-inf", dict(imputed=np.array([[1.0, np.inf]])),
     r"imputed must be finite, got inf \(user 0, item 1\)"),
    ("clip", dict(clip=(5.0, 1.0)),
     r"clip must be None or a pair \(low, high\) with low < high, got \(5.0, 1.0\)"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_estimate_matrix_metric_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        estimate_matrix_metric(**{**GOOD, **changes})


def test_imputed_moments_refusals():
    with pytest.raises(ConfigError, match="estimator must be one of eib, dr, got "
                       "'ips'"):
        imputed_moments([1.0], [1.0], [0.5], "ips")
    with pytest.raises(ConfigError, match=r"imputed_all must have the same length "
                       r"as errors_all \(1\), got 2"):
        imputed_moments([1.0], [1.0, 2.0], [0.5], "dr")


def test_estimate_type_is_shared():
    est = estimate_matrix_metric(**GOOD)
    assert isinstance(est, Estimate)
