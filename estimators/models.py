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

Neural collaborative filtering (NCF, He, Liao, Zhang, Nie, Hu and Chua,
"Neural collaborative filtering", WWW 2017) fuses two towers: generalised MF
(GMF), ``g_ui = p_u * q_i`` (elementwise), and a multi-layer perceptron over
the concatenated embeddings, ``h_ui = MLP([x_u, y_i])`` with ReLU layers; the
output is ``s_ui = w^T [g_ui, h_ui] + b``. Its parameters:

- ``gmf_user`` (n_users, dim), ``gmf_item`` (n_items, dim): GMF embeddings
- ``mlp_user`` (n_users, dim), ``mlp_item`` (n_items, dim): MLP embeddings
- ``mlp``: a tuple of layers ``{"w": (fan_in, width), "b": (width,)}``,
  ``fan_in`` = 2 * dim for the first layer
- ``out_w`` (dim + last width,), ``out_b`` (): the fused output layer

:func:`predict` and :func:`predict_matrix` tell the two models apart by their
parameters (NCF has ``gmf_user``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sim.config import check

__all__ = [
    "MODELS",
    "NCFConfig",
    "init_mf",
    "predict_mf",
    "init_ncf",
    "predict_ncf",
    "predict",
    "predict_matrix",
]

MODELS = ("mf", "ncf")

Params = dict[str, Any]


@dataclass(frozen=True)
class NCFConfig:
    """NCF's MLP tower (keys ``ncf.*``): ``layers`` are the widths of its ReLU
    layers, first to last (the embedding size is ``train.dim``)."""

    layers: tuple[int, ...] = (32, 16)

    def __post_init__(self) -> None:
        ok = isinstance(self.layers, tuple) and len(self.layers) > 0 and all(
            isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1
            for w in self.layers
        )
        check(ok, "ncf.layers", "a non-empty tuple of integers >= 1", self.layers)


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


def init_ncf(
    key: jax.Array,
    n_users: int,
    n_items: int,
    dim: int,
    layers: tuple[int, ...],
    init_scale: float,
) -> Params:
    """Fresh NCF parameters: embeddings ~ Normal(0, init_scale^2); MLP weights
    ~ Normal(0, 2 / fan_in) (He et al., ICCV 2015, for ReLU), biases 0; output
    weights ~ Normal(0, 1 / fan_in), output bias 0."""
    keys = jax.random.split(key, 5 + len(layers))
    dtype = jnp.zeros(()).dtype

    def normal(k, shape, scale):
        return scale * jax.random.normal(k, shape, dtype)

    mlp, fan_in = [], 2 * dim
    for k, width in zip(keys[5:], layers):
        mlp.append({"w": normal(k, (fan_in, width), (2.0 / fan_in) ** 0.5),
                    "b": jnp.zeros((width,), dtype)})
        fan_in = width
    out_in = dim + fan_in
    return {
        "gmf_user": normal(keys[0], (n_users, dim), init_scale),
        "gmf_item": normal(keys[1], (n_items, dim), init_scale),
        "mlp_user": normal(keys[2], (n_users, dim), init_scale),
        "mlp_item": normal(keys[3], (n_items, dim), init_scale),
        "mlp": tuple(mlp),
        "out_w": normal(keys[4], (out_in,), out_in**-0.5),
        "out_b": jnp.zeros((), dtype),
    }


def _ncf_head(params: Params, gmf: jax.Array, hidden: jax.Array) -> jax.Array:
    for layer in params["mlp"]:
        hidden = jax.nn.relu(hidden @ layer["w"] + layer["b"])
    return jnp.concatenate([gmf, hidden], -1) @ params["out_w"] + params["out_b"]


def predict_ncf(params: Params, users: jax.Array, items: jax.Array) -> jax.Array:
    """NCF scores (n,) ``s_ui = w^T [p_u * q_i, MLP([x_u, y_i])] + b`` for the
    pairs ``(users[k], items[k])``, both (n,)."""
    gmf = params["gmf_user"][users] * params["gmf_item"][items]
    hidden = jnp.concatenate(
        [params["mlp_user"][users], params["mlp_item"][items]], -1
    )
    return _ncf_head(params, gmf, hidden)


def predict(params: Params, users: jax.Array, items: jax.Array) -> jax.Array:
    """Scores (n,) of MF or NCF, chosen by the parameters' structure."""
    if "gmf_user" in params:
        return predict_ncf(params, users, items)
    return predict_mf(params, users, items)


@jax.jit
def _ncf_rows(params: Params, users: jax.Array) -> jax.Array:
    n_items = params["gmf_item"].shape[0]
    gmf = params["gmf_user"][users][:, None, :] * params["gmf_item"][None]
    user_part = jnp.broadcast_to(
        params["mlp_user"][users][:, None, :],
        (users.shape[0], n_items, params["mlp_user"].shape[1]),
    )
    item_part = jnp.broadcast_to(params["mlp_item"][None], user_part.shape)
    return _ncf_head(params, gmf, jnp.concatenate([user_part, item_part], -1))


def predict_matrix(params: Params) -> jax.Array:
    """Predicted scores (ratings, for MF on ratings) for every cell, (n_users,
    n_items), for MF or NCF (NCF in blocks of users, to bound memory)."""
    if "gmf_user" in params:
        n_users = params["gmf_user"].shape[0]
        block = 256
        parts = []
        for first in range(0, n_users, block):
            users = jnp.arange(first, min(first + block, n_users))
            if users.shape[0] < block:  # pad: one compiled shape
                users = jnp.concatenate(
                    [users, jnp.zeros((block - users.shape[0],), users.dtype)]
                )
            parts.append(_ncf_rows(params, users)[: min(block, n_users - first)])
        return jnp.concatenate(parts, 0)
    return (
        params["mu"]
        + params["user_bias"][:, None]
        + params["item_bias"][None, :]
        + params["user_factors"] @ params["item_factors"].T
    )
