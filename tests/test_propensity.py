"""Propensity sources: hand-computed values, recovery of E[P | r], the logistic
fit's optimality conditions, floors, the per-star diagnostic and every refusal."""

from __future__ import annotations

import math
import warnings

import jax
import numpy as np
import pytest

from estimators.propensity import (
    apply_floor,
    logistic_propensity,
    naive_bayes_propensity,
    per_star_error,
    popularity_propensity,
)
from sim.config import ConfigError

# --- naive Bayes ---------------------------------------------------------------


def test_naive_bayes_hand_computed():
    observed = [5, 5, 4, 1]  # star counts [1, 0, 0, 1, 2] of 4
    mar = [1, 2, 3, 4, 5, 5]  # star counts [1, 1, 1, 1, 2] of 6
    p_given_obs = np.array([2, 1, 1, 2, 3]) / 9  # (count + 1) / (4 + 5)
    p_star = np.array([2, 2, 2, 2, 3]) / 11  # (count + 1) / (6 + 5)
    expected = p_given_obs * (4 / 20) / p_star
    np.testing.assert_allclose(naive_bayes_propensity(observed, 20, mar), expected)


def test_naive_bayes_smoothing_and_levels():
    # smoothing 0.5, 3 levels: P(r|O) = ([2, 0, 1] + .5) / 4.5,
    # P(r) = ([1, 1, 1] + .5) / 4.5, P(O) = 3 / 30
    got = naive_bayes_propensity([1, 1, 3], 30, [1, 2, 3], smoothing=0.5, n_levels=3)
    np.testing.assert_allclose(got, np.array([2.5, 0.5, 1.5]) / 1.5 * 0.1)


def test_naive_bayes_clips_above_one_with_warning():
    with pytest.warns(UserWarning, match="1 of 5 propensities were above 1"):
        got = naive_bayes_propensity([5] * 10, 12, [1] * 9 + [5])
    assert got[4] == 1.0 and (got > 0).all()


def test_naive_bayes_recovers_mean_propensity_per_star():
    """Over 200 logs and surveys of one world, the average estimate of each star
    matches the world's E[p_observe | r] within 4 Monte Carlo SE."""
    rng = np.random.default_rng(7)
    n_cells, n_mar, replicates = 50_000, 10_000, 200
    ratings = rng.choice(np.arange(1, 6), size=n_cells, p=[0.3, 0.2, 0.2, 0.15, 0.15])
    base = np.array([0.01, 0.02, 0.04, 0.08, 0.2])
    # Cells of one star differ in propensity, so E[P | r] is an average.
    p_observe = base[ratings - 1] * rng.uniform(0.5, 1.5, n_cells)
    truth = np.bincount(ratings - 1, weights=p_observe) / np.bincount(ratings - 1)

    estimates = []
    for _ in range(replicates):
        observed = ratings[rng.random(n_cells) < p_observe]
        mar = ratings[rng.integers(0, n_cells, n_mar)]
        estimates.append(naive_bayes_propensity(observed, n_cells, mar))
    estimates = np.array(estimates)
    se = estimates.std(axis=0, ddof=1) / math.sqrt(replicates)
    assert (np.abs(estimates.mean(axis=0) - truth) <= 4 * se).all()


# --- popularity ------------------------------------------------------------------


def test_popularity_hand_computed():
    counts = [4, 1, 0, 9]  # sqrt: [2, 1, 0, 3], sum 6; c = 14 / (10 * 6)
    got = popularity_propensity(counts, 10)
    np.testing.assert_allclose(got, np.array([2, 1, 0, 3]) * 14 / 60)
    assert 10 * got.sum() == pytest.approx(14)  # expected log size = actual


def test_popularity_power_zero_is_uniform():
    np.testing.assert_allclose(popularity_propensity([4, 1, 0, 9], 10, power=0.0),
                               np.full(4, 14 / 40))


