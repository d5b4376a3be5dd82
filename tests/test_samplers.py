"""The negative samplers: never a known positive, frequencies as intended, the
positive lookup, and the same draws under jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from estimators.implicit import (
    lookup_positives,
    positive_index,
    sample_negatives,
)

N_USERS, N_ITEMS = 7, 13
DRAWS = 20_000
SAMPLE = jax.jit(sample_negatives, static_argnames=("n", "sampler"))
LOOKUP = jax.jit(lookup_positives)


@pytest.fixture(scope="module")
def problem():
    """Positives with the awkward cases: a user without positives, one with
    every item but one, positives at the first and last item, a run of
    adjacent positives, zero-weight items."""
    rng = np.random.default_rng(0)
    positive = rng.random((N_USERS, N_ITEMS)) < 0.4
    positive[0] = False
    positive[1] = True
    positive[1, 6] = False
    positive[2, :5] = True
    positive[3, [0, N_ITEMS - 1]] = True
    users, items = np.nonzero(positive)
    clicks = rng.integers(0, 6, N_ITEMS).astype(float)
    clicks[[6, 7]] = [3.0, 0.0]  # user 1's only non-positive has weight
    return positive, users, items, clicks


def draw(index, sampler, seed=1):
    users = jnp.arange(N_USERS, dtype=jnp.int32)
    return np.asarray(SAMPLE(jax.random.key(seed), index, users, n=DRAWS,
                             sampler=sampler))


def intended(positive, weights):
    """The intended law of each user's negatives, (U, I)."""
    mass = np.where(positive, 0.0, weights)
    return mass / mass.sum(axis=1, keepdims=True)


CASES = [("uniform", None), ("popularity", 1.0), ("popularity", 0.5),
         ("popularity", 0.0)]


@pytest.mark.parametrize("sampler, beta", CASES,
                         ids=[f"{s}-{b}" for s, b in CASES])
def test_never_a_positive_and_the_intended_frequencies(problem, sampler, beta):
    """Every one of 20,000 draws per user is checked against the user's
    positives; every (user, item) count is within 4 binomial standard errors
    of ``DRAWS * p``, ``p`` uniform over the non-positives or proportional to
    ``clicks^beta`` over them."""
    positive, users, items, clicks = problem
    weights = np.ones(N_ITEMS) if beta is None else clicks**beta
    index = positive_index(users, items, N_USERS, N_ITEMS, weights)
    negatives = draw(index, sampler)
    assert negatives.shape == (N_USERS, DRAWS)
    assert negatives.min() >= 0 and negatives.max() < N_ITEMS
    hits = positive[np.arange(N_USERS)[:, None], negatives]
    assert not hits.any()

    p = intended(positive, weights)
    counts = np.stack([np.bincount(row, minlength=N_ITEMS) for row in negatives])
    se = np.sqrt(DRAWS * p * (1 - p))
    assert np.all(np.abs(counts - DRAWS * p) <= 4 * se + 1e-9)
    assert np.all(counts[p == 0] == 0)  # zero weight: never drawn
    assert np.all(counts[1] == DRAWS * (np.arange(N_ITEMS) == 6))


def test_zero_weight_items_are_skipped_but_not_positives():
    """Popularity with beta > 0 never draws an item without clicks."""
    weights = np.array([0.0, 2.0, 0.0, 0.0, 1.0, 0.0])
    index = positive_index(np.array([0, 0]), np.array([1, 3]), 2, 6, weights)
    sample = SAMPLE(jax.random.key(0), index, jnp.asarray([0, 1]), n=4000,
                    sampler="popularity")
    assert set(np.unique(np.asarray(sample[0]))) == {4}
    assert set(np.unique(np.asarray(sample[1]))) == {1, 4}


def test_sampling_under_vmap_matches_one_call(problem):
    positive, users, items, clicks = problem
    index = positive_index(users, items, N_USERS, N_ITEMS, clicks)
    keys = jax.random.split(jax.random.key(3), 4)
    per_user = jnp.arange(N_USERS, dtype=jnp.int32)
    batched = jax.jit(jax.vmap(lambda k: sample_negatives(k, index, per_user, 50,
                                                          "popularity")))(keys)
    for k, key in enumerate(keys):
        one = SAMPLE(key, index, per_user, n=50, sampler="popularity")
        np.testing.assert_array_equal(batched[k], one)
    assert not positive[np.arange(N_USERS)[None, :, None], np.asarray(batched)].any()


def test_lookup_finds_exactly_the_positives(problem):
    positive, users, items, clicks = problem
    rng = np.random.default_rng(4)
    p_expose = rng.uniform(0.1, 1.0, users.size)
    index = positive_index(users, items, N_USERS, N_ITEMS, None, p_expose)
    grid_users, grid_items = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS),
                                         indexing="ij")
    found, exposure = LOOKUP(index, jnp.asarray(grid_users),
                                       jnp.asarray(grid_items))
    np.testing.assert_array_equal(np.asarray(found), positive)
    expected = np.ones((N_USERS, N_ITEMS))
    expected[users, items] = p_expose
    np.testing.assert_allclose(np.asarray(exposure), expected, rtol=1e-6)
    # (B,) users against (B, m) items broadcasts per row
    found_rows, _ = LOOKUP(index, jnp.arange(N_USERS),
                                     jnp.asarray(grid_items))
    np.testing.assert_array_equal(np.asarray(found_rows), positive)


def test_repeated_pairs_count_once():
    index = positive_index(np.array([0, 0, 0]), np.array([2, 2, 0]), 1, 4)
    assert np.asarray(index.items).tolist() == [0, 2]
    assert np.asarray(index.n_free).tolist() == [2]
    sample = np.asarray(SAMPLE(jax.random.key(0), index, jnp.zeros(1, jnp.int32),
                               n=500, sampler="uniform"))
    assert set(np.unique(sample)) == {1, 3}
