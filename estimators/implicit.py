"""Implicit-feedback objectives and the negative samplers they train with.

Two kinds of training data, two families of objectives, one trainer
(:func:`estimators.train.fit_implicit`):

- **Clicked pairs** (the positive-only view of a log, :class:`ImplicitData`):
  ``bce``, ``bpr``, ``wmf``, ``relmf`` and ``ubpr``. Every clicked pair
  ``(u, i)`` (``Y_ui = 1``) is a positive; each positive is joined by ``m =
  implicit.negatives`` items ``j`` drawn by a negative sampler. The samplers
  ``uniform`` and ``popularity`` never return a known positive of the user (a
  pair clicked in the training data), exactly, inside compiled code;
  ``ubpr`` draws ``j`` uniformly from *all* items, positives included, as its
  estimator requires.
- **Impressions** (every shown item with its rank, :class:`ImpressionData`):
  the pointwise click losses ``click_naive``, ``click_ips``, ``click_affine``
  and ``click_oracle``.

Notation shared below: ``s_ui`` is the model's output for the pair (a logit:
``predict(params, users, items)`` of :mod:`estimators.models`), ``sigma`` the
logistic function, ``mean_b`` the average over the real positives (or
impressions) of a minibatch (``mask == 1``; padding counts for nothing), and
``-log sigma(x) = softplus(-x)``, ``-log(1 - sigma(x)) = softplus(x)``.
Propensities are floored at ``f = implicit.propensity_floor`` before they
divide: ``theta -> max(theta, f)``; the trainer warns when the floor changes a
value.

About negative sampling and bias. The full-matrix form of every pointwise
objective sums over *all* unclicked pairs; the sampled form replaces that sum
by ``m`` draws per positive with weight 1 each, as is common practice. That
re-weights clicked against unclicked pairs (the ratio is set by ``m``, not by
the catalogue size), which shifts the calibration of the scores but not the
ranking the objective prefers when the sampler is uniform. Statements of
unbiasedness below are about the full-matrix form, with the unclicked sum
estimated by its sampled counterpart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from sim.config import ConfigError, check, check_range

__all__ = [
    "PAIR_OBJECTIVES",
    "IMPRESSION_OBJECTIVES",
    "IMPLICIT_OBJECTIVES",
    "SAMPLERS",
    "ImplicitConfig",
    "WMFConfig",
    "ImplicitData",
    "ImpressionData",
    "PositiveIndex",
    "positive_index",
    "sample_negatives",
    "lookup_positives",
    "bce",
    "bpr",
    "wmf",
    "relmf",
    "ubpr",
    "click_labels",
    "click_bce",
    "pairs_from_log",
    "impressions_from_log",
]

PAIR_OBJECTIVES = ("bce", "bpr", "wmf", "relmf", "ubpr")
IMPRESSION_OBJECTIVES = ("click_naive", "click_ips", "click_affine", "click_oracle")
IMPLICIT_OBJECTIVES = PAIR_OBJECTIVES + IMPRESSION_OBJECTIVES
SAMPLERS = ("uniform", "popularity")


def _check_int(value: Any, key: str, low: int) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    check(ok and value >= low, key, f"an integer >= {low}", value)


@dataclass(frozen=True)
class ImplicitConfig:
    """Settings of the implicit objectives (keys ``implicit.*``).

    negatives: items ``m`` sampled per positive (pair objectives).
    sampler: ``uniform`` (every non-positive item of the user equally likely)
    or ``popularity`` (a non-positive item ``j`` with probability proportional
    to ``n_j^beta``, ``n_j`` its clicks in the training pairs; items never
    clicked are then never drawn when ``beta > 0``). sampler_beta: that
    ``beta``. propensity_floor: the floor ``f`` of every propensity that
    divides (``p_expose`` for relmf and ubpr, ``p_examine`` for the click
    losses). ubpr_clip: clip UBPR's per-pair weight at 0 from below (the
    non-negative variant of Saito, ICTIR 2020).
    """

    negatives: int = 4
    sampler: str = "uniform"
    sampler_beta: float = 1.0
    propensity_floor: float = 0.01
    ubpr_clip: bool = False

    def __post_init__(self) -> None:
        _check_int(self.negatives, "implicit.negatives", 1)
        check(self.sampler in SAMPLERS, "implicit.sampler",
              "one of " + ", ".join(map(repr, SAMPLERS)), self.sampler)
        check_range(self.sampler_beta, "implicit.sampler_beta", 0.0)
        check_range(self.propensity_floor, "implicit.propensity_floor", 0.0, 1.0,
                    low_open=True)
        check(isinstance(self.ubpr_clip, bool), "implicit.ubpr_clip",
              "true or false", self.ubpr_clip)


@dataclass(frozen=True)
class WMFConfig:
    """Weighted matrix factorisation (keys ``wmf.*``): the confidence of a
    clicked pair is ``c = 1 + alpha * plays``."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_range(self.alpha, "wmf.alpha", 0.0)


