"""Explicit-feedback training objectives, one function per loss, per minibatch.

Notation shared by every objective:

- ``N = n_users * n_items`` cells of the rating matrix, ``n`` training ratings,
  and ``density = n / N``.
- a minibatch ``b`` of training ratings is a :class:`Batch`; ``mean_b`` is the
  average over its real samples (``mask == 1``; padded samples count for
  nothing).
- ``e_b = (rhat_b - r_b)^2`` is the squared error of the prediction
  ``rhat_b = predict_mf(params, users, items)`` against ``r_b = ratings``.
- ``p_b = propensity``: the probability that this cell's rating lands in the
  training split (the observation propensity times the split fraction).

The target of every debiased objective is the full-matrix mean squared error
``(1/N) sum_{u,i} (rhat_ui - r_ui)^2``, including the cells nobody rated.

Every objective adds the same per-occurrence L2 penalty on the rows the
minibatch touches::

    l2 * mean_b(|p_u|^2 + |q_i|^2 + b_u^2 + c_i^2)

so a user with many ratings is shrunk in proportion to how often it appears,
as in stochastic-gradient matrix factorisation (Koren et al. 2009). The
global bias ``mu`` is not penalised.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from estimators.models import Params, predict_mf

__all__ = [
    "Batch",
    "OBJECTIVES",
    "WEIGHTED",
    "squared_error",
    "l2_penalty",
    "naive",
    "ips",
    "snips",
    "dr_prediction",
    "dr_imputation",
    "sample_weights",
]

OBJECTIVES = ("naive", "ips", "snips", "dr")
WEIGHTED = ("ips", "snips", "dr")  # objectives that need propensities


class Batch(NamedTuple):
    """One minibatch of training ratings, every field (B,).

    ``users`` and ``items`` index the parameter tables, ``ratings`` are the
    observed values, ``propensity`` the training-split propensities (1.0 on
    padding, and ignored by ``naive``), ``mask`` 1.0 for real samples and 0.0
    for padding.
    """

    users: jax.Array
    items: jax.Array
    ratings: jax.Array
    propensity: jax.Array
    mask: jax.Array


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def squared_error(params: Params, batch: Batch) -> jax.Array:
    """``e_b = (rhat_b - r_b)^2``, (B,)."""
    return (predict_mf(params, batch.users, batch.items) - batch.ratings) ** 2


def l2_penalty(params: Params, batch: Batch, l2: jax.Array) -> jax.Array:
    """``l2 * mean_b(|p_u|^2 + |q_i|^2 + b_u^2 + c_i^2)`` over the batch's rows."""
    users, items = batch.users, batch.items
    sizes = (
        jnp.sum(params["user_factors"][users] ** 2, -1)
        + jnp.sum(params["item_factors"][items] ** 2, -1)
        + params["user_bias"][users] ** 2
        + params["item_bias"][items] ** 2
    )
    return l2 * _masked_mean(sizes, batch.mask)


def naive(params: Params, batch: Batch, l2: jax.Array, density: jax.Array):
    """Naive MSE over the observed ratings: ``mean_b e_b`` (+ L2).

    Unbiased for the mean error over *observed* cells only; for the full-matrix
    MSE it is biased whenever ratings are missing not at random, because cells
    that are likely to be rated dominate it. ``density`` is unused (kept so all
    single-phase objectives share one signature).
    """
    del density
    return _masked_mean(squared_error(params, batch), batch.mask) + l2_penalty(
        params, batch, l2
    )


def ips(params: Params, batch: Batch, l2: jax.Array, density: jax.Array):
    """Inverse-propensity-scored MSE (Schnabel, Swaminathan, Singh, Chandak and
    Joachims, "Recommendations as treatments: debiasing learning and
    evaluation", ICML 2016)::

        R_IPS = (1/N) sum_{observed (u,i)} e_ui / p_ui
        minibatch estimate: density * mean_b(e_b / p_b)        (+ L2)

    with ``density = n/N``, ``e_b`` from ``params`` and ``batch``, ``p_b =
    batch.propensity``. Unbiased for the full-matrix MSE when the propensities
    are the true probabilities of observation and positive on every cell; the
    minibatch estimate is unbiased for ``R_IPS`` under uniform sampling of the
    batch. Its variance grows with ``max 1/p``.
    """
    weighted = squared_error(params, batch) / batch.propensity
    return density * _masked_mean(weighted, batch.mask) + l2_penalty(
        params, batch, l2
    )


