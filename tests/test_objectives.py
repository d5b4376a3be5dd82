"""The objectives: values against their formulas, gradients against finite
differences, and (un)biasedness against the exact full-matrix MSE."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from estimators.models import init_mf, predict_matrix, predict_mf
from estimators.objectives import (
    Batch,
    dr_imputation,
    dr_prediction,
    ips,
    naive,
    sample_weights,
    snips,
)

N_USERS, N_ITEMS, DIM = 5, 4, 2


def small_problem(seed=0):
    """Float64 parameters, a padded batch of 6 (last sample padding), 4 cells."""
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 2)
    params = init_mf(keys[0], N_USERS, N_ITEMS, DIM, 0.5, 3.0)
    params = dict(params, user_bias=jnp.asarray(rng.normal(size=N_USERS)))
    imputation = init_mf(keys[1], N_USERS, N_ITEMS, DIM, 0.5, 2.5)
    batch = Batch(
        users=jnp.asarray([0, 1, 1, 3, 4, 2]),
        items=jnp.asarray([0, 2, 3, 3, 1, 0]),
        ratings=jnp.asarray(rng.uniform(1, 5, size=6)),
        propensity=jnp.asarray(np.r_[rng.uniform(0.2, 1.0, size=5), 1.0]),
        mask=jnp.asarray([1.0, 1, 1, 1, 1, 0]),
    )
    cells = (jnp.asarray([0, 2, 4, 4]), jnp.asarray([3, 1, 0, 2]))
    return params, imputation, batch, cells


def objective_closures(params, imputation, batch, cells, l2=0.3, density=0.4):
    """Every objective as a function of the parameters it trains."""
    imputed = predict_mf(imputation, batch.users, batch.items)
    imputed_cells = predict_mf(imputation, *cells)
    predicted = predict_mf(params, batch.users, batch.items)
    return {
        "naive": (params, lambda p: naive(p, batch, l2, density)),
        "ips": (params, lambda p: ips(p, batch, l2, density)),
        "snips": (params, lambda p: snips(p, batch, l2, density)),
        "dr_prediction": (
            params,
            lambda p: dr_prediction(
                p, batch, imputed, *cells, imputed_cells, l2, density
            ),
        ),
        "dr_imputation": (
            imputation,
            lambda q: dr_imputation(q, batch, predicted, l2, density),
        ),
    }


NAMES = ["naive", "ips", "snips", "dr_prediction", "dr_imputation"]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_central_differences(name):
    with jax.enable_x64(True):
        params, imputation, batch, cells = small_problem()
        start, loss = objective_closures(params, imputation, batch, cells)[name]
        flat, unravel = ravel_pytree(start)
        assert flat.dtype == jnp.float64

        def flat_loss(x):
            return loss(unravel(x))

        grad = np.asarray(jax.grad(flat_loss)(flat))
        step = 1e-6
        numeric = np.array(
            [
                (flat_loss(flat.at[k].add(step)) - flat_loss(flat.at[k].add(-step)))
                / (2 * step)
                for k in range(flat.size)
            ]
        )
    assert np.abs(grad).max() > 1e-3  # the check below is not vacuous
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_values_match_their_formulas():
    with jax.enable_x64(True):
        params, imputation, batch, cells = small_problem()
        l2, density = 0.3, 0.4
        closures = objective_closures(params, imputation, batch, cells, l2, density)
        values = {name: float(loss(start)) for name, (start, loss) in closures.items()}

        real = np.asarray(batch.mask) > 0
        users, items = np.asarray(batch.users)[real], np.asarray(batch.items)[real]
        r = np.asarray(batch.ratings)[real]
        p = np.asarray(batch.propensity)[real]
        rhat = np.asarray(predict_matrix(params))[users, items]
        rtilde = np.asarray(predict_matrix(imputation))[users, items]
        rtilde_cells = np.asarray(predict_matrix(imputation))[cells]
        rhat_cells = np.asarray(predict_matrix(params))[cells]

    def penalty(tree):
        tree = {k: np.asarray(v) for k, v in tree.items()}
        sizes = (
            (tree["user_factors"][users] ** 2).sum(1)
            + (tree["item_factors"][items] ** 2).sum(1)
            + tree["user_bias"][users] ** 2
            + tree["item_bias"][items] ** 2
        )
        return l2 * sizes.mean()

    e = (rhat - r) ** 2
    ehat = (rhat - rtilde) ** 2
    expected = {
        "naive": e.mean() + penalty(params),
        "ips": density * (e / p).mean() + penalty(params),
        "snips": (e / p).sum() / (1 / p).sum() + penalty(params),
        "dr_prediction": ((rhat_cells - rtilde_cells) ** 2).mean()
        + density * ((e - ehat) / p).mean()
        + penalty(params),
        "dr_imputation": density * ((ehat - e) ** 2 / p).mean() + penalty(imputation),
    }
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], rel=1e-12), name


@pytest.mark.parametrize("name", NAMES)
def test_padding_counts_for_nothing(name):
    params, imputation, batch, cells = small_problem()
    start, loss = objective_closures(params, imputation, batch, cells)[name]
    scrambled = batch._replace(
        users=batch.users.at[-1].set(4),
        items=batch.items.at[-1].set(3),
        ratings=batch.ratings.at[-1].set(-100.0),
        propensity=batch.propensity.at[-1].set(1e-3),
    )
    start2, loss2 = objective_closures(params, imputation, scrambled, cells)[name]
    assert float(loss(start)) == pytest.approx(float(loss2(start2)), rel=1e-6)


# ---------------------------------------------------------------------------
# Bias, by exact enumeration of every observation pattern


def enumeration_problem():
    """2 x 4 cells whose observation propensity falls with the error (MNAR);
    cell 0 is always observed so that no pattern is empty."""
    params = {
        "mu": jnp.asarray(3.0),
        "user_bias": jnp.asarray([0.2, -0.1]),
        "item_bias": jnp.asarray([0.0, 0.3, -0.4, 0.1]),
        "user_factors": jnp.asarray([[0.5], [-0.3]]),
        "item_factors": jnp.asarray([[1.0], [0.2], [-0.6], [0.4]]),
    }
    users, items = (a.ravel() for a in jnp.meshgrid(jnp.arange(2), jnp.arange(4),
                                                   indexing="ij"))
    ratings = jnp.asarray([3.5, 1.0, 5.0, 2.0, 4.0, 3.0, 1.0, 5.0])
    propensity = jnp.asarray([1.0, 0.3, 0.2, 0.7, 0.8, 0.5, 0.25, 0.6])
    return params, users, items, ratings, propensity


def expectation_over_patterns(estimate):
    """E[estimate(mask, density)] over mask ~ Bernoulli(propensity), exactly."""
    *_, propensity = enumeration_problem()
    n_cells = propensity.size
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=n_cells):
        mask = jnp.asarray(bits)
        if mask[0] == 0:
            continue  # cell 0 has propensity 1
        prob = jnp.prod(jnp.where(mask > 0, propensity, 1 - propensity))
        total += float(prob) * float(estimate(mask, float(mask.sum()) / n_cells))
    return total


def enumeration_estimates(imputed_ratings=None, used_propensity=None):
    params, users, items, ratings, propensity = enumeration_problem()
    used = propensity if used_propensity is None else used_propensity
    imputed = ratings - 1.0 if imputed_ratings is None else imputed_ratings

    def batch(mask):
        return Batch(users, items, ratings, used, mask)

    truth = float(jnp.mean((predict_mf(params, users, items) - ratings) ** 2))
    estimates = {
        "naive": lambda m, d: naive(params, batch(m), 0.0, d),
        "ips": lambda m, d: ips(params, batch(m), 0.0, d),
        "snips": lambda m, d: snips(params, batch(m), 0.0, d),
        # every cell once as the "uniform" cells: the first term is exact
        "dr": lambda m, d: dr_prediction(
            params, batch(m), imputed, users, items, imputed, 0.0, d
        ),
    }
    return truth, estimates


def test_ips_and_dr_are_unbiased_snips_and_naive_are_not():
    with jax.enable_x64(True):
        truth, estimates = enumeration_estimates()
        mean = {k: expectation_over_patterns(f) for k, f in estimates.items()}
    assert mean["ips"] == pytest.approx(truth, rel=1e-10)
    assert mean["dr"] == pytest.approx(truth, rel=1e-10)
    assert abs(mean["snips"] - truth) > 0.01 * truth  # consistent, not unbiased
    assert abs(mean["naive"] - truth) > 0.05 * truth


def test_dr_is_exact_with_exact_imputation_and_wrong_propensities():
    with jax.enable_x64(True):
        params, users, items, ratings, propensity = enumeration_problem()
        truth, estimates = enumeration_estimates(
            imputed_ratings=ratings, used_propensity=jnp.clip(propensity * 2, 0, 1)
        )
        worst = 0.0
        for mask in ([1, 1, 0, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0]):
            mask = jnp.asarray(mask, jnp.float64)
            value = float(estimates["dr"](mask, float(mask.sum()) / 8))
            worst = max(worst, abs(value - truth))
        biased_ips = expectation_over_patterns(estimates["ips"])
    assert worst < 1e-12
    assert abs(biased_ips - truth) > 0.05 * truth  # the propensities are wrong


# ---------------------------------------------------------------------------
# Minibatch estimates, by Monte Carlo


def test_minibatch_ips_and_dr_are_unbiased_naive_is_not():
    """Random observation, a random minibatch of the observed ratings and
    random uniform cells: IPS and DR average to the full-matrix MSE within
    4 Monte Carlo standard errors over 400 replicates; naive misses it."""
    rng = np.random.default_rng(7)
    n_users, n_items, batch_size, n_cells_drawn = 12, 10, 8, 8
    params = init_mf(jax.random.key(1), n_users, n_items, 2, 0.6, 3.0)
    imputation = init_mf(jax.random.key(2), n_users, n_items, 2, 0.6, 3.0)
    rhat = np.asarray(predict_matrix(params))
    ratings = rhat + rng.normal(0, 1.0, size=rhat.shape)
    error = (rhat - ratings) ** 2
    propensity = 0.1 + 0.8 * np.exp(-error)  # large errors rarely observed
    truth = error.mean()

    n_reps = 400
    picked = np.empty((n_reps, batch_size), np.int64)
    density = np.empty(n_reps)
    for rep in range(n_reps):
        observed = np.flatnonzero(rng.random(rhat.size) < propensity.ravel())
        density[rep] = observed.size / rhat.size
        picked[rep] = rng.choice(observed, size=batch_size, replace=True)
    cell_users = rng.integers(0, n_users, (n_reps, n_cells_drawn))
    cell_items = rng.integers(0, n_items, (n_reps, n_cells_drawn))

    def one_replicate(picked, density, cell_users, cell_items):
        users, items = jnp.divmod(picked, n_items)
        batch = Batch(
            users,
            items,
            jnp.asarray(ratings.ravel())[picked],
            jnp.asarray(propensity.ravel())[picked],
            jnp.ones(batch_size),
        )
        imputed = predict_mf(imputation, users, items)
        imputed_cells = predict_mf(imputation, cell_users, cell_items)
        return {
            "naive": naive(params, batch, 0.0, density),
            "ips": ips(params, batch, 0.0, density),
            "dr": dr_prediction(
                params, batch, imputed, cell_users, cell_items, imputed_cells,
                0.0, density,
            ),
        }

    values = jax.vmap(one_replicate)(picked, density, cell_users, cell_items)
    for name, draws in values.items():
        draws = np.asarray(draws, np.float64)
        se = draws.std(ddof=1) / np.sqrt(draws.size)
        if name == "naive":
            assert abs(draws.mean() - truth) > 4 * se
        else:
            assert abs(draws.mean() - truth) < 4 * se, (name, draws.mean(), truth)


def test_sample_weights_as_used():
    propensity = np.array([0.5, 0.25, 1.0, 0.1])
    np.testing.assert_allclose(sample_weights("naive", propensity, 0.2), 1.0)
    np.testing.assert_allclose(sample_weights("ips", propensity, 0.2), 0.2 / propensity)
    np.testing.assert_allclose(sample_weights("dr", propensity, 0.2), 0.2 / propensity)
    snips_weights = sample_weights("snips", propensity, 0.2)
    np.testing.assert_allclose(snips_weights.mean(), 1.0)
    np.testing.assert_allclose(snips_weights / snips_weights[2], 1 / propensity)