def test_popularity_clips_above_one_with_warning():
    with pytest.warns(UserWarning, match="1 of 2 propensities were above 1"):
        got = popularity_propensity([10, 1], 10, power=2.0)
    np.testing.assert_allclose(got, [1.0, 11 / 1010])


# --- floor -------------------------------------------------------------------------


def test_apply_floor_clips_and_says_how_many():
    p = np.array([0.0, 0.5, 1e-5], dtype=np.float32)
    with pytest.warns(UserWarning, match=r"2 of 3 propensities were clipped to "
                                         r"selection.propensity_floor=0.0001"):
        got = apply_floor(p, 1e-4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [1e-4, 0.5, 1e-4], rtol=1e-6)


def test_apply_floor_is_silent_when_nothing_is_clipped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = apply_floor([[0.3, 1.0], [0.01, 0.2]], 0.01)
    np.testing.assert_array_equal(got, [[0.3, 1.0], [0.01, 0.2]])


# --- per-star diagnostic --------------------------------------------------------------


def test_per_star_error_hand_computed():
    p_hat = [0.1, 0.3, 0.2, 0.5, 0.5, 0.9]
    true_p = [0.2, 0.2, 0.2, 0.4, 0.6, 0.9]
    ratings = [1, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(per_star_error(p_hat, true_p, ratings),
                               [0.0, 0.0, 0.1, -0.1, 0.0], atol=1e-12)


def test_per_star_error_marks_absent_star_not_available():
    with pytest.warns(UserWarning, match="no cell has star 2, 4; reported as NaN"):
        got = per_star_error([0.5, 0.4, 0.1], [0.4, 0.4, 0.2], [1, 3, 5])
    np.testing.assert_allclose(got, [0.1, np.nan, 0.0, np.nan, -0.1], atol=1e-12)


# --- logistic regression ----------------------------------------

U, I = 120, 100


@pytest.fixture(scope="module")
def logistic_world():
    """A world whose selection follows the logistic model on observable features."""
    rng = np.random.default_rng(11)
    user_view, item_view = rng.normal(size=(U, 3)), rng.normal(size=(I, 3))
    user_cov, item_cov = rng.normal(size=(U, 2)), rng.normal(size=(I, 1))
    logit = (-2.0 + (user_view * [0.8, -0.5, 0.3]) @ item_view.T
             + (user_cov @ [0.6, -0.4])[:, None] + (item_cov @ [0.5])[None, :])
    p_true = 1.0 / (1.0 + np.exp(-logit))
    observed = rng.random((U, I)) < p_true
    users, items = np.nonzero(observed)
    features = (user_view, item_view, user_cov, item_cov)
    return users, items, features, observed, p_true


def fit(world, **options):
    users, items, features, _, _ = world
    return logistic_propensity(users, items, U, I, *features, jax.random.key(0),
                               **options)


def test_logistic_unpenalised_fit_meets_the_score_equations(logistic_world):
    """At the maximum likelihood the residuals y - p sum to zero overall, per
    user, per item and against each covariate column, up to the float32
    optimisation (0.01 on sums of 12,000 cells, against 2,267 logged)."""
    _, _, (_, _, user_cov, item_cov), observed, _ = logistic_world
    p_hat = fit(logistic_world, l2=0.0)
    assert p_hat.shape == (U, I) and p_hat.dtype == np.float32
    assert ((p_hat > 0) & (p_hat < 1)).all()
    residual = observed - p_hat.astype(float)
    tolerance = 0.01
    assert abs(residual.sum()) <= tolerance
    assert np.abs(residual.sum(axis=1)).max() <= tolerance
    assert np.abs(residual.sum(axis=0)).max() <= tolerance
    assert np.abs(user_cov.T @ residual.sum(axis=1)).max() <= tolerance
    assert np.abs(item_cov.T @ residual.sum(axis=0)).max() <= tolerance


def test_logistic_penalty_keeps_total_but_shrinks_user_effects(logistic_world):
    observed = logistic_world[3]
    residual = observed - fit(logistic_world, l2=1.0).astype(float)
    tolerance = 0.01
    assert abs(residual.sum()) <= tolerance  # the global intercept is free
    # Per user the residuals now sum to 2 l2 a_u, no longer to zero.
    assert np.abs(residual.sum(axis=1)).max() > 10 * tolerance


def test_logistic_recovers_the_selection(logistic_world):
    """Correctly specified, the fit is far closer to the true propensities
    than the best constant (the observed density)."""
    observed, p_true = logistic_world[3], logistic_world[4]
    p_hat = fit(logistic_world, l2=0.0)
    error = np.abs(p_hat - p_true).mean()
    baseline = np.abs(observed.mean() - p_true).mean()
    assert error < 0.5 * baseline


def test_logistic_is_deterministic_and_takes_no_covariates(logistic_world):
    users, items, (user_view, item_view, _, _), _, _ = logistic_world
    args = (users, items, U, I, user_view, item_view, None, None)
    first = logistic_propensity(*args, jax.random.key(3), steps=20)
    second = logistic_propensity(*args, jax.random.key(3), steps=20)
    np.testing.assert_array_equal(first, second)


# --- refusals --------------------------------------------------

NB_GOOD = dict(observed_ratings=[5, 4, 1], n_cells=10, mar_ratings=[1, 2, 3])
NB_REFUSALS = [
    ("empty-observed", dict(observed_ratings=[]),
     r"observed_ratings must be non-empty \(at least one logged rating\), "
     "got 0 ratings"),
    ("empty-mar", dict(mar_ratings=[]),
     "mar_ratings must be non-empty .*, got 0 ratings"),
    ("star-range", dict(observed_ratings=[5, 6, 1]),
     r"observed_ratings must be whole stars 1..5, got 6.0 \(index 1\)"),
    ("star-fraction", dict(mar_ratings=[1, 2.5, 3]),
     r"mar_ratings must be whole stars 1..5, got 2.5 \(index 1\)"),
    ("star-nan", dict(mar_ratings=[1, math.nan]),
     r"mar_ratings must be whole stars 1..5, got nan \(index 1\)"),
    ("n-cells", dict(n_cells=2),
     r"n_cells must be an integer >= the number of logged ratings \(3\), got 2"),
    ("smoothing", dict(smoothing=0.0), "smoothing must be a number > 0.0, got 0.0"),
    ("levels", dict(n_levels=1), "n_levels must be an integer >= 2, got 1"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in NB_REFUSALS],
                         ids=[r[0] for r in NB_REFUSALS])
def test_naive_bayes_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        naive_bayes_propensity(**{**NB_GOOD, **changes})


def _logistic_args(**changes):
    rng = np.random.default_rng(0)
    args = dict(obs_users=[0, 1, 2], obs_items=[1, 0, 3], n_users=4, n_items=5,
                user_view=rng.normal(size=(4, 2)), item_view=rng.normal(size=(5, 2)),
                user_covariates=None, item_covariates=rng.normal(size=(5, 1)),
                key=jax.random.key(0), steps=2)
    args.update(changes)
    return args


LOGISTIC_REFUSALS = [
    ("user-id", dict(obs_users=[0, 4, 2]),
     r"obs_users must be in \[0, n_users=4\), got 4 \(index 1\)"),
    ("item-id", dict(obs_items=[-1, 0, 3]),
     r"obs_items must be in \[0, n_items=5\), got -1 \(index 0\)"),
    ("float-ids", dict(obs_users=[0.0, 1.0, 2.0]),
     "obs_users must be integer ids, got dtype float64"),
    ("length", dict(obs_items=[1, 0]),
     r"obs_items must have the same length as obs_users \(3\), got 2"),
    ("view-rows", dict(user_view=np.zeros((3, 2))),
     r"user_view must be a 2-D array with 4 rows \(n_users\), got shape \(3, 2\)"),
    ("view-columns", dict(item_view=np.zeros((5, 3))),
     r"item_view must be as many columns as user_view \(2\), got 3 columns"),
    ("covariate-nan", dict(item_covariates=np.array([[0.0]] * 4 + [[math.nan]])),
     r"item_covariates must be finite, got nan \(index 4\)"),
    ("l2", dict(l2=-1.0), "l2 must be a number >= 0.0, got -1.0"),
    ("steps", dict(steps=0), "steps must be an integer >= 1, got 0"),
    ("learning-rate", dict(learning_rate=0.0),
     "learning_rate must be a number > 0.0, got 0.0"),
    ("n-users", dict(n_users=0), "n_users must be an integer >= 1, got 0"),
    ("no-log", dict(obs_users=[], obs_items=[]),
     "obs_users must be a log with some cells logged and some not, got 0 of 20"),
    ("full-log", dict(obs_users=np.repeat(np.arange(4), 5),
                      obs_items=np.tile(np.arange(5), 4)),
     "obs_users must be a log with some cells logged and some not, got 20 of 20"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in LOGISTIC_REFUSALS],
                         ids=[r[0] for r in LOGISTIC_REFUSALS])
def test_logistic_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        logistic_propensity(**_logistic_args(**changes))


OTHER_REFUSALS = [
    ("pop-count-range", lambda: popularity_propensity([1, 11], 10),
     r"item_counts must be whole numbers in \[0, n_users=10\], got 11.0 \(index 1\)"),
    ("pop-negative", lambda: popularity_propensity([-1, 1], 10),
     r"item_counts must be whole numbers .*, got -1.0 \(index 0\)"),
    ("pop-all-zero", lambda: popularity_propensity([0, 0], 10),
     "item_counts must be not all zero, got all zero"),
    ("pop-empty", lambda: popularity_propensity([], 10),
     "item_counts must be non-empty, got 0 items"),
    ("pop-power", lambda: popularity_propensity([1, 2], 10, power=-0.5),
     "power must be a number >= 0.0, got -0.5"),
    ("pop-users", lambda: popularity_propensity([1, 2], 0),
     "n_users must be an integer >= 1, got 0"),
    ("floor-one", lambda: apply_floor([0.5], 1.0),
     "floor must be a number >= 0.0 and < 1.0, got 1.0"),
    ("floor-negative", lambda: apply_floor([0.5], -0.1),
     "floor must be a number >= 0.0 and < 1.0, got -0.1"),
    ("floor-nan", lambda: apply_floor([0.5], math.nan),
     "floor must be a number >= 0.0 and < 1.0, got nan"),
    ("floor-p-nan", lambda: apply_floor([0.5, math.nan], 0.1),
     r"p must be in \[0, 1\], got nan \(index 1\)"),
    ("floor-p-above", lambda: apply_floor([[0.5, 1.5]], 0.1),
     r"p must be in \[0, 1\], got 1.5 \(index 1\)"),
    ("star-length", lambda: per_star_error([0.1, 0.2], [0.1], [1, 2]),
     r"true_p_at_cells must have the same length as p_hat_at_cells \(2\), got 1"),
    ("star-empty", lambda: per_star_error([], [], []),
     r"ratings must be non-empty \(at least one cell\), got 0 cells"),
    ("star-nan", lambda: per_star_error([0.1, math.nan], [0.1, 0.2], [1, 2]),
     r"p_hat_at_cells must be finite, got nan \(index 1\)"),
    ("star-rating", lambda: per_star_error([0.1], [0.1], [0]),
     r"ratings must be whole stars 1..5, got 0.0 \(index 0\)"),
]


@pytest.mark.parametrize("call, message", [r[1:] for r in OTHER_REFUSALS],
                         ids=[r[0] for r in OTHER_REFUSALS])
def test_other_refusals(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