def snips(params: Params, batch: Batch, l2: jax.Array, density: jax.Array):
    """Self-normalised IPS MSE, normalised within each minibatch::

        R_SNIPS = sum_b(e_b / p_b) / sum_b(1 / p_b)            (+ L2)

    (Swaminathan and Joachims, "The self-normalized estimator for
    counterfactual learning", NeurIPS 2015; applied to ratings by Schnabel et
    al., ICML 2016.) Consistent, not unbiased: the ratio of two unbiased
    estimates is biased by O(1/B), in exchange for a variance that does not
    explode when a few propensities are tiny, and it needs the propensities
    only up to a constant factor. ``density`` is unused.
    """
    del density
    inverse = batch.mask / batch.propensity
    total = jnp.sum(squared_error(params, batch) * inverse)
    return total / jnp.sum(inverse) + l2_penalty(params, batch, l2)


def dr_prediction(
    params: Params,
    batch: Batch,
    imputed: jax.Array,
    cell_users: jax.Array,
    cell_items: jax.Array,
    imputed_cells: jax.Array,
    l2: jax.Array,
    density: jax.Array,
):
    """Doubly robust MSE, the prediction phase of joint learning (Wang, Zhang,
    Sun and Qi, "Doubly robust joint learning for recommendation on data
    missing not at random", ICML 2019)::

        R_DR = (1/N) sum_{all (u,i)} [ehat_ui + o_ui (e_ui - ehat_ui) / p_ui]
        ehat_ui = (rhat_ui - rtilde_ui)^2
        minibatch estimate: mean_m ehat_m
                            + density * mean_b((e_b - ehat_b) / p_b)   (+ L2)

    ``rtilde`` comes from the imputation model and is a constant here:
    ``imputed`` (B,) at the batch's cells and ``imputed_cells`` (M,) at ``M``
    cells ``(cell_users, cell_items)`` drawn uniformly from all ``N`` cells
    (the caller draws them). ``o_ui`` is 1 on observed cells. ``R_DR`` is
    unbiased for the full-matrix MSE when either the propensities are exact or
    the imputed errors are exact (double robustness); both minibatch terms are
    unbiased for their sums. The L2 penalty covers the batch's rows only.
    """
    imputed = jax.lax.stop_gradient(imputed)
    imputed_cells = jax.lax.stop_gradient(imputed_cells)
    cell_error = (predict_mf(params, cell_users, cell_items) - imputed_cells) ** 2
    rhat = predict_mf(params, batch.users, batch.items)
    error = (rhat - batch.ratings) ** 2
    imputed_error = (rhat - imputed) ** 2
    correction = (error - imputed_error) / batch.propensity
    return (
        jnp.mean(cell_error)
        + density * _masked_mean(correction, batch.mask)
        + l2_penalty(params, batch, l2)
    )


def dr_imputation(
    imputation_params: Params,
    batch: Batch,
    predicted: jax.Array,
    l2: jax.Array,
    density: jax.Array,
):
    """Imputation phase of doubly robust joint learning (Wang et al., ICML
    2019): fit the imputed error to the observed error, weighted by 1/p::

        L_imp = density * mean_b((ehat_b - e_b)^2 / p_b)       (+ L2)
        ehat_b = (rhat_b - rtilde_b)^2,  e_b = (rhat_b - r_b)^2

    ``rtilde_b = predict_mf(imputation_params, ...)`` is what is learned;
    ``rhat_b = predicted`` (B,) comes from the prediction model and is a
    constant here. Unbiased (with exact propensities) for the full-matrix mean
    of ``(ehat - e)^2``, which is the bias-variance term that the DR estimate's
    accuracy depends on. The L2 penalty applies to ``imputation_params``.
    """
    predicted = jax.lax.stop_gradient(predicted)
    rtilde = predict_mf(imputation_params, batch.users, batch.items)
    imputed_error = (predicted - rtilde) ** 2
    error = (predicted - batch.ratings) ** 2
    weighted = (imputed_error - error) ** 2 / batch.propensity
    return density * _masked_mean(weighted, batch.mask) + l2_penalty(
        imputation_params, batch, l2
    )


def sample_weights(objective: str, propensity, density: float):
    """Per-sample weights (n,) with which each objective counts a training
    error, as used: 1 for ``naive``; ``density / p`` for ``ips`` and ``dr``;
    ``(1/p) / mean(1/p)`` for ``snips`` (relative to an average sample, since
    its weights are normalised). Works on numpy or JAX arrays."""
    if objective == "naive":
        return propensity * 0 + 1.0
    inverse = 1.0 / propensity
    if objective == "snips":
        return inverse / inverse.mean()
    return density * inverse