class ImplicitData(NamedTuple):
    """Clicked pairs of one split (the positive-only view), every array (n,).

    ``users`` in [0, n_users), ``items`` in [0, n_items) (integers, each pair
    at most once); ``clicks`` >= 1 (the pair's click count: it sets item
    popularity for the ``popularity`` sampler); ``plays`` >= 0 (engagement,
    for ``wmf``); ``p_expose`` the pair's ``p_expose_pair`` in (0, 1] (needed
    by ``relmf`` and ``ubpr``, else may be ``None``).
    """

    users: np.ndarray
    items: np.ndarray
    clicks: np.ndarray
    plays: np.ndarray
    p_expose: np.ndarray | None = None


class ImpressionData(NamedTuple):
    """Impressions of one split, every array (n,).

    ``users``, ``items`` (integer ids); ``clicks`` in {0, 1}; ``p_examine`` the
    examination propensity ``theta_k`` of the rank the item was shown at, in
    (0, 1] (true, RandPair or EM; needed by ``click_ips`` and
    ``click_affine``); ``eps_plus`` and ``eps_minus`` the click probabilities
    of an examined relevant and non-relevant item (``click.p_relevant`` and
    ``click.p_nonrelevant``; needed by ``click_affine``); ``relevance`` the
    true R in {0, 1} (only for ``click_oracle``).
    """

    users: np.ndarray
    items: np.ndarray
    clicks: np.ndarray
    p_examine: np.ndarray | None = None
    eps_plus: np.ndarray | None = None
    eps_minus: np.ndarray | None = None
    relevance: np.ndarray | None = None


# ---------------------------------------------------------------------------
# Negative samplers



@dataclass(frozen=True)
class PositiveIndex:
    """The known positives of every user, sorted, for exact samplers in
    compiled code (a JAX pytree; ``n_items`` and ``n_steps`` are static).

    Users' positives are stored one user after the other (CSR): user ``u``
    owns slots ``indptr[u]:indptr[u + 1]`` of the (P,) arrays, items ascending.

    - ``indptr`` (U + 1,) int32; ``items`` (P,) int32.
    - ``shifted`` (P,) int32: ``items[k] - r_k`` with ``r_k`` the slot's rank
      within its user, i.e. the number of the user's non-positives before it.
    - ``cdf`` (I,) float32: inclusive cumulative sum of the item weights
      ``w_j`` of the popularity sampler.
    - ``gap_mass`` (P,) float32: the weight of the user's non-positives before
      the slot's item; ``pos_mass`` (P,) float32: the inclusive cumulative
      weight of the user's positives up to the slot.
    - ``free_mass`` (U,) float32: the weight of the user's non-positives.
    - ``n_free`` (U,) int32: the number of the user's non-positives.
    - ``p_expose`` (P,) float32: the pair's ``p_expose_pair`` (1 if unknown).
    - ``n_items``: I; ``n_steps``: bisection steps that cover the longest user.
    """

    indptr: jax.Array
    items: jax.Array
    shifted: jax.Array
    cdf: jax.Array
    gap_mass: jax.Array
    pos_mass: jax.Array
    free_mass: jax.Array
    n_free: jax.Array
    p_expose: jax.Array
    n_items: int = dataclasses.field(metadata=dict(static=True), default=1)
    n_steps: int = dataclasses.field(metadata=dict(static=True), default=1)


jax.tree_util.register_dataclass(
    PositiveIndex,
    data_fields=["indptr", "items", "shifted", "cdf", "gap_mass", "pos_mass",
                 "free_mass", "n_free", "p_expose"],
    meta_fields=["n_items", "n_steps"],
)


