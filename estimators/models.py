"""Matrix factorisation with biases, as pure functions over a parameter pytree.

The predicted rating of user ``u`` for item ``i`` is

.. math::

    \\hat r_{ui} = \\mu + b_u + c_i + p_u^\\top q_i

with ``mu`` the global bias, ``b_u = user_bias[u]``, ``c_i = item_bias[i]``,
``p_u = user_factors[u]`` and ``q_i = item_factors[i]`` (Koren, Bell and
Volinsky, "Matrix factorization techniques for recommender systems", IEEE
Computer 42(8), 2009).

Parameters are a plain dict of arrays, so that ``jax.grad``, optax and
``jax.tree_util`` work on them directly:

- ``mu``: () global bias
- ``user_bias``: (n_users,)
- ``item_bias``: (n_items,)
- ``user_factors``: (n_users, dim)
- ``item_factors``: (n_items, dim)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["init_mf", "predict_mf", "predict_matrix"]

Params = dict[str, jax.Array]


def init_mf(
    key: jax.Array,
    n_users: int,
    n_items: int,
    dim: int,
    init_scale: float,
    global_mean: float,
) -> Params:
    """Fresh parameters: factors ~ Normal(0, init_scale^2), biases 0,
    ``mu = global_mean``.

    Args:
        key: a ``jax.random`` key.
        n_users, n_items: number of rows of the user and item tables.
        dim: number of latent factors.
        init_scale: standard deviation of the initial factors.
        global_mean: starting value of the global bias (usually the mean
            training rating).
    """
    key_users, key_items = jax.random.split(key)
    dtype = jnp.zeros(()).dtype  # float32, or float64 under enable_x64
    return {
        "mu": jnp.asarray(global_mean, dtype),
        "user_bias": jnp.zeros((n_users,), dtype),
        "item_bias": jnp.zeros((n_items,), dtype),
        "user_factors": init_scale
        * jax.random.normal(key_users, (n_users, dim), dtype),
        "item_factors": init_scale
        * jax.random.normal(key_items, (n_items, dim), dtype),
    }


def predict_mf(params: Params, users: jax.Array, items: jax.Array) -> jax.Array:
    """Predicted ratings (n,) for the pairs ``(users[k], items[k])``, both (n,)."""
    dot = jnp.sum(params["user_factors"][users] * params["item_factors"][items], -1)
    return (
        params["mu"] + params["user_bias"][users] + params["item_bias"][items] + dot
    )


def predict_matrix(params: Params) -> jax.Array:
    """Predicted ratings for every cell, (n_users, n_items)."""
    return (
        params["mu"]
        + params["user_bias"][:, None]
        + params["item_bias"][None, :]
        + params["user_factors"] @ params["item_factors"].T
    )
