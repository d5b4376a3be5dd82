"""Observation propensities p_observe = P(O_ui = 1 | u, i) for explicit ratings.

A rating is logged for cell (u, i) (O_ui = 1) with a probability that usually
depends on the rating itself (missing not at random). The debiased estimators
weigh each logged cell by 1 / p_observe, so p_observe must be known or
estimated. This module estimates it three ways, from what a real system has:

- ``naive_bayes_propensity``: per star, from the logged ratings and a small
  missing-at-random survey (Schnabel et al., ICML 2016, section 5).
- ``logistic_propensity``: per cell, a logistic regression of the observed
  indicator on observable user and item features (Schnabel et al. 2016,
  section 5; the propensity score of Rosenbaum and Rubin, Biometrika 1983).
- ``popularity_propensity``: per item, a power law in the item's count of
  logged ratings (Yang et al., RecSys 2018).

plus ``apply_floor`` (clip small propensities) and ``per_star_error`` (how far
an estimate is from the truth, star by star; for reports only, since it reads
the true propensities).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from estimators.metrics import (
    _as_1d,
    _check_finite,
    _check_same_length,
    _Plain,
)
from sim.config import ConfigError, check, check_range

__all__ = [
    "naive_bayes_propensity",
    "logistic_propensity",
    "popularity_propensity",
    "apply_floor",
    "per_star_error",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_levels(ratings: np.ndarray, name: str, n_levels: int) -> np.ndarray:
    """Refuse ratings that are not whole stars 1..n_levels; return them as ints."""
    bad = ~np.isin(ratings, np.arange(1, n_levels + 1))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{name} must be whole stars 1..{n_levels}, "
            f"got {float(ratings[j])} (index {j})"
        )
    return ratings.astype(np.int64)


def naive_bayes_propensity(
    observed_ratings: Any,
    n_cells: int,
    mar_ratings: Any,
    smoothing: float = 1.0,
    n_levels: int = 5,
) -> np.ndarray:
    """Per-star propensity P(O = 1 | r) by Bayes' rule.

        P(O = 1 | r) = P(r | O = 1) P(O = 1) / P(r)

    with, for K = ``n_levels`` stars and s = ``smoothing``:

    - P(r | O = 1) = (n_obs(r) + s) / (n_obs + K s), from the logged ratings
      ``observed_ratings`` (n_obs of them, n_obs(r) with star r);
    - P(O = 1) = n_obs / N, N = ``n_cells`` the size of the full matrix;
    - P(r) = (n_mar(r) + s) / (n_mar + K s), from ``mar_ratings``, a small
      sample of cells chosen at random whose ratings were all collected.

    Results above 1 are clipped to 1 with a warning. (Schnabel, Swaminathan,
    Singh, Chandak and Joachims, ICML 2016, section 5.) Each marginal is a
    consistent estimate, so the result is consistent for the average
    propensity E[p_observe | r] of the cells with star r; the smoothing and
    the ratio give it a small bias at finite sample sizes, of order
    1 / n_mar(r) relative.

    Args:
        observed_ratings: (n_obs,) logged ratings, whole stars 1..K.
        n_cells: N, number of cells (users x items), >= n_obs.
        mar_ratings: (n_mar,) ratings of the missing-at-random sample.
        smoothing: Laplace pseudo-count s > 0 added to every star.
        n_levels: number of stars K.

    Returns:
        (K,) float array, entry r - 1 = P(O = 1 | r), in (0, 1].
    """
    check(_is_int(n_levels) and n_levels >= 2, "n_levels", "an integer >= 2",
          n_levels)
    check_range(smoothing, "smoothing", 0.0, low_open=True)
    observed_ratings = _as_1d(observed_ratings, "observed_ratings")
    mar_ratings = _as_1d(mar_ratings, "mar_ratings")
    n_obs = observed_ratings.size
    check(n_obs > 0, "observed_ratings", "non-empty (at least one logged rating)",
          _Plain("0 ratings"))
    check(mar_ratings.size > 0, "mar_ratings",
          "non-empty (at least one missing-at-random rating)", _Plain("0 ratings"))
    check(_is_int(n_cells) and n_cells >= n_obs, "n_cells",
          f"an integer >= the number of logged ratings ({n_obs})", n_cells)
    observed_ratings = _check_levels(observed_ratings, "observed_ratings", n_levels)
    mar_ratings = _check_levels(mar_ratings, "mar_ratings", n_levels)

    def smoothed(ratings: np.ndarray) -> np.ndarray:
        counts = np.bincount(ratings - 1, minlength=n_levels)
        return (counts + smoothing) / (ratings.size + n_levels * smoothing)

    p_observe = smoothed(observed_ratings) * (n_obs / n_cells) / smoothed(mar_ratings)
    return _clip_to_one(p_observe, "naive_bayes_propensity")


def _clip_to_one(p_observe: np.ndarray, where: str) -> np.ndarray:
    above = p_observe > 1.0
    if above.any():
        warnings.warn(
            f"{where}: {int(above.sum())} of {above.size} propensities were above 1 "
            "and were clipped to 1",
            stacklevel=3,
        )
    return np.minimum(p_observe, 1.0)


def _features(array: Any, name: str, rows: int, row_name: str) -> np.ndarray:
    """A finite (rows, k) float array; None stands for no columns."""
    if array is None:
        return np.zeros((rows, 0), dtype=np.float32)
    array = np.asarray(array, dtype=float)
    ok = array.ndim == 2 and array.shape[0] == rows
    check(ok, name, f"a 2-D array with {rows} rows ({row_name})",
          _Plain(f"shape {array.shape}"))
    _check_finite(array, name)
    return array.astype(np.float32)


def _ids(ids: Any, name: str, size: int, size_name: str) -> np.ndarray:
    ids = np.asarray(ids)
    check(ids.ndim == 1, name, "a 1-D array", _Plain(f"shape {ids.shape}"))
    ok = ids.size == 0 or np.issubdtype(ids.dtype, np.integer)
    check(ok, name, "integer ids", _Plain(f"dtype {ids.dtype}"))
    bad = (ids < 0) | (ids >= size)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{name} must be in [0, {size_name}={size}), got {int(ids[j])} (index {j})"
        )
    return ids.astype(np.int64)


def logistic_propensity(
    obs_users: Any,
    obs_items: Any,
    n_users: int,
    n_items: int,
    user_view: Any,
    item_view: Any,
    user_covariates: Any,
    item_covariates: Any,
    key: jax.Array,
    l2: float = 1.0,
    steps: int = 300,
    learning_rate: float = 0.1,
) -> np.ndarray:
    """Per-cell propensity from a logistic regression on observable features.

    Every cell (u, i) of the U x I matrix is one example, labelled y_ui = 1
    when a rating is logged for it (the pairs ``obs_users``, ``obs_items``)
    and 0 otherwise. The model is

        P(O_ui = 1) = sigmoid( b + a_u + c_i + sum_k w_k v_uk z_ik
                               + x_u . beta + q_i . gamma ),

    with v_u = ``user_view[u]`` and z_i = ``item_view[i]`` (d observable
    embedding columns each, so the interaction term has one weight w_k per
    column), x_u = ``user_covariates[u]``, q_i = ``item_covariates[i]``, b a
    global intercept and a_u, c_i per-user and per-item intercepts. The fit
    maximises the penalised log-likelihood

        sum_ui [y log P + (1 - y) log(1 - P)]
            - l2 (|w|^2 + |beta|^2 + |gamma|^2 + |a|^2 + |c|^2),

    (a Gaussian prior of variance 1 / (2 l2) on every weight but b) by
    full-batch Adam on its mean over cells, in JAX. Without the penalty the
    fitted probabilities would sum to the number of logged cells, overall
    and per user and item; the penalty shrinks the per-user and per-item
    sums towards the global rate. This is the propensity score of Rosenbaum
    and Rubin (Biometrika 1983) estimated by logistic regression, as
    Schnabel et al. (ICML 2016, section 5) propose for ratings missing not
    at random. It sees only the log and observable features, never the
    true ratings, so it recovers p_observe only in as far as those features
    explain it; selection on the rating itself that the features miss
    remains.

    The U x I logits are formed by one matrix product, never as a design
    matrix, so 1-2 million cells cost a few seconds on two CPU cores.

    Args:
        obs_users, obs_items: (n_obs,) integer ids of the logged cells (a
            pair logged twice counts once).
        n_users, n_items: U and I.
        user_view: (U, d) observable user embedding; item_view: (I, d).
        user_covariates: (U, a) or None; item_covariates: (I, b) or None.
        key: ``jax.random`` key for the initial interaction weights (the
            problem is convex, so the start only affects the path).
        l2: penalty l2 >= 0 (see above).
        steps: number of full-batch Adam steps, >= 1.
        learning_rate: Adam step size, > 0.

    Returns:
        (U, I) float32 array of fitted p_observe, in (0, 1) up to float32
        rounding; floor it with ``apply_floor`` before weighting.
    """
    check(_is_int(n_users) and n_users >= 1, "n_users", "an integer >= 1", n_users)
    check(_is_int(n_items) and n_items >= 1, "n_items", "an integer >= 1", n_items)
    check_range(l2, "l2", 0.0)
    check(_is_int(steps) and steps >= 1, "steps", "an integer >= 1", steps)
    check_range(learning_rate, "learning_rate", 0.0, low_open=True)
    obs_users = _ids(obs_users, "obs_users", n_users, "n_users")
    obs_items = _ids(obs_items, "obs_items", n_items, "n_items")
    _check_same_length(obs_items, "obs_items", obs_users, "obs_users")
    user_view = _features(user_view, "user_view", n_users, "n_users")
    item_view = _features(item_view, "item_view", n_items, "n_items")
    check(user_view.shape[1] == item_view.shape[1], "item_view",
          f"as many columns as user_view ({user_view.shape[1]})",
          _Plain(f"{item_view.shape[1]} columns"))
    user_covariates = _features(user_covariates, "user_covariates", n_users,
                                "n_users")
    item_covariates = _features(item_covariates, "item_covariates", n_items,
                                "n_items")

    observed = np.zeros((n_users, n_items), dtype=np.float32)
    observed[obs_users, obs_items] = 1.0
    rate = float(observed.mean())
    check(0.0 < rate < 1.0, "obs_users",
          "a log with some cells logged and some not",
          _Plain(f"{int(observed.sum())} of {observed.size} cells logged"))

    params = {
        "bias": jnp.asarray(math.log(rate / (1.0 - rate)), dtype=jnp.float32),
        "user_bias": jnp.zeros(n_users, jnp.float32),
        "item_bias": jnp.zeros(n_items, jnp.float32),
        "interaction": 0.01 * jax.random.normal(key, (user_view.shape[1],)),
        "user_weight": jnp.zeros(user_covariates.shape[1], jnp.float32),
        "item_weight": jnp.zeros(item_covariates.shape[1], jnp.float32),
    }
    data = tuple(jnp.asarray(a) for a in (observed, user_view, item_view,
                                          user_covariates, item_covariates))
    params = _fit_logistic(params, data, float(l2) / observed.size, int(steps),
                           float(learning_rate))
    logits = _logits(params, *data[1:])
    return np.asarray(jax.nn.sigmoid(logits), dtype=np.float32)


def _logits(params: dict, user_view, item_view, user_covariates, item_covariates):
    user_term = params["user_bias"] + user_covariates @ params["user_weight"]
    item_term = params["item_bias"] + item_covariates @ params["item_weight"]
    interaction = (user_view * params["interaction"]) @ item_view.T
    return params["bias"] + interaction + user_term[:, None] + item_term[None, :]


def _penalised_loss(params: dict, data: tuple, l2_per_cell: float):
    observed = data[0]
    logits = _logits(params, *data[1:])
    nll = optax.sigmoid_binary_cross_entropy(logits, observed).mean()
    penalty = sum(jnp.sum(value**2) for name, value in params.items()
                  if name != "bias")
    return nll + l2_per_cell * penalty


def _fit_logistic(params, data, l2_per_cell, steps, learning_rate):
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def run(params, data):
        def step(carry, _):
            params, state = carry
            grads = jax.grad(_penalised_loss)(params, data, l2_per_cell)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        carry = (params, optimizer.init(params))
        (params, _), _ = jax.lax.scan(step, carry, None, length=steps)
        return params

    return run(params, data)


def popularity_propensity(item_counts: Any, n_users: int, power: float = 0.5
                          ) -> np.ndarray:
    """Per-item propensity as a power law in the item's observed count.

        p_i = c * n_i^power,   c = sum_i n_i / (U * sum_i n_i^power),

    with n_i = ``item_counts[i]`` the number of logged ratings of item i and
    U = ``n_users``, so that the expected number of logged cells
    sum_i U p_i equals the number actually logged, sum_i n_i. This is the
    form of the popularity-based propensity of Yang, Cui, Xuan, Wang, Belongie
    and Estrin, "Unbiased offline recommender evaluation for
    missing-not-at-random implicit feedback" (RecSys 2018): a power law in
    the observed item popularity, here with the exponent a free parameter
    (default 0.5) and one scale for all users. It knows nothing about the
    rating, so selection on the rating is left uncorrected. Items never
    logged get p_i = 0 for power > 0; no logged cell needs their weight, and
    ``apply_floor`` lifts them if one is wanted. Values above 1 are clipped
    to 1 with a warning.

    Args:
        item_counts: (I,) logged ratings per item, whole numbers in
            [0, n_users], not all zero.
        n_users: U >= 1.
        power: exponent >= 0 (0 gives the same propensity to every item).

    Returns:
        (I,) float array of p_observe per item.
    """
    check(_is_int(n_users) and n_users >= 1, "n_users", "an integer >= 1", n_users)
    check_range(power, "power", 0.0)
    item_counts = _as_1d(item_counts, "item_counts")
    check(item_counts.size > 0, "item_counts", "non-empty", _Plain("0 items"))
    bad = ~((item_counts >= 0) & (item_counts <= n_users)
            & (item_counts == np.round(item_counts)))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"item_counts must be whole numbers in [0, n_users={n_users}], "
            f"got {float(item_counts[j])} (index {j})"
        )
    check(item_counts.sum() > 0, "item_counts", "not all zero", _Plain("all zero"))

    shape = item_counts**power  # 0^0 = 1: power 0 gives every item the same p
    scale = item_counts.sum() / (n_users * shape.sum())
    return _clip_to_one(scale * shape, "popularity_propensity")


def apply_floor(p: Any, floor: float) -> np.ndarray:
    """Clip propensities from below: max(p, floor), warning when any was raised.

    Flooring bounds the importance weights by 1 / floor at the price of a bias
    in the cells it touches; the warning reports how many of how many were
    clipped to ``selection.propensity_floor``.

    Args:
        p: propensities of any shape, in [0, 1].
        floor: the floor, in [0, 1).

    Returns:
        Array of the same shape and (floating) dtype as ``p``.
    """
    check_range(floor, "floor", 0.0, 1.0, high_open=True)
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(float)
    bad = ~((p >= 0.0) & (p <= 1.0))
    if bad.any():
        j = int(np.flatnonzero(bad.ravel())[0])
        raise ConfigError(
            f"p must be in [0, 1], got {float(p.ravel()[j])} (index {j})"
        )
    low = p < floor
    if low.any():
        warnings.warn(
            f"{int(low.sum())} of {p.size} propensities were clipped to "
            f"selection.propensity_floor={floor}",
            stacklevel=2,
        )
    return np.maximum(p, np.asarray(floor, dtype=p.dtype))


def per_star_error(
    p_hat_at_cells: Any,
    true_p_at_cells: Any,
    ratings: Any,
    n_levels: int = 5,
) -> np.ndarray:
    """Per-star error of an estimated propensity against the true one.

    For star r = 1..K, with C_r the given cells whose true rating is r:

        error[r - 1] = mean_{C_r} p_hat - mean_{C_r} p_true,

    the error of the estimate for E[P | r]. Positive means the estimate
    thinks star r is logged more often than it is (its IPS weight too small).
    A star with no cell among the given ones is not available: its entry is
    NaN, and a warning names the missing stars. This reads the true
    propensity, so it belongs in reports, never in an estimator.

    Args:
        p_hat_at_cells: (n,) estimated p_observe at some cells.
        true_p_at_cells: (n,) true p_observe at the same cells.
        ratings: (n,) true ratings there, whole stars 1..K.
        n_levels: K.

    Returns:
        (K,) float array (NaN only for stars that are not available).
    """
    check(_is_int(n_levels) and n_levels >= 2, "n_levels", "an integer >= 2",
          n_levels)
    p_hat_at_cells = _as_1d(p_hat_at_cells, "p_hat_at_cells")
    true_p_at_cells = _as_1d(true_p_at_cells, "true_p_at_cells")
    ratings = _as_1d(ratings, "ratings")
    _check_same_length(true_p_at_cells, "true_p_at_cells", p_hat_at_cells,
                       "p_hat_at_cells")
    _check_same_length(ratings, "ratings", p_hat_at_cells, "p_hat_at_cells")
    check(ratings.size > 0, "ratings", "non-empty (at least one cell)",
          _Plain("0 cells"))
    _check_finite(p_hat_at_cells, "p_hat_at_cells")
    _check_finite(true_p_at_cells, "true_p_at_cells")
    stars = _check_levels(ratings, "ratings", n_levels) - 1

    counts = np.bincount(stars, minlength=n_levels)
    gap = p_hat_at_cells - true_p_at_cells
    sums = np.bincount(stars, weights=gap, minlength=n_levels)
    error = np.full(n_levels, np.nan)
    present = counts > 0
    error[present] = sums[present] / counts[present]
    if not present.all():
        missing = ", ".join(str(r + 1) for r in np.flatnonzero(~present))
        warnings.warn(
            f"per_star_error: no cell has star {missing}; "
            "reported as NaN (not available)",
            stacklevel=2,
        )
    return error