def positive_index(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    item_weights: np.ndarray | None = None,
    p_expose: np.ndarray | None = None,
) -> PositiveIndex:
    """Build the :class:`PositiveIndex` of the pairs ``(users[k], items[k])``.

    ``users``, ``items`` (n,) integer ids (repeated pairs count once);
    ``item_weights`` (I,) >= 0 the popularity sampler's ``w_j`` (default all
    1, which makes it uniform); ``p_expose`` (n,) the pairs' exposure
    propensities (default 1). Cumulative masses are summed in float64 and
    stored in float32.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    keys, first = np.unique(users * n_items + items, return_index=True)
    pos_users, pos_items = keys // n_items, keys % n_items
    counts = np.bincount(pos_users, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(keys.size) - indptr[pos_users]

    weights = (np.ones(n_items) if item_weights is None
               else np.asarray(item_weights, np.float64))
    cdf = np.cumsum(weights)
    pos_weight = weights[pos_items]
    pos_mass = np.cumsum(pos_weight)
    pos_mass -= np.concatenate([[0.0], pos_mass])[indptr[pos_users]]  # per user
    gap_mass = (cdf[pos_items] - weights[pos_items]) - (pos_mass - pos_weight)
    user_pos_mass = np.bincount(pos_users, weights=pos_weight, minlength=n_users)
    free_mass = cdf[-1] - user_pos_mass
    exposure = (np.ones(keys.size) if p_expose is None
                else np.asarray(p_expose, np.float64)[first])
    longest = int(counts.max()) if counts.size else 0
    return PositiveIndex(
        indptr=jnp.asarray(indptr, jnp.int32),
        items=jnp.asarray(pos_items, jnp.int32),
        shifted=jnp.asarray(pos_items - rank, jnp.int32),
        cdf=jnp.asarray(cdf, jnp.float32),
        gap_mass=jnp.asarray(gap_mass, jnp.float32),
        pos_mass=jnp.asarray(pos_mass, jnp.float32),
        free_mass=jnp.asarray(np.maximum(free_mass, 0.0), jnp.float32),
        n_free=jnp.asarray(n_items - counts, jnp.int32),
        p_expose=jnp.asarray(exposure, jnp.float32),
        n_items=int(n_items),
        n_steps=max(1, longest.bit_length()),
    )


def _count_at_most(values, start, stop, query, n_steps: int):
    """For each k, ``#{s in [start_k, stop_k): values[s] <= query_k}`` by
    bisection, ``values`` ascending within each segment; all (n,) int32."""
    lo, hi = start, stop
    last = max(values.shape[0] - 1, 0)
    for _ in range(n_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        right = values[jnp.clip(mid, 0, last)] <= query
        lo = jnp.where(active & right, mid + 1, lo)
        hi = jnp.where(active & ~right, mid, hi)
    return lo - start


def sample_negatives(
    key: jax.Array, index: PositiveIndex, users: jax.Array, n: int, sampler: str
) -> jax.Array:
    """``n`` negative items for each of ``users`` (B,); returns (B, n) int32.

    ``uniform``: uniformly among the user's non-positives. Draw a rank ``r``
    in ``[0, I - P_u)`` and map it to the ``r``-th non-positive item,
    ``j = r + #{k : items_k - rank_k <= r}`` over the user's sorted positives
    (a bisection over ``shifted``).

    ``popularity``: a non-positive ``j`` with probability ``w_j / (W - W_u)``,
    ``W`` the total weight and ``W_u`` that of the user's positives: inverse
    CDF with the positives' weights removed. Draw ``t`` in ``[0, W - W_u)``,
    find the gap between consecutive positives in which the non-positive
    mass ``t`` falls (a bisection over ``gap_mass``), add back the weight of
    the positives before that gap and search the global CDF; the result is
    clamped into the gap, so a positive is never returned even where float32
    rounding puts ``t`` on a boundary.

    The user must have a non-positive (of positive weight): the trainer checks
    this at its boundary. Works under ``jit`` and ``vmap``.
    """
    users = users.astype(jnp.int32)
    start = index.indptr[users][:, None]
    stop = index.indptr[users + 1][:, None]
    count = stop - start
    if sampler == "uniform":
        rank = jax.random.randint(
            key, (users.shape[0], n), 0, jnp.maximum(index.n_free[users], 1)[:, None]
        )
        before = _count_at_most(index.shifted, start, stop, rank, index.n_steps)
        return (rank + before).astype(jnp.int32)
    if sampler != "popularity":
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    mass = jax.random.uniform(key, (users.shape[0], n)) * index.free_mass[users][
        :, None
    ]
    gap = _count_at_most(index.gap_mass, start, stop, mass, index.n_steps)
    last_slot = jnp.clip(start + gap - 1, 0, max(index.items.shape[0] - 1, 0))
    shift = jnp.where(gap > 0, index.pos_mass[last_slot], 0.0)
    item = jnp.searchsorted(index.cdf, mass + shift, side="right").astype(jnp.int32)
    next_slot = jnp.clip(start + gap, 0, max(index.items.shape[0] - 1, 0))
    low = jnp.where(gap > 0, index.items[last_slot] + 1, 0)
    high = jnp.where(gap < count, index.items[next_slot] - 1, index.n_items - 1)
    return jnp.clip(item, low, high).astype(jnp.int32)


def lookup_positives(
    index: PositiveIndex, users: jax.Array, items: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Whether each pair ``(users, items)`` (same shape) is a known positive,
    and its ``p_expose`` (1.0 where it is not)."""
    users = users.astype(jnp.int32)
    start, stop = index.indptr[users], index.indptr[users + 1]
    if users.ndim < items.ndim:
        start, stop = start[:, None], stop[:, None]
    before = _count_at_most(index.items, start, stop, items, index.n_steps)
    slot = jnp.clip(start + before - 1, 0, max(index.items.shape[0] - 1, 0))
    found = (before > 0) & (index.items[slot] == items)
    return found, jnp.where(found, index.p_expose[slot], 1.0)


# ---------------------------------------------------------------------------
# Pair objectives (logits in, scalar out)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def bce(pos_logits: jax.Array, neg_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Binary cross-entropy with negative sampling::

        L = mean_b[ -log sigma(s_ui) + sum_{j=1..m} -log(1 - sigma(s_uj)) ]

    ``pos_logits`` (B,) are ``s_ui`` at the clicked pairs (label 1),
    ``neg_logits`` (B, m) ``s_uj`` at the sampled non-positives (label 0),
    ``mask`` (B,). Uses no propensity: it treats "not clicked" as "not
    relevant", so it is biased towards what the logging policy exposed (the
    naive baseline of Saito et al., WSDM 2020; negative sampling as in
    Mikolov et al., NeurIPS 2013, and He et al., WWW 2017).
    """
    per = jax.nn.softplus(-pos_logits) + jnp.sum(jax.nn.softplus(neg_logits), -1)
    return _masked_mean(per, mask)


def bpr(pos_logits: jax.Array, neg_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Bayesian personalised ranking (Rendle, Freudenthaler, Gantner and
    Schmidt-Thieme, "BPR: Bayesian personalized ranking from implicit
    feedback", UAI 2009)::

        L = mean_b[ (1/m) sum_{j=1..m} -log sigma(s_ui - s_uj) ]

    ``pos_logits`` (B,) at the clicked pairs, ``neg_logits`` (B, m) at the
    sampled non-positives ``j``, ``mask`` (B,). Uses no propensity; biased
    like ``bce`` under non-uniform exposure.
    """
    per = jnp.mean(jax.nn.softplus(neg_logits - pos_logits[:, None]), -1)
    return _masked_mean(per, mask)


def wmf(
    pos_logits: jax.Array,
    neg_logits: jax.Array,
    plays: jax.Array,
    alpha: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """Weighted (confidence) matrix factorisation, sampled form (Hu, Koren and
    Volinsky, "Collaborative filtering for implicit feedback datasets", ICDM
    2008)::

        L = mean_b[ c_ui (1 - s_ui)^2 + sum_{j=1..m} (0 - s_uj)^2 ],
        c_ui = 1 + alpha * plays_ui

    ``pos_logits`` (B,) are the predicted preferences ``s_ui`` of the clicked
    pairs (preference 1), ``neg_logits`` (B, m) those of the sampled unclicked
    pairs (preference 0, confidence 1), ``plays`` (B,), ``alpha`` =
    ``wmf.alpha``. The paper minimises the same squared loss over the *full*
    matrix by alternating least squares; here the unclicked cells are sampled,
    ``m`` per positive. Uses no propensity.
    """
    confidence = 1.0 + alpha * plays
    per = confidence * (1.0 - pos_logits) ** 2 + jnp.sum(neg_logits**2, -1)
    return _masked_mean(per, mask)


def relmf(
    pos_logits: jax.Array,
    neg_logits: jax.Array,
    p_expose: jax.Array,
    floor: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """Rel-MF, the unbiased pointwise loss of Saito, Yaginuma, Nishino, Sakata
    and Nakata, "Unbiased recommender learning from missing-not-at-random
    implicit feedback", WSDM 2020::

        L = mean_b[ (Y/theta) (-log sigma(s_ui))
                    + (1 - Y/theta) (-log(1 - sigma(s_ui)))
                    + sum_{j=1..m} -log(1 - sigma(s_uj)) ]

    with ``Y = 1`` on the clicked pairs, ``theta = max(p_expose, floor)``,
    ``p_expose`` (B,) the pairs' ``p_expose_pair`` (the probability that the
    pair was examined at least once over the log), ``floor`` =
    ``implicit.propensity_floor``; on the sampled unclicked pairs ``Y = 0``
    and the term is the plain ``-log(1 - sigma)`` (no propensity needed).
    Over the full matrix the loss is unbiased for the ideal loss on true
    relevance when a click means "examined and relevant" and ``theta`` is the
    true, unfloored exposure propensity; the floor trades a bias for bounded
    weights. Note ``1 - 1/theta < 0``: a clicked pair with a small
    propensity pushes its score up with weight ``1/theta``.
    """
    inverse = 1.0 / jnp.maximum(p_expose, floor)
    per = (
        inverse * jax.nn.softplus(-pos_logits)
        + (1.0 - inverse) * jax.nn.softplus(pos_logits)
        + jnp.sum(jax.nn.softplus(neg_logits), -1)
    )
    return _masked_mean(per, mask)


def ubpr(
    pos_logits: jax.Array,
    neg_logits: jax.Array,
    p_expose: jax.Array,
    neg_clicked: jax.Array,
    neg_p_expose: jax.Array,
    floor: jax.Array,
    clip: bool,
    mask: jax.Array,
) -> jax.Array:
    """Unbiased BPR (Saito, "Unbiased pairwise learning from biased implicit
    feedback", ICTIR 2020)::

        L = mean_b[ (1/m) sum_{j=1..m} (Y_ui/theta_ui) (1 - Y_uj/theta_uj)
                                        * -log sigma(s_ui - s_uj) ]

    ``pos_logits`` (B,) at the clicked pairs (``Y_ui = 1``), ``p_expose`` (B,)
    their ``p_expose_pair``; ``j`` is drawn uniformly from ALL items (a
    clicked ``j`` included, as the estimator needs), ``neg_logits`` (B, m),
    ``neg_clicked`` (B, m) ``Y_uj`` in {0, 1}, ``neg_p_expose`` (B, m) its
    ``p_expose_pair`` (any value where ``Y_uj = 0``). ``theta = max(p_expose,
    floor)``. Unbiased for the pairwise loss on true relevance (relevant
    ``i``, non-relevant ``j``) with true, unfloored propensities; the weight
    is negative when ``j`` was clicked with ``theta_uj < 1``, and ``clip``
    (``implicit.ubpr_clip``) sets it to ``max(weight, 0)``, trading that
    variance for a bias.
    """
    inverse = 1.0 / jnp.maximum(p_expose, floor)
    neg_inverse = neg_clicked / jnp.maximum(neg_p_expose, floor)
    weight = inverse[:, None] * (1.0 - neg_inverse)
    if clip:
        weight = jnp.maximum(weight, 0.0)
    pair_loss = jax.nn.softplus(neg_logits - pos_logits[:, None])
    return _masked_mean(jnp.mean(weight * pair_loss, -1), mask)


# ---------------------------------------------------------------------------
# Click losses on impressions


def click_labels(
    form: str,
    clicks: jax.Array,
    p_examine: jax.Array,
    eps_plus: jax.Array,
    eps_minus: jax.Array,
    relevance: jax.Array,
    floor: jax.Array,
) -> jax.Array:
    """The label ``y`` (n,) that :func:`click_bce` fits, for each form.

    - ``click_naive``: ``y = c`` (the click itself, weight ``w = 1``).
    - ``click_ips``: ``y = c / theta_k``, position-IPS (Joachims, Swaminathan
      and Schnabel, "Unbiased learning-to-rank with biased feedback", WSDM
      2017), ``theta_k = max(p_examine, floor)``. Under the position-based
      model without click noise ``E[c] = theta_k R``, so ``E[y] = R``.
    - ``click_affine``: ``y = (c - theta_k eps_minus) / (theta_k (eps_plus -
      eps_minus))``, the affine correction of Vardasbi, Oosterhuis and de
      Rijke, "When inverse propensity scoring does not work: affine
      corrections for unbiased learning to rank", CIKM 2020. With click
      noise ``P(c = 1) = theta_k (eps_plus R + eps_minus (1 - R))``, so again
      ``E[y] = R``; ``eps_plus`` = ``click.p_relevant``, ``eps_minus`` =
      ``click.p_nonrelevant``.
    - ``click_oracle``: ``y = R``, the true relevance of the same impressions
      (a bound no log attains).

    All arrays (n,); ``floor`` = ``implicit.propensity_floor``.
    """
    theta = jnp.maximum(p_examine, floor)
    if form == "click_naive":
        return clicks
    if form == "click_ips":
        return clicks / theta
    if form == "click_affine":
        return (clicks - theta * eps_minus) / (theta * (eps_plus - eps_minus))
    if form == "click_oracle":
        return relevance
    raise ConfigError(
        f"form must be one of {IMPRESSION_OBJECTIVES}, got {form!r}"
    )


def click_bce(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """The pointwise click loss on impressions::

        L = mean_b[ -(y log sigma(s) + (1 - y) log(1 - sigma(s))) ]

    ``logits`` (B,) the scores ``s_ui`` of the shown items, ``labels`` (B,)
    ``y`` from :func:`click_labels`, ``mask`` (B,). For ``click_ips``, ``y =
    w c`` with ``w = 1/theta_k``, which is the loss ``-[w c log s + (1 - w c)
    log(1 - s)]`` of the position-IPS estimator. The loss is linear in ``y``,
    so when ``E[y] = R`` its expectation over clicks equals the loss on true
    relevance, for fixed scores: the labelled form is unbiased exactly where
    its label is. A label above 1 (or below 0) makes a single term unbounded
    below; the sum over a pair's impressions is bounded when their mean label
    lies in [0, 1].
    """
    per = labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(
        logits
    )
    return _masked_mean(per, mask)


# ---------------------------------------------------------------------------
# From the simulator's log


def pairs_from_log(
    pairs: pd.DataFrame, p_expose: np.ndarray | None = None
) -> ImplicitData:
    """:class:`ImplicitData` from the positive-only view (a frame with columns
    user, item, clicks, plays, as ``sim.implicit.clicks_by_pair`` returns) and
    optionally the (U, I) ``p_expose_pair`` matrix, read at the pairs."""
    users = pairs["user"].to_numpy().astype(np.int32)
    items = pairs["item"].to_numpy().astype(np.int32)
    exposure = None
    if p_expose is not None:
        p_expose = np.asarray(p_expose, np.float64)
        check(p_expose.ndim == 2, "p_expose", "a (U, I) matrix", p_expose.shape)
        exposure = p_expose[users, items]
    return ImplicitData(users, items, pairs["clicks"].to_numpy(),
                        pairs["plays"].to_numpy(), exposure)


def impressions_from_log(
    impressions: pd.DataFrame,
    theta: np.ndarray | None = None,
    eps_plus: float | None = None,
    eps_minus: float | None = None,
    relevance: np.ndarray | None = None,
) -> ImpressionData:
    """:class:`ImpressionData` from impression rows (columns user, item,
    position (1-based), click), a curve ``theta`` (K,) read at each row's
    position as ``p_examine``, scalar click-noise levels and optionally the
    rows' true relevance (n,)."""
    positions = impressions["position"].to_numpy().astype(np.int64)
    n = positions.size
    p_examine = None
    if theta is not None:
        theta = np.asarray(theta, np.float64)
        check(theta.ndim == 1 and positions.size > 0
              and positions.max() <= theta.size and positions.min() >= 1,
              "theta", f"a curve (K,) covering positions 1..{positions.max(initial=0)}",
              theta.shape)
        p_examine = theta[positions - 1]
    return ImpressionData(
        users=impressions["user"].to_numpy().astype(np.int32),
        items=impressions["item"].to_numpy().astype(np.int32),
        clicks=impressions["click"].to_numpy().astype(np.float64),
        p_examine=p_examine,
        eps_plus=None if eps_plus is None else np.full(n, float(eps_plus)),
        eps_minus=None if eps_minus is None else np.full(n, float(eps_minus)),
        relevance=None if relevance is None else np.asarray(relevance),
    )
