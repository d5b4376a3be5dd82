"""One training loop for every objective, explicit and implicit.

:func:`fit` trains matrix factorisation (:mod:`estimators.models`) on one of
the explicit objectives of :mod:`estimators.objectives` (``naive``, ``ips``,
``snips``, ``dr``) with minibatches, and stops early on a validation estimate
that is debiased the same way as the objective. :func:`search` repeats the fit
for every L2 strength of ``train.l2_grid`` and keeps the best by that
estimate. :func:`fit_implicit` and :func:`search_implicit` do the same for the
implicit objectives of :mod:`estimators.implicit` (clicked pairs with negatives
sampled inside the compiled step, or impressions with click losses), with MF
or NCF; they run the very same compiled epoch (:func:`_epoch`) and the same
early-stopping loop (:func:`_train_loop`), which dispatch on the objective.
:func:`fit_batch` and :func:`search_batch` train several replicates of an
explicit objective (other keys, data, propensities, lr, L2) either as one
program vmapped over the replicate axis or one by one, as
:func:`choose_mode` decides by size; both give the same fits.

How it runs. A whole epoch is one compiled program: the training set is
shuffled with ``jax.random`` inside it, cut into ``ceil(n / batch_size)``
minibatches (the last one padded, its padding masked out of every sum), and
``jax.lax.scan`` walks over them. The learning rate, the L2 strength, the
ratings and the propensities are traced arguments, so fits that differ only
in those (other grid points, other propensity estimates) reuse one compiled
program; only shapes, the objective and the optimiser select a program.

Two optimisers:

- ``adam``: optax's Adam (Kingma and Ba, ICLR 2015) over the dense parameter
  tables. Every row moves at every step (momentum keeps untouched rows
  moving), so a step costs O((n_users + n_items) * dim).
- ``sparse``: a row-sparse ("lazy") Adam written here. A step gathers the rows
  the minibatch touches, takes the gradient with respect to those gathered
  copies, and updates the first and second moments and the parameters of
  those rows only; rows not touched keep their moments unchanged (they do not
  decay), and each row keeps its own step count for the bias correction, so a
  row seen for the t-th time is corrected by ``1 - beta^t``. A step costs
  O(batch_size * dim). Duplicates: when a row occurs several times in one
  minibatch, the gradients of its occurrences are summed first (a sort and a
  segment sum), so the row gets exactly one Adam step with the gradient of
  the minibatch loss, as dense Adam would compute it; every occurrence then
  writes the same new value. The global bias ``mu`` gets an ordinary Adam step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from estimators import implicit as imp
from estimators.implicit import (
    IMPLICIT_OBJECTIVES,
    IMPRESSION_OBJECTIVES,
    PAIR_OBJECTIVES,
    ImplicitConfig,
    ImplicitData,
    ImpressionData,
    WMFConfig,
)
from estimators.models import (
    MODELS,
    NCFConfig,
    Params,
    init_mf,
    init_ncf,
    predict,
    predict_mf,
)
from estimators.objectives import (
    OBJECTIVES,
    WEIGHTED,
    Batch,
    dr_imputation,
    dr_prediction,
    ips,
    naive,
    sample_weights,
    snips,
)
from sim.config import ConfigError, check, check_range

__all__ = [
    "RatingData",
    "TrainConfig",
    "DRConfig",
    "FitResult",
    "OPTIMIZERS",
    "fit",
    "search",
    "check_inputs",
    "fit_implicit",
    "search_implicit",
    "check_implicit_inputs",
    "BATCH_MODES",
    "VMAP_MAX_WORK",
    "choose_mode",
    "fit_batch",
    "search_batch",
]

OPTIMIZERS = ("adam", "sparse")

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # Adam's defaults, for both optimisers


class RatingData(NamedTuple):
    """Ratings of one split, every array (n,).

    ``users`` in [0, n_users) and ``items`` in [0, n_items) (integers),
    ``ratings`` (any finite reals), ``propensity`` the probability that the
    cell lands in THIS split (observation propensity times split fraction),
    in (0, 1]; ``None`` is allowed for ``naive``.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    propensity: np.ndarray | None


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (keys ``train.*``).

    dim: latent factors per user and item. optimizer: ``adam`` or ``sparse``.
    lr: learning rate (step size). l2: L2 strength used by :func:`fit`;
    l2_grid: strengths tried by :func:`search`. batch_size: ratings per
    minibatch. max_epochs: passes over the training set at most. patience:
    epochs without a better validation estimate before stopping. init_scale:
    standard deviation of the initial factors.
    """

    dim: int = 16
    optimizer: str = "adam"
    lr: float = 0.01
    l2: float = 1e-3
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    batch_size: int = 1024
    max_epochs: int = 50
    patience: int = 5
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        _check_int(self.dim, "train.dim", 1)
        check(
            self.optimizer in OPTIMIZERS,
            "train.optimizer",
            "one of " + ", ".join(map(repr, OPTIMIZERS)),
            self.optimizer,
        )
        check_range(self.lr, "train.lr", 0.0, low_open=True)
        check_range(self.l2, "train.l2", 0.0)
        check(
            isinstance(self.l2_grid, tuple) and len(self.l2_grid) > 0,
            "train.l2_grid",
            "a non-empty tuple of numbers >= 0",
            self.l2_grid,
        )
        for value in self.l2_grid:
            check_range(value, "train.l2_grid", 0.0)
        _check_int(self.batch_size, "train.batch_size", 1)
        _check_int(self.max_epochs, "train.max_epochs", 1)
        _check_int(self.patience, "train.patience", 1)
        check_range(self.init_scale, "train.init_scale", 0.0, low_open=True)


@dataclass(frozen=True)
class DRConfig:
    """Doubly robust settings (keys ``dr.*``).

    unobserved_ratio: uniformly drawn cells per training rating in each
    minibatch, ``M = round(unobserved_ratio * batch_size)`` (at least 1).
    """

    unobserved_ratio: float = 1.0

    def __post_init__(self) -> None:
        check_range(self.unobserved_ratio, "dr.unobserved_ratio", 0.0, low_open=True)


class FitResult(NamedTuple):
    """What :func:`fit` and :func:`search` return.

    params: the best prediction-model parameters (numpy arrays, see
    :mod:`estimators.models`). l2: the L2 strength used. epochs_run: epochs
    trained. best_epoch: the epoch (1-based) whose parameters are kept.
    valid_estimate: the validation estimate at ``best_epoch``. history: the
    validation estimate after every epoch. max_weight and ess: the largest
    per-sample weight and the effective sample size ``(sum w)^2 / sum w^2``
    of the training set's weights as the objective uses them (see
    :func:`estimators.objectives.sample_weights`).
    """

    params: dict[str, np.ndarray]
    l2: float
    epochs_run: int
    best_epoch: int
    valid_estimate: float
    history: list[float]
    max_weight: float
    ess: float


def _check_int(value: Any, key: str, low: int) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    check(ok and value >= low, key, f"an integer >= {low}", value)


# ---------------------------------------------------------------------------
# Validation at the boundary


def _first_bad(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _check_split(
    name: str, data: Any, n_users: int, n_items: int, need_propensity: str | None
) -> None:
    check(isinstance(data, RatingData), name, "a RatingData", type(data).__name__)
    fields = ["users", "items", "ratings"]
    if data.propensity is not None:
        fields.append("propensity")
    arrays = {field: np.asarray(getattr(data, field)) for field in fields}
    for field, array in arrays.items():
        check(array.ndim == 1, f"{name}.{field}", "a 1-d array", array.shape)
    length = arrays["users"].shape[0]
    for field, array in arrays.items():
        check(
            array.shape[0] == length,
            f"{name}.{field}",
            f"of the same length as {name}.users ({length})",
            array.shape[0],
        )
    check(length > 0, name, "non-empty (at least one rating)", length)

    for field, bound in (("users", n_users), ("items", n_items)):
        ids = arrays[field]
        check(
            np.issubdtype(ids.dtype, np.integer),
            f"{name}.{field}",
            "integer ids",
            ids.dtype.name,
        )
        bad = (ids < 0) | (ids >= bound)
        if bad.any():
            k = _first_bad(bad)
            check(False, f"{name}.{field}", f"in [0, {bound})", _Shown(ids[k], k))

    ratings = arrays["ratings"]
    check(
        np.issubdtype(ratings.dtype, np.number) and ratings.dtype != bool,
        f"{name}.ratings",
        "numbers",
        ratings.dtype.name,
    )
    bad = ~np.isfinite(ratings)
    if bad.any():
        k = _first_bad(bad)
        check(False, f"{name}.ratings", "finite", _Shown(ratings[k], k))

    if data.propensity is None:
        if need_propensity is not None:
            check(
                False,
                f"{name}.propensity",
                f"given for objective {need_propensity!r}",
                None,
            )
        return
    propensity = arrays["propensity"]
    check(
        np.issubdtype(propensity.dtype, np.number) and propensity.dtype != bool,
        f"{name}.propensity",
        "numbers",
        propensity.dtype.name,
    )
    bad = ~((propensity > 0) & (propensity <= 1))  # also catches NaN
    if bad.any():
        k = _first_bad(bad)
        check(False, f"{name}.propensity", "in (0, 1]", _Shown(propensity[k], k))


class _Shown:
    """A bad value and its index, printed as ``0.0 (index 3)``."""

    def __init__(self, value: Any, index: int) -> None:
        self.value, self.index = value, index

    def __repr__(self) -> str:
        return f"{self.value.item()!r} (index {self.index})"


def check_inputs(
    objective: str,
    train: RatingData,
    valid: RatingData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    dr: DRConfig,
) -> None:
    """Refuse bad arguments of :func:`fit` with a ``ConfigError`` naming the
    field, the accepted range and the value received."""
    check(
        objective in OBJECTIVES,
        "objective",
        "one of " + ", ".join(map(repr, OBJECTIVES)),
        objective,
    )
    _check_int(n_users, "n_users", 1)
    _check_int(n_items, "n_items", 1)
    check(isinstance(cfg, TrainConfig), "cfg", "a TrainConfig", type(cfg).__name__)
    check(isinstance(dr, DRConfig), "dr", "a DRConfig", type(dr).__name__)
    need = objective if objective in WEIGHTED else None
    _check_split("train", train, n_users, n_items, need)
    _check_split("valid", valid, n_users, n_items, need)


# ---------------------------------------------------------------------------
# Optimisers


class _SparseAdamState(NamedTuple):
    step: jax.Array  # () int32, steps taken by the global bias mu
    user_steps: jax.Array  # (n_users,) int32, steps taken by each user row
    item_steps: jax.Array  # (n_items,) int32
    first: Params  # first moments, same tree as the parameters
    second: Params  # second moments


_ROW_LEAVES = {
    "user_bias": "users",
    "user_factors": "users",
    "item_bias": "items",
    "item_factors": "items",
}

_ADAM = optax.scale_by_adam(b1=_BETA1, b2=_BETA2, eps=_EPS)


def _init_opt(optimizer: str, params: Params):
    if optimizer == "adam":
        return _ADAM.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _SparseAdamState(
        step=jnp.zeros((), jnp.int32),
        user_steps=jnp.zeros(params["user_bias"].shape, jnp.int32),
        item_steps=jnp.zeros(params["item_bias"].shape, jnp.int32),
        first=zeros,
        second=jax.tree.map(jnp.zeros_like, params),
    )


def _gather_rows(params: Params, users: jax.Array, items: jax.Array) -> Params:
    """A parameter tree whose row k is the row of ``users[k]`` / ``items[k]``."""
    return {
        "mu": params["mu"],
        "user_bias": params["user_bias"][users],
        "item_bias": params["item_bias"][items],
        "user_factors": params["user_factors"][users],
        "item_factors": params["item_factors"][items],
    }


def _adam_moments(first, second, grad, steps):
    first = _BETA1 * first + (1 - _BETA1) * grad
    second = _BETA2 * second + (1 - _BETA2) * grad**2
    steps = steps.astype(first.dtype)
    first_hat = first / (1 - _BETA1**steps)
    second_hat = second / (1 - _BETA2**steps)
    return first, second, first_hat / (jnp.sqrt(second_hat) + _EPS)


def _sorted_segments(ids: jax.Array, n_rows: int):
    """Sort ``ids`` (K,) in [0, n_rows); return the order, the sorted ids and,
    for each sorted position, the index of its run of equal ids (0, 0, 1, ...).
    """
    size = ids.shape[0]
    if n_rows * size < 2**31:
        # One single-operand sort of id * K + position is several times faster
        # on CPU than argsort's two-operand sort.
        packed = jnp.sort(ids * size + jnp.arange(size, dtype=ids.dtype))
        order, sorted_ids = packed % size, packed // size
    else:
        order = jnp.argsort(ids)
        sorted_ids = ids[order]
    new_run = (sorted_ids[1:] != sorted_ids[:-1]).astype(jnp.int32)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), new_run])
    return order, sorted_ids, jnp.cumsum(starts)


def _sparse_adam_update(params, state, local_grads, users, items, lr):
    """One lazy-Adam step on the rows ``users`` (K,) and ``items`` (K,), given
    the gradients ``local_grads`` with respect to the gathered rows."""
    step = state.step + 1
    first_mu, second_mu, direction = _adam_moments(
        state.first["mu"], state.second["mu"], local_grads["mu"], step
    )
    new_params = dict(params, mu=params["mu"] - lr * direction)
    first = dict(state.first, mu=first_mu)
    second = dict(state.second, mu=second_mu)
    new_steps = {}
    for side, ids, steps in (
        ("users", users, state.user_steps),
        ("items", items, state.item_steps),
    ):
        order, sorted_ids, run = _sorted_segments(ids, steps.shape[0])
        n_runs = ids.shape[0]
        row_steps = steps[sorted_ids] + 1
        new_steps[side] = steps.at[sorted_ids].set(row_steps)
        for leaf, leaf_side in _ROW_LEAVES.items():
            if leaf_side != side:
                continue
            grad = local_grads[leaf][order]
            summed = jax.ops.segment_sum(
                grad, run, num_segments=n_runs, indices_are_sorted=True
            )[run]
            row_shape = (-1,) + (1,) * (grad.ndim - 1)
            m, v, direction = _adam_moments(
                state.first[leaf][sorted_ids],
                state.second[leaf][sorted_ids],
                summed,
                row_steps.reshape(row_shape),
            )
            rows = params[leaf][sorted_ids] - lr * direction
            new_params[leaf] = params[leaf].at[sorted_ids].set(rows)
            first[leaf] = state.first[leaf].at[sorted_ids].set(m)
            second[leaf] = state.second[leaf].at[sorted_ids].set(v)
    new_state = _SparseAdamState(
        step, new_steps["users"], new_steps["items"], first, second
    )
    return new_params, new_state


def _update(optimizer, params, opt_state, loss_of, users, items, lr):
    """One optimiser step on ``loss_of(params, users, items)``.

    ``loss_of`` must accept, besides index arrays (K,), the full slice
    ``slice(None)`` for ``users`` and ``items`` (sample k is row k), and cut
    them with :func:`_part`.
    """
    if optimizer == "adam":
        grads = jax.grad(loss_of)(params, users, items)
        updates, opt_state = _ADAM.update(grads, opt_state)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return params, opt_state
    # Row k of the gathered tables is sample k: index them with a full slice,
    # which (unlike an index array) adds no gather and no scatter to the
    # gradient.
    local = _gather_rows(params, users, items)
    everything = slice(None)
    local_grads = jax.grad(loss_of)(local, everything, everything)
    return _sparse_adam_update(params, opt_state, local_grads, users, items, lr)


# ---------------------------------------------------------------------------
# The compiled epoch


class _Spec(NamedTuple):
    """What selects a compiled program (static)."""

    objective: str
    optimizer: str
    batch_size: int
    n_batches: int
    n_cells_drawn: int  # M, uniform cells per minibatch for DR
    n_users: int
    n_items: int
    model: str = "mf"  # "mf" or "ncf"
    n_negatives: int = 0  # m, sampled items per positive (pair objectives)
    sampler: str = "uniform"  # negative sampler (pair objectives but ubpr)
    ubpr_clip: bool = False


class _Hyper(NamedTuple):
    """Traced scalars: changing them never recompiles."""

    lr: jax.Array
    l2: jax.Array
    density: jax.Array  # n_train / N
    inv_cells: jax.Array  # 1 / N
    alpha: Any = 0.0  # wmf.alpha
    floor: Any = 1.0  # implicit.propensity_floor


class _State(NamedTuple):
    params: Params
    opt_state: Any
    imputation_params: Any  # None unless objective == "dr"
    imputation_opt_state: Any


_SINGLE_PHASE = {"naive": naive, "ips": ips, "snips": snips}

# Incremented each time the epoch program is traced; tests read it to check
# that changing lr, l2 or the propensities does not recompile.
_TRACE_COUNT = [0]


def _part(index, start: int, stop: int | None):
    """``index[start:stop]`` for an index array or for the full slice."""
    if isinstance(index, slice):
        return slice(start, stop)
    return index[start:stop]


def _draw_cells(key, spec: _Spec) -> tuple[jax.Array, jax.Array]:
    """M cells drawn uniformly (with replacement) from all N cells."""
    key_users, key_items = jax.random.split(key)
    shape = (spec.n_cells_drawn,)
    cell_users = jax.random.randint(key_users, shape, 0, spec.n_users)
    cell_items = jax.random.randint(key_items, shape, 0, spec.n_items)
    return cell_users, cell_items


class PairBatch(NamedTuple):
    """One minibatch of clicked pairs, every field (B,): ``users``,
    ``items``, ``plays``, ``p_expose`` (1.0 on padding), ``mask``."""

    users: jax.Array
    items: jax.Array
    plays: jax.Array
    p_expose: jax.Array
    mask: jax.Array


class ClickBatch(NamedTuple):
    """One minibatch of impressions, every field (B,); padding holds 1.0 in
    ``p_examine`` and ``eps_plus`` and 0.0 in the rest, so it stays finite."""

    users: jax.Array
    items: jax.Array
    clicks: jax.Array
    p_examine: jax.Array
    eps_plus: jax.Array
    eps_minus: jax.Array
    relevance: jax.Array
    mask: jax.Array


def _row_norms(params, users, items) -> jax.Array:
    """Squared norms of the embedding rows (and biases) of each pair, (n,)."""
    if "gmf_user" in params:
        tables = (("gmf_user", users), ("mlp_user", users),
                  ("gmf_item", items), ("mlp_item", items))
        return sum(jnp.sum(params[name][ids] ** 2, -1) for name, ids in tables)
    return (
        jnp.sum(params["user_factors"][users] ** 2, -1)
        + jnp.sum(params["item_factors"][items] ** 2, -1)
        + params["user_bias"][users] ** 2
        + params["item_bias"][items] ** 2
    )


def _implicit_l2(params, users, items, weights, mask, l2) -> jax.Array:
    """``l2 * sum_k weights_k |rows of pair k|^2 / sum(mask)``: every scored
    pair (positives and their negatives) penalises its rows once per
    occurrence, per positive of the batch; NCF's dense layers add
    ``l2 * sum |W|^2`` once per step."""
    penalty = jnp.sum(weights * _row_norms(params, users, items))
    penalty = penalty / jnp.maximum(jnp.sum(mask), 1.0)
    if "mlp" in params:
        penalty += sum(jnp.sum(layer["w"] ** 2) for layer in params["mlp"])
        penalty += jnp.sum(params["out_w"] ** 2)
    return l2 * penalty


def _pair_objective(spec, hyper, pos, neg, batch, neg_clicked, neg_p_expose):
    """The pair objective ``spec.objective`` on logits ``pos`` (B,), ``neg``
    (B, m) (see :mod:`estimators.implicit`)."""
    if spec.objective == "bce":
        return imp.bce(pos, neg, batch.mask)
    if spec.objective == "bpr":
        return imp.bpr(pos, neg, batch.mask)
    if spec.objective == "wmf":
        return imp.wmf(pos, neg, batch.plays, hyper.alpha, batch.mask)
    if spec.objective == "relmf":
        return imp.relmf(pos, neg, batch.p_expose, hyper.floor, batch.mask)
    return imp.ubpr(pos, neg, batch.p_expose, neg_clicked, neg_p_expose,
                    hyper.floor, spec.ubpr_clip, batch.mask)


def _draw_negatives(key, index, users, spec: _Spec):
    """(B, m) negatives for ``users`` (B,), with (for ubpr) whether each was
    clicked and its p_expose; the others get ``None`` for those two."""
    shape = (users.shape[0], spec.n_negatives)
    if spec.objective == "ubpr":
        negatives = jax.random.randint(key, shape, 0, spec.n_items, jnp.int32)
        clicked, p_expose = imp.lookup_positives(index, users, negatives)
        return negatives, clicked.astype(jnp.float32), p_expose
    return imp.sample_negatives(key, index, users, shape[1], spec.sampler), None, None


def _pair_step(state: _State, batch: PairBatch, key, hyper, spec, index) -> _State:
    size, m = spec.batch_size, spec.n_negatives
    negatives, neg_clicked, neg_p_expose = _draw_negatives(
        key, index, batch.users, spec
    )
    weights = jnp.concatenate([batch.mask, jnp.repeat(batch.mask, m)])

    def loss_of(params, users, items):
        logits = predict(params, users, items)
        pos, neg = logits[:size], logits[size:].reshape(size, m)
        loss = _pair_objective(spec, hyper, pos, neg, batch, neg_clicked,
                               neg_p_expose)
        return loss + _implicit_l2(params, users, items, weights, batch.mask,
                                   hyper.l2)

    params, opt_state = _update(
        spec.optimizer, state.params, state.opt_state, loss_of,
        jnp.concatenate([batch.users, jnp.repeat(batch.users, m)]),
        jnp.concatenate([batch.items, negatives.reshape(-1)]),
        hyper.lr,
    )
    return state._replace(params=params, opt_state=opt_state)


def _click_loss(spec, hyper, logits, batch: ClickBatch) -> jax.Array:
    labels = imp.click_labels(spec.objective, batch.clicks, batch.p_examine,
                              batch.eps_plus, batch.eps_minus, batch.relevance,
                              hyper.floor)
    return imp.click_bce(logits, labels, batch.mask)


def _click_step(state: _State, batch: ClickBatch, hyper, spec) -> _State:
    def loss_of(params, users, items):
        logits = predict(params, users, items)
        return _click_loss(spec, hyper, logits, batch) + _implicit_l2(
            params, users, items, batch.mask, batch.mask, hyper.l2
        )

    params, opt_state = _update(
        spec.optimizer, state.params, state.opt_state, loss_of,
        batch.users, batch.items, hyper.lr,
    )
    return state._replace(params=params, opt_state=opt_state)


def _step(state: _State, batch, key, hyper: _Hyper, spec: _Spec,
          index=None) -> _State:
    """One optimiser step on one minibatch, for every objective: the
    explicit ones (a :class:`Batch`), the pair objectives (a
    :class:`PairBatch`, negatives drawn here with ``key`` from ``index``) and
    the click losses (a :class:`ClickBatch`)."""
    if spec.objective in PAIR_OBJECTIVES:
        return _pair_step(state, batch, key, hyper, spec, index)
    if spec.objective in IMPRESSION_OBJECTIVES:
        return _click_step(state, batch, hyper, spec)
    size = spec.batch_size
    if spec.objective != "dr":
        loss = _SINGLE_PHASE[spec.objective]

        def loss_of(params, users, items):
            local = batch._replace(users=users, items=items)
            return loss(params, local, hyper.l2, hyper.density)

        params, opt_state = _update(
            spec.optimizer, state.params, state.opt_state, loss_of,
            batch.users, batch.items, hyper.lr,
        )
        return state._replace(params=params, opt_state=opt_state)

    # Doubly robust joint learning: prediction phase, then imputation phase.
    cell_users, cell_items = _draw_cells(key, spec)
    imputed = predict_mf(state.imputation_params, batch.users, batch.items)
    imputed_cells = predict_mf(state.imputation_params, cell_users, cell_items)

    def prediction_loss(params, users, items):
        local = batch._replace(
            users=_part(users, 0, size), items=_part(items, 0, size)
        )
        drawn_users, drawn_items = _part(users, size, None), _part(items, size, None)
        return dr_prediction(
            params, local, imputed, drawn_users, drawn_items, imputed_cells,
            hyper.l2, hyper.density,
        )

    params, opt_state = _update(
        spec.optimizer, state.params, state.opt_state, prediction_loss,
        jnp.concatenate([batch.users, cell_users]),
        jnp.concatenate([batch.items, cell_items]),
        hyper.lr,
    )
    predicted = predict_mf(params, batch.users, batch.items)

    def imputation_loss(imputation_params, users, items):
        local = batch._replace(users=users, items=items)
        return dr_imputation(
            imputation_params, local, predicted, hyper.l2, hyper.density
        )

    imputation_params, imputation_opt_state = _update(
        spec.optimizer, state.imputation_params, state.imputation_opt_state,
        imputation_loss, batch.users, batch.items, hyper.lr,
    )
    return _State(params, opt_state, imputation_params, imputation_opt_state)


def _valid_estimate(params, valid, hyper: _Hyper, spec: _Spec) -> jax.Array:
    """Naive MSE on valid for ``naive``; the IPS estimate of the full-matrix
    MSE, (1/N) sum_valid e / p_valid, for the other explicit objectives; for
    the implicit ones the objective itself (no L2) on the whole validation
    set, debiased the same way: its own propensities, and for the pair
    objectives negatives drawn once per fit."""
    if spec.objective in PAIR_OBJECTIVES:
        users, items, plays, p_expose, negatives, neg_clicked, neg_p_expose = valid
        n, m = negatives.shape
        logits = predict(params, jnp.concatenate([users, jnp.repeat(users, m)]),
                         jnp.concatenate([items, negatives.reshape(-1)]))
        batch = PairBatch(users, items, plays, p_expose, jnp.ones_like(plays))
        return _pair_objective(spec, hyper, logits[:n], logits[n:].reshape(n, m),
                               batch, neg_clicked, neg_p_expose)
    if spec.objective in IMPRESSION_OBJECTIVES:
        batch = ClickBatch(*valid, jnp.ones_like(valid[2]))
        logits = predict(params, batch.users, batch.items)
        return _click_loss(spec, hyper, logits, batch)
    users, items, ratings, propensity = valid
    error = (predict_mf(params, users, items) - ratings) ** 2
    if spec.objective == "naive":
        return jnp.mean(error)
    return jnp.sum(error / propensity) * hyper.inv_cells


def _shuffle(key, n: int) -> jax.Array:
    """A random permutation of ``range(n)``, (n,) int32.

    ``jax.random.permutation`` sorts (key, value) pairs, and a two-operand
    sort is slow on CPU: it took longer than all the training steps of an
    epoch. Here each round draws a random label of ``32 - b`` bits for every
    element (``b`` bits hold a position below ``n``), packs label and current
    position into one uint32 and sorts that single array, which is a stable
    sort of the order by label. Rounds are repeated until ``2b + 8`` random
    bits have been drawn per element, so that the expected number of pairs
    with equal labels in every round (the only pairs whose order is not
    random) is below ``n^2 / 2^(2b + 9) <= 1/512``.
    """
    bits = max(1, (n - 1).bit_length())
    if bits > 28:  # too few label bits left: use JAX's (slower) permutation
        return jax.random.permutation(key, n).astype(jnp.int32)
    label_bits = 32 - bits
    rounds = -(-(2 * bits + 8) // label_bits)
    positions = jnp.arange(n, dtype=jnp.uint32)
    order = positions
    for round_key in jax.random.split(key, rounds):
        labels = jax.random.bits(round_key, (n,), jnp.uint32) >> bits
        packed = jnp.sort((labels << bits) | positions)
        order = order[packed & jnp.uint32((1 << bits) - 1)]
    return order.astype(jnp.int32)


def _make_batch(spec: _Spec, columns, real):
    """The minibatch of ``spec.objective`` from its training columns, each
    already cut to the batch's rows, and the mask ``real``; padded rows get
    neutral, finite propensities."""
    def real_or(value, fill):
        return jnp.where(real > 0, value, fill)

    if spec.objective in PAIR_OBJECTIVES:
        users, items, plays, p_expose = columns
        return PairBatch(users, items, plays, real_or(p_expose, 1.0), real)
    if spec.objective in IMPRESSION_OBJECTIVES:
        users, items, clicks, p_examine, eps_plus, eps_minus, relevance = columns
        return ClickBatch(users, items, clicks, real_or(p_examine, 1.0),
                          real_or(eps_plus, 1.0), real_or(eps_minus, 0.0),
                          relevance, real)
    users, items, ratings, propensity = columns
    return Batch(users=users, items=items, ratings=ratings,
                 propensity=real_or(propensity, 1.0), mask=real)


@functools.partial(jax.jit, static_argnames=("spec",))
def _epoch(state: _State, train, valid, hyper: _Hyper, key, spec: _Spec,
           index=None):
    """One pass over the training set; returns the new state and the
    validation estimate of the new parameters.

    ``train`` is a tuple of (n,) columns (ids first): explicit ``(users,
    items, ratings, propensity)``, pairs ``(users, items, plays, p_expose)``,
    impressions ``(users, items, clicks, p_examine, eps_plus, eps_minus,
    relevance)``. ``index`` is the training positives'
    :class:`~estimators.implicit.PositiveIndex` for the pair objectives.
    """
    _TRACE_COUNT[0] += 1
    n_train = train[0].shape[0]
    dtype = jnp.float32
    size, n_batches = spec.batch_size, spec.n_batches
    n_pad = n_batches * size - n_train
    key_order, key_cells = jax.random.split(key)

    order = jnp.concatenate(
        [_shuffle(key_order, n_train), jnp.zeros((n_pad,), jnp.int32)]
    ).reshape(n_batches, size)
    mask = jnp.concatenate(
        [jnp.ones((n_train,), dtype), jnp.zeros((n_pad,), dtype)]
    ).reshape(n_batches, size)
    cell_keys = jax.random.split(key_cells, n_batches)

    def body(state, inputs):
        rows, real, cell_key = inputs
        batch = _make_batch(spec, tuple(column[rows] for column in train), real)
        return _step(state, batch, cell_key, hyper, spec, index), None

    state, _ = jax.lax.scan(body, state, (order, mask, cell_keys))
    return state, _valid_estimate(state.params, valid, hyper, spec)


# ---------------------------------------------------------------------------
# Public entry points


def _device_split(data: RatingData) -> tuple[jax.Array, ...]:
    n = np.asarray(data.users).shape[0]
    propensity = np.ones(n) if data.propensity is None else data.propensity
    return (
        jnp.asarray(np.asarray(data.users, np.int32)),
        jnp.asarray(np.asarray(data.items, np.int32)),
        jnp.asarray(np.asarray(data.ratings, np.float32)),
        jnp.asarray(np.asarray(propensity, np.float32)),
    )


def _diagnostics(objective: str, train: RatingData, density: float):
    n = np.asarray(train.users).shape[0]
    if objective == "naive" or train.propensity is None:
        weights = np.ones(n)
    else:
        propensity = np.asarray(train.propensity, np.float64)
        weights = sample_weights(objective, propensity, density)
    ess = weights.sum() ** 2 / np.sum(weights**2)
    return float(weights.max()), float(ess)


def fit(
    objective: str,
    train: RatingData,
    valid: RatingData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    dr: DRConfig,
    key: jax.Array,
) -> FitResult:
    """Train matrix factorisation on ``objective`` with L2 strength ``cfg.l2``.

    Args:
        objective: ``naive``, ``ips``, ``snips`` or ``dr`` (see
            :mod:`estimators.objectives`).
        train, valid: the training and validation ratings. Weighted objectives
            need ``propensity`` in both; ``valid.propensity`` drives the
            early-stopping estimate.
        n_users, n_items: sizes of the rating matrix, ``N = n_users * n_items``.
        cfg: training settings; ``dr``: settings of the doubly robust objective.
        key: a ``jax.random`` key; the same key gives identical parameters.

    Early stopping watches the naive MSE on ``valid`` for ``naive`` and the
    IPS estimate ``(1/N) sum_valid e / p_valid`` for the others, keeps the
    parameters of the best epoch and stops after ``cfg.patience`` epochs
    without improvement. A diverged run (non-finite estimate) stops with a
    warning, or raises ``FloatingPointError`` if no epoch was finite.
    """
    check_inputs(objective, train, valid, n_users, n_items, cfg, dr)
    return _fit_checked(objective, train, valid, n_users, n_items, cfg, dr, key)


def _fit_checked(objective, train, valid, n_users, n_items, cfg, dr, key):
    n_train = int(np.asarray(train.users).shape[0])
    n_cells = n_users * n_items
    density = n_train / n_cells
    train_arrays, valid_arrays = _device_split(train), _device_split(valid)
    spec = _Spec(
        objective=objective,
        optimizer=cfg.optimizer,
        batch_size=cfg.batch_size,
        n_batches=-(-n_train // cfg.batch_size),
        n_cells_drawn=max(1, round(dr.unobserved_ratio * cfg.batch_size)),
        n_users=n_users,
        n_items=n_items,
    )
    hyper = _Hyper(
        lr=jnp.float32(cfg.lr),
        l2=jnp.float32(cfg.l2),
        density=jnp.float32(density),
        inv_cells=jnp.float32(1.0 / n_cells),
    )

    key_model, key_imputation, key_train = jax.random.split(key, 3)
    mean = float(np.mean(np.asarray(train.ratings, np.float64)))
    params = init_mf(key_model, n_users, n_items, cfg.dim, cfg.init_scale, mean)
    if objective == "dr":
        imputation = init_mf(
            key_imputation, n_users, n_items, cfg.dim, cfg.init_scale, mean
        )
        imputation_opt = _init_opt(cfg.optimizer, imputation)
    else:
        imputation = imputation_opt = None
    opt_state = _init_opt(cfg.optimizer, params)
    state = _State(params, opt_state, imputation, imputation_opt)
    best, best_params, best_epoch, history = _train_loop(
        state, train_arrays, valid_arrays, hyper, spec, None, key_train, cfg
    )
    max_weight, ess = _diagnostics(objective, train, density)
    return FitResult(
        params=jax.tree.map(np.asarray, best_params),
        l2=float(cfg.l2),
        epochs_run=len(history),
        best_epoch=best_epoch,
        valid_estimate=best,
        history=history,
        max_weight=max_weight,
        ess=ess,
    )


def _train_loop(state, train_arrays, valid_arrays, hyper, spec, index, key_train,
                cfg: TrainConfig):
    """The epochs of every fit, explicit or implicit: run compiled epochs,
    keep the parameters of the best validation estimate, stop after
    ``cfg.patience`` epochs without improvement or on divergence. Returns
    (best estimate, best parameters, best epoch, history)."""
    params = state.params
    best, best_params, best_epoch, stale = math.inf, params, 0, 0
    history: list[float] = []
    for epoch in range(1, cfg.max_epochs + 1):
        epoch_key = jax.random.fold_in(key_train, epoch)
        state, estimate = _epoch(
            state, train_arrays, valid_arrays, hyper, epoch_key, spec, index
        )
        estimate = float(estimate)
        history.append(estimate)
        if not math.isfinite(estimate):
            if best_epoch == 0:
                raise FloatingPointError(
                    f"training diverged: the validation estimate is {estimate} "
                    f"after epoch {epoch}; lower train.lr (now {cfg.lr})"
                )
            warnings.warn(
                f"training diverged at epoch {epoch} (validation estimate "
                f"{estimate}); stopped and kept epoch {best_epoch}",
                RuntimeWarning,
                stacklevel=4,
            )
            break
        if estimate < best:
            best, best_params, best_epoch, stale = estimate, state.params, epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    return best, best_params, best_epoch, history


def search(
    objective: str,
    train: RatingData,
    valid: RatingData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    dr: DRConfig,
    key: jax.Array,
) -> FitResult:
    """Fit once for every L2 strength in ``cfg.l2_grid`` (same key, same epoch
    budget for every method) and return the fit with the lowest validation
    estimate; its ``l2`` field records the strength chosen. Arguments as for
    :func:`fit`; ``cfg.l2`` itself is ignored."""
    check_inputs(objective, train, valid, n_users, n_items, cfg, dr)
    best: FitResult | None = None
    for l2 in cfg.l2_grid:
        result = _fit_checked(
            objective, train, valid, n_users, n_items,
            dataclasses.replace(cfg, l2=float(l2)), dr, key,
        )
        if best is None or result.valid_estimate < best.valid_estimate:
            best = result
    assert best is not None
    return best


# ---------------------------------------------------------------------------
# Implicit feedback: the same loop, other objectives


def _check_ids_and_lengths(name, data, fields, n_users, n_items, what):
    arrays = {field: np.asarray(getattr(data, field)) for field in fields}
    for field, array in arrays.items():
        check(array.ndim == 1, f"{name}.{field}", "a 1-d array", array.shape)
    length = arrays["users"].shape[0]
    for field, array in arrays.items():
        check(array.shape[0] == length, f"{name}.{field}",
              f"of the same length as {name}.users ({length})", array.shape[0])
    check(length > 0, name, f"non-empty (at least one {what})", length)
    for field, bound in (("users", n_users), ("items", n_items)):
        ids = arrays[field]
        check(np.issubdtype(ids.dtype, np.integer), f"{name}.{field}",
              "integer ids", ids.dtype.name)
        bad = (ids < 0) | (ids >= bound)
        if bad.any():
            k = _first_bad(bad)
            check(False, f"{name}.{field}", f"in [0, {bound})", _Shown(ids[k], k))
    for field, array in arrays.items():
        if field in ("users", "items"):
            continue
        check(np.issubdtype(array.dtype, np.number) and array.dtype != bool
              or (array.dtype == bool and field in ("clicks", "relevance")),
              f"{name}.{field}", "numbers", array.dtype.name)
    return arrays


def _check_values(name, field, values, bad, accepted):
    if bad.any():
        k = _first_bad(bad)
        check(False, f"{name}.{field}", accepted, _Shown(values[k], k))


def _check_pairs(name, data, n_users, n_items, need_p_expose: str | None):
    check(isinstance(data, ImplicitData), name, "an ImplicitData",
          type(data).__name__)
    fields = ["users", "items", "clicks", "plays"]
    if data.p_expose is not None:
        fields.append("p_expose")
    elif need_p_expose is not None:
        check(False, f"{name}.p_expose", f"given for objective {need_p_expose!r}",
              None)
    arrays = _check_ids_and_lengths(name, data, fields, n_users, n_items,
                                    "clicked pair")
    clicks = arrays["clicks"].astype(np.float64)
    _check_values(name, "clicks", clicks,
                  ~(np.isfinite(clicks) & (clicks >= 1) & (clicks == np.round(clicks))),
                  "integers >= 1 (every row is a clicked pair)")
    plays = arrays["plays"].astype(np.float64)
    _check_values(name, "plays", plays, ~(np.isfinite(plays) & (plays >= 0)),
                  "finite and >= 0")
    if "p_expose" in arrays:
        p_expose = arrays["p_expose"].astype(np.float64)
        _check_values(name, "p_expose", p_expose, ~((p_expose > 0) & (p_expose <= 1)),
                      "in (0, 1]")
    keys = arrays["users"].astype(np.int64) * n_items + arrays["items"]
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts > 1).any():
        key = unique[counts > 1][0]
        where = np.flatnonzero(keys == key)[:2].tolist()
        raise ConfigError(
            f"{name} must hold each (user, item) pair once, got pair "
            f"({key // n_items}, {key % n_items}) at indices {where[0]} and "
            f"{where[1]}"
        )


def _check_impressions(name, data, n_users, n_items, objective: str):
    check(isinstance(data, ImpressionData), name, "an ImpressionData",
          type(data).__name__)
    needs = {"click_ips": ("p_examine",),
             "click_affine": ("p_examine", "eps_plus", "eps_minus"),
             "click_oracle": ("relevance",)}.get(objective, ())
    for field in needs:
        if getattr(data, field) is None:
            check(False, f"{name}.{field}", f"given for objective {objective!r}",
                  None)
    optional = ("p_examine", "eps_plus", "eps_minus", "relevance")
    fields = ["users", "items", "clicks"] + [
        f for f in optional if getattr(data, f) is not None
    ]
    arrays = _check_ids_and_lengths(name, data, fields, n_users, n_items,
                                    "impression")
    for field in ("clicks", "relevance"):
        if field in arrays:
            values = arrays[field].astype(np.float64)
            _check_values(name, field, values, ~((values == 0) | (values == 1)),
                          "0 or 1")
    if "p_examine" in arrays:
        theta = arrays["p_examine"].astype(np.float64)
        _check_values(name, "p_examine", theta, ~((theta > 0) & (theta <= 1)),
                      "in (0, 1]")
    for field in ("eps_plus", "eps_minus"):
        if field in arrays:
            values = arrays[field].astype(np.float64)
            _check_values(name, field, values, ~((values >= 0) & (values <= 1)),
                          "in [0, 1]")
    if "eps_plus" in arrays and "eps_minus" in arrays:
        plus = arrays["eps_plus"].astype(np.float64)
        minus = arrays["eps_minus"].astype(np.float64)
        bad = ~(plus > minus)
        if bad.any():
            k = _first_bad(bad)
            raise ConfigError(
                f"{name}.eps_plus must be > {name}.eps_minus (otherwise a click "
                f"says nothing about relevance), got {plus[k].item()!r} <= "
                f"{minus[k].item()!r} (index {k})"
            )


def _item_weights(train: ImplicitData, n_items: int, beta: float) -> np.ndarray:
    """The popularity sampler's weights ``w_j = n_j^beta`` (I,), ``n_j`` the
    item's clicks in the training pairs."""
    counts = np.bincount(np.asarray(train.items), minlength=n_items,
                         weights=np.asarray(train.clicks, np.float64))
    return counts**beta


def _check_samplable(name, users, items, n_users, n_items, weights, implicit_cfg):
    """Every user with a positive must keep a non-positive to sample."""
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    keys = np.unique(users * n_items + items)
    pos_users = keys // n_items
    if implicit_cfg.sampler == "uniform":
        counts = np.bincount(pos_users, minlength=n_users)
        full = np.flatnonzero(counts >= n_items)
        if full.size:
            raise ConfigError(
                f"{name} must leave every user an unclicked item to sample as a "
                f"negative, got user {full[0]} with all {n_items} items clicked"
            )
        return
    pos_mass = np.bincount(pos_users, weights=weights[keys % n_items],
                           minlength=n_users)
    free = weights.sum() - pos_mass
    stuck = np.flatnonzero((free <= 1e-12 * max(weights.sum(), 1.0))
                           & (np.bincount(pos_users, minlength=n_users) > 0))
    if stuck.size:
        raise ConfigError(
            f"{name} must leave every user an unclicked item of positive weight "
            f"for implicit.sampler 'popularity' (beta "
            f"{implicit_cfg.sampler_beta}), got user {stuck[0]} with none"
        )


def check_implicit_inputs(
    objective: str,
    train: ImplicitData | ImpressionData,
    valid: ImplicitData | ImpressionData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    implicit_cfg: ImplicitConfig,
    model: str = "mf",
    ncf: NCFConfig = NCFConfig(),
    wmf: WMFConfig = WMFConfig(),
) -> None:
    """Refuse bad arguments of :func:`fit_implicit` with a ``ConfigError``
    naming the field, the accepted range and the value received."""
    check(objective in IMPLICIT_OBJECTIVES, "objective",
          "one of " + ", ".join(map(repr, IMPLICIT_OBJECTIVES)), objective)
    _check_int(n_users, "n_users", 1)
    _check_int(n_items, "n_items", 1)
    check(isinstance(cfg, TrainConfig), "cfg", "a TrainConfig", type(cfg).__name__)
    check(isinstance(implicit_cfg, ImplicitConfig), "implicit_cfg",
          "an ImplicitConfig", type(implicit_cfg).__name__)
    check(isinstance(ncf, NCFConfig), "ncf", "an NCFConfig", type(ncf).__name__)
    check(isinstance(wmf, WMFConfig), "wmf", "a WMFConfig", type(wmf).__name__)
    check(model in MODELS, "model", "one of " + ", ".join(map(repr, MODELS)), model)
    check(model == "mf" or cfg.optimizer == "adam", "train.optimizer",
          f"'adam' for model {model!r} (the row-sparse optimiser is MF-only)",
          cfg.optimizer)
    if objective in IMPRESSION_OBJECTIVES:
        _check_impressions("train", train, n_users, n_items, objective)
        _check_impressions("valid", valid, n_users, n_items, objective)
        return
    check(objective != "ubpr" or implicit_cfg.sampler == "uniform",
          "implicit.sampler", "'uniform' for objective 'ubpr' (it draws j from "
          "all items)", implicit_cfg.sampler)
    need = objective if objective in ("relmf", "ubpr") else None
    _check_pairs("train", train, n_users, n_items, need)
    _check_pairs("valid", valid, n_users, n_items, need)
    if objective == "ubpr":
        return
    weights = _item_weights(train, n_items, implicit_cfg.sampler_beta)
    _check_samplable("train", train.users, train.items, n_users, n_items, weights,
                     implicit_cfg)
    _check_samplable(
        "train and valid together",
        np.concatenate([np.asarray(train.users), np.asarray(valid.users)]),
        np.concatenate([np.asarray(train.items), np.asarray(valid.items)]),
        n_users, n_items, weights, implicit_cfg,
    )


def _floored(objective, train, valid, floor: float) -> None:
    """Warn when ``implicit.propensity_floor`` raises propensities."""
    field = ("p_expose" if objective in ("relmf", "ubpr") else
             "p_examine" if objective in ("click_ips", "click_affine") else None)
    if field is None:
        return
    parts = []
    for name, data in (("train", train), ("valid", valid)):
        values = np.asarray(getattr(data, field), np.float64)
        low = values < floor
        if low.any():
            parts.append(f"{int(low.sum())} of {values.size} {name}.{field} "
                         f"values (smallest {values.min():.3g})")
    if parts:
        warnings.warn(
            f"implicit.propensity_floor {floor} raised " + " and ".join(parts)
            + " to the floor",
            RuntimeWarning,
            stacklevel=4,
        )


def _implicit_weights(objective, train, floor: float) -> np.ndarray:
    """Per-sample weights (n,) as the objective uses them: ``1/theta`` for
    relmf, ubpr (the positive's factor) and click_ips, ``1/(theta (eps_plus -
    eps_minus))`` for click_affine, 1 otherwise."""
    n = np.asarray(train.users).shape[0]
    if objective in ("relmf", "ubpr"):
        return 1.0 / np.maximum(np.asarray(train.p_expose, np.float64), floor)
    if objective in ("click_ips", "click_affine"):
        weights = 1.0 / np.maximum(np.asarray(train.p_examine, np.float64), floor)
        if objective == "click_affine":
            weights /= (np.asarray(train.eps_plus, np.float64)
                        - np.asarray(train.eps_minus, np.float64))
        return weights
    return np.ones(n)


def _f32(values, fill: float, n: int) -> jax.Array:
    if values is None:
        return jnp.full((n,), fill, jnp.float32)
    return jnp.asarray(np.asarray(values, np.float64), jnp.float32)


def _ids(values) -> jax.Array:
    return jnp.asarray(np.asarray(values, np.int32))


@functools.partial(jax.jit, static_argnames=("spec",))
def _valid_negatives(key, index, users, spec: _Spec):
    """The validation set's negatives, drawn once per fit."""
    negatives, clicked, p_expose = _draw_negatives(key, index, users, spec)
    if clicked is None:
        clicked = jnp.zeros(negatives.shape, jnp.float32)
        p_expose = jnp.ones(negatives.shape, jnp.float32)
    return negatives, clicked, p_expose


def _fit_implicit_checked(objective, train, valid, n_users, n_items, cfg,
                          implicit_cfg, key, model, ncf, wmf):
    n_train = int(np.asarray(train.users).shape[0])
    n_valid = int(np.asarray(valid.users).shape[0])
    n_cells = n_users * n_items
    floor = implicit_cfg.propensity_floor
    _floored(objective, train, valid, floor)
    pairs = objective in PAIR_OBJECTIVES
    spec = _Spec(
        objective=objective,
        optimizer=cfg.optimizer,
        batch_size=cfg.batch_size,
        n_batches=-(-n_train // cfg.batch_size),
        n_cells_drawn=1,
        n_users=n_users,
        n_items=n_items,
        model=model,
        n_negatives=implicit_cfg.negatives if pairs else 0,
        sampler=implicit_cfg.sampler,
        ubpr_clip=implicit_cfg.ubpr_clip,
    )
    hyper = _Hyper(
        lr=jnp.float32(cfg.lr),
        l2=jnp.float32(cfg.l2),
        density=jnp.float32(n_train / n_cells),
        inv_cells=jnp.float32(1.0 / n_cells),
        alpha=jnp.float32(wmf.alpha),
        floor=jnp.float32(floor),
    )
    key_model, key_valid, key_train = jax.random.split(key, 3)

    index = None
    if pairs:
        weights = _item_weights(train, n_items, implicit_cfg.sampler_beta)
        index = imp.positive_index(train.users, train.items, n_users, n_items,
                                   weights, train.p_expose)
        # A held-out positive is not a negative either; for ubpr, Y_uj and
        # p_expose of a drawn j come from both splits.
        valid_index = imp.positive_index(
            np.concatenate([np.asarray(train.users), np.asarray(valid.users)]),
            np.concatenate([np.asarray(train.items), np.asarray(valid.items)]),
            n_users, n_items, weights,
            None if train.p_expose is None else np.concatenate(
                [np.asarray(train.p_expose), np.asarray(valid.p_expose)]
            ),
        )
        negatives = _valid_negatives(key_valid, valid_index, _ids(valid.users),
                                     spec)
        train_arrays = (_ids(train.users), _ids(train.items),
                        _f32(train.plays, 0.0, n_train),
                        _f32(train.p_expose, 1.0, n_train))
        valid_arrays = (_ids(valid.users), _ids(valid.items),
                        _f32(valid.plays, 0.0, n_valid),
                        _f32(valid.p_expose, 1.0, n_valid), *negatives)
    else:
        def columns(data, n):
            return (_ids(data.users), _ids(data.items), _f32(data.clicks, 0.0, n),
                    _f32(data.p_examine, 1.0, n), _f32(data.eps_plus, 1.0, n),
                    _f32(data.eps_minus, 0.0, n), _f32(data.relevance, 0.0, n))

        train_arrays, valid_arrays = columns(train, n_train), columns(valid, n_valid)

    if model == "ncf":
        params = init_ncf(key_model, n_users, n_items, cfg.dim, ncf.layers,
                          cfg.init_scale)
    else:
        params = init_mf(key_model, n_users, n_items, cfg.dim, cfg.init_scale, 0.0)
    state = _State(params, _init_opt(cfg.optimizer, params), None, None)
    best, best_params, best_epoch, history = _train_loop(
        state, train_arrays, valid_arrays, hyper, spec, index, key_train, cfg
    )
    weights = _implicit_weights(objective, train, floor)
    return FitResult(
        params=jax.tree.map(np.asarray, best_params),
        l2=float(cfg.l2),
        epochs_run=len(history),
        best_epoch=best_epoch,
        valid_estimate=best,
        history=history,
        max_weight=float(weights.max()),
        ess=float(weights.sum() ** 2 / np.sum(weights**2)),
    )


def fit_implicit(
    objective: str,
    train: ImplicitData | ImpressionData,
    valid: ImplicitData | ImpressionData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    implicit_cfg: ImplicitConfig,
    key: jax.Array,
    model: str = "mf",
    ncf: NCFConfig = NCFConfig(),
    wmf: WMFConfig = WMFConfig(),
) -> FitResult:
    """Train MF or NCF on an implicit objective with L2 strength ``cfg.l2``,
    on the same compiled epoch and early-stopping loop as :func:`fit`.

    Args:
        objective: a pair objective (``bce``, ``bpr``, ``wmf``, ``relmf``,
            ``ubpr``; ``train``/``valid`` are :class:`ImplicitData`) or a
            click loss (``click_naive``, ``click_ips``, ``click_affine``,
            ``click_oracle``; they are :class:`ImpressionData`). See
            :mod:`estimators.implicit` for each formula and propensity.
        n_users, n_items: sizes of the tables.
        cfg: training settings (``train.*``); ``implicit_cfg``: negatives,
            sampler and propensity floor (``implicit.*``); ``wmf``: WMF's
            ``alpha``; ``ncf``: NCF's MLP layers.
        key: a ``jax.random`` key; the same key gives identical parameters.
        model: ``mf`` (either optimiser) or ``ncf`` (``adam`` only).

    The pair objectives draw ``implicit.negatives`` items per positive inside
    the compiled step, never a training positive of the user (``ubpr``: from
    all items). The scores are logits (``wmf``: preferences). The L2 penalty
    is per occurrence of every scored pair's rows (NCF: plus its dense
    weights, once per step).

    Early stopping watches the objective itself, without L2, on the whole
    validation split, debiased like the training loss (the split's own
    propensities). For the pair objectives the validation negatives are drawn
    once per fit from the items that are positives in neither split (for
    ``ubpr`` from all items, with ``Y_uj`` and ``p_expose`` read from both
    splits), so the estimate changes only with the parameters. ``max_weight``
    and ``ess`` describe the per-sample inverse-propensity weights (1 for the
    unweighted objectives).
    """
    check_implicit_inputs(objective, train, valid, n_users, n_items, cfg,
                          implicit_cfg, model, ncf, wmf)
    return _fit_implicit_checked(objective, train, valid, n_users, n_items, cfg,
                                 implicit_cfg, key, model, ncf, wmf)


def search_implicit(
    objective: str,
    train: ImplicitData | ImpressionData,
    valid: ImplicitData | ImpressionData,
    n_users: int,
    n_items: int,
    cfg: TrainConfig,
    implicit_cfg: ImplicitConfig,
    key: jax.Array,
    model: str = "mf",
    ncf: NCFConfig = NCFConfig(),
    wmf: WMFConfig = WMFConfig(),
) -> FitResult:
    """:func:`fit_implicit` for every L2 strength in ``cfg.l2_grid`` (same key,
    same validation negatives), keeping the fit with the lowest validation
    estimate; ``cfg.l2`` itself is ignored."""
    check_implicit_inputs(objective, train, valid, n_users, n_items, cfg,
                          implicit_cfg, model, ncf, wmf)
    best: FitResult | None = None
    for l2 in cfg.l2_grid:
        result = _fit_implicit_checked(
            objective, train, valid, n_users, n_items,
            dataclasses.replace(cfg, l2=float(l2)), implicit_cfg, key, model,
            ncf, wmf,
        )
        if best is None or result.valid_estimate < best.valid_estimate:
            best = result
    assert best is not None
    return best


# ---------------------------------------------------------------------------
# Replicates together: one compiled program with jax.vmap

BATCH_MODES = ("auto", "vmap", "loop")

# The chooser's threshold on n_ratings * replicates * dim (about the
# arithmetic of one epoch of all replicates). Below it the replicates train as
# one vmapped program: each fit is then so cheap that dispatch, the epoch
# loop in Python and synchronisation weigh, and vmap pays them once. Above it
# they train one by one: vmap cannot reduce the arithmetic on CPU, the stacked
# tables fall out of the caches, and every replicate runs until the last one
# stops early (in mnar-ratings the L2 grid's fits stop between 6 and 22
# epochs). Measured on a 2-core CPU with XLA pinned to one thread, MF-IPS,
# equal epochs (see experiments/bench.py): 5k ratings x 8 x dim 8 (3e5) vmap
# 1.2-1.8x faster per epoch; 35k x 8 x dim 16 (4.5e6) 0.7-1.6x (no
# reliable gain); 35k x 36 x dim 16 (2e7) and 200k x 8 x dim 32 (5e7) 0.5-0.7x.
VMAP_MAX_WORK = 2_000_000


def choose_mode(n_ratings: int, replicates: int, dim: int) -> str:
    """``"vmap"`` when ``n_ratings * replicates * dim`` (the largest
    replicate's training ratings) is at most :data:`VMAP_MAX_WORK`, else
    ``"loop"``; a single replicate always trains alone."""
    if replicates <= 1:
        return "loop"
    return "vmap" if n_ratings * replicates * dim <= VMAP_MAX_WORK else "loop"


# Settings that select the compiled program, so replicates must share them.
_SHARED_FIELDS = ("dim", "optimizer", "batch_size")


def _check_batch(objective, trains, valids, n_users, n_items, cfgs, dr, keys,
                 mode) -> None:
    check(mode in BATCH_MODES, "mode", "one of " + ", ".join(map(repr, BATCH_MODES)),
          mode)
    for name, values in (("trains", trains), ("valids", valids), ("cfgs", cfgs),
                         ("keys", keys)):
        check(isinstance(values, (list, tuple)) and len(values) > 0, name,
              "a non-empty list (one entry per replicate)", type(values).__name__)
    for name, values in (("valids", valids), ("cfgs", cfgs), ("keys", keys)):
        check(len(values) == len(trains), name,
              f"one entry per replicate ({len(trains)}, as trains)", len(values))
    for index, (train, valid, cfg) in enumerate(zip(trains, valids, cfgs)):
        try:
            check_inputs(objective, train, valid, n_users, n_items, cfg, dr)
        except ConfigError as error:
            raise ConfigError(f"replicate {index}: {error}") from None
    for field in _SHARED_FIELDS:
        first = getattr(cfgs[0], field)
        for index, cfg in enumerate(cfgs):
            check(getattr(cfg, field) == first, f"cfgs[{index}].{field}",
                  f"equal across replicates (cfgs[0].{field} = {first!r})",
                  getattr(cfg, field))


def fit_batch(
    objective: str,
    trains: list[RatingData],
    valids: list[RatingData],
    n_users: int,
    n_items: int,
    cfgs: list[TrainConfig],
    dr: DRConfig,
    keys: list[jax.Array],
    mode: str = "auto",
) -> list[FitResult]:
    """:func:`fit` for several replicates: replicate r trains on ``trains[r]``
    with ``cfgs[r]`` (its own ``l2``, ``lr``, ``patience``, ``max_epochs``,
    ``init_scale``) and key ``keys[r]``; every replicate shares the objective,
    the table sizes and ``dim``, ``optimizer`` and ``batch_size``.

    ``mode``: ``"vmap"`` trains all replicates as one compiled program with
    ``jax.vmap`` over the replicate axis; ``"loop"`` calls :func:`fit` one by
    one; ``"auto"`` asks :func:`choose_mode`. Both give the same fits (the
    vmapped one equals the one-by-one one up to float rounding): the vmapped
    path shuffles each replicate exactly as :func:`fit` does, pads every
    replicate to the largest number of minibatches (a replicate's own last
    minibatch is padded and masked as in :func:`fit`, and a minibatch made
    only of padding is skipped, not stepped), and stops early by masking: a
    replicate whose estimate stalled for ``patience`` epochs (or that reached
    ``max_epochs``, or diverged) keeps its best parameters and its history,
    and the updates it would still receive are discarded while the others
    go on. A replicate with no finite epoch raises ``FloatingPointError``
    after the others are done.

    Returns one :class:`FitResult` per replicate, in order.
    """
    _check_batch(objective, trains, valids, n_users, n_items, cfgs, dr, keys, mode)
    if mode == "auto":
        n_max = max(np.asarray(t.users).shape[0] for t in trains)
        mode = choose_mode(n_max, len(trains), cfgs[0].dim)
    if mode == "loop":
        return [
            _fit_checked(objective, train, valid, n_users, n_items, cfg, dr, key)
            for train, valid, cfg, key in zip(trains, valids, cfgs, keys)
        ]
    return _fit_vmapped(objective, trains, valids, n_users, n_items, cfgs, dr, keys)


def search_batch(
    objective: str,
    trains: list[RatingData],
    valids: list[RatingData],
    n_users: int,
    n_items: int,
    cfgs: list[TrainConfig],
    dr: DRConfig,
    keys: list[jax.Array],
    mode: str = "auto",
) -> list[FitResult]:
    """:func:`search` for several replicates: every replicate's fits over its
    ``cfgs[r].l2_grid`` become replicates of one :func:`fit_batch` call (so a
    grid of 3 over 12 replicates trains 36 models together), and each
    replicate keeps its fit with the lowest validation estimate (the first
    one on a tie, as :func:`search`). ``mode`` as for :func:`fit_batch`,
    decided on the expanded number of fits."""
    _check_batch(objective, trains, valids, n_users, n_items, cfgs, dr, keys, mode)
    owners, grid_cfgs = [], []
    for index, cfg in enumerate(cfgs):
        for l2 in cfg.l2_grid:
            owners.append(index)
            grid_cfgs.append(dataclasses.replace(cfg, l2=float(l2)))
    results = fit_batch(
        objective, [trains[r] for r in owners], [valids[r] for r in owners],
        n_users, n_items, grid_cfgs, dr, [keys[r] for r in owners], mode,
    )
    best: list[FitResult | None] = [None] * len(cfgs)
    for owner, result in zip(owners, results):
        if best[owner] is None or result.valid_estimate < best[owner].valid_estimate:
            best[owner] = result
    return best  # type: ignore[return-value]


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _padded_columns(datas: list[RatingData], length: int) -> tuple[jax.Array, ...]:
    """The four columns of every replicate, padded to ``length`` with id 0,
    rating 0 and propensity 1 (finite, masked out), each (R, length)."""
    columns = []
    for field, dtype, fill in (("users", np.int32, 0), ("items", np.int32, 0),
                               ("ratings", np.float32, 0.0),
                               ("propensity", np.float32, 1.0)):
        out = np.full((len(datas), length), fill, dtype)
        for r, data in enumerate(datas):
            values = getattr(data, field)
            n = np.asarray(data.users).shape[0]
            out[r, :n] = 1.0 if values is None else np.asarray(values)
        columns.append(jnp.asarray(out))
    return tuple(columns)


class _Tracker(NamedTuple):
    """Early stopping of every replicate, on device, each field (R,)."""

    best: jax.Array  # best estimate so far (inf before the first)
    best_epoch: jax.Array  # int32, 0 before the first finite epoch
    stale: jax.Array  # int32, epochs since the last improvement
    active: jax.Array  # bool, still training


def _epoch_orders(key_order, key_cells, n_train: int, spec: _Spec):
    """Order, mask (both (spec.n_batches, B)) and per-minibatch keys of one
    replicate with ``n_train`` ratings, built exactly as :func:`_epoch` builds
    them for its ``ceil(n_train / B)`` minibatches, then padded with whole
    minibatches of padding up to ``spec.n_batches``."""
    size = spec.batch_size
    n_batches = -(-n_train // size)
    n_pad = n_batches * size - n_train
    order = jnp.concatenate(
        [_shuffle(key_order, n_train), jnp.zeros((n_pad,), jnp.int32)]
    ).reshape(n_batches, size)
    mask = jnp.concatenate(
        [jnp.ones((n_train,), jnp.float32), jnp.zeros((n_pad,), jnp.float32)]
    ).reshape(n_batches, size)
    cell_keys = jax.random.split(key_cells, n_batches)
    extra = spec.n_batches - n_batches
    if extra:
        order = jnp.concatenate([order, jnp.zeros((extra, size), jnp.int32)])
        mask = jnp.concatenate([mask, jnp.zeros((extra, size), jnp.float32)])
        cell_keys = jnp.concatenate([cell_keys, jax.random.split(key_cells, extra)])
    return order, mask, cell_keys


def _masked_valid_estimate(params, valid, valid_mask, n_valid, hyper, spec):
    """:func:`_valid_estimate` of an explicit objective on a padded split."""
    users, items, ratings, propensity = valid
    error = (predict_mf(params, users, items) - ratings) ** 2 * valid_mask
    if spec.objective == "naive":
        return jnp.sum(error) / n_valid
    return jnp.sum(error / propensity) * hyper.inv_cells


@functools.partial(jax.jit, static_argnames=("spec", "lengths"))
def _batch_epoch(state, best_params, tracker: _Tracker, train, valid, valid_mask,
                 n_valid, hyper, keys, epoch, patience, max_epochs,
                 spec: _Spec, lengths: tuple[int, ...]):
    """One epoch of every replicate (leading axis R everywhere), then the
    early-stopping bookkeeping. ``lengths`` (static) holds each replicate's
    number of training ratings; ``spec.n_batches`` is the largest number of
    minibatches."""
    _TRACE_COUNT[0] += 1
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, epoch)
    split = jax.vmap(jax.random.split)(epoch_keys)
    key_order, key_cells = split[:, 0], split[:, 1]

    # Shuffle every replicate on its own length: one vmapped shuffle per
    # distinct length, put back in replicate order.
    groups: dict[int, list[int]] = {}
    for r, n in enumerate(lengths):
        groups.setdefault(n, []).append(r)
    parts, placed = [], []
    for n, members in groups.items():
        idx = np.asarray(members)
        parts.append(jax.vmap(
            functools.partial(_epoch_orders, n_train=n, spec=spec)
        )(key_order[idx], key_cells[idx]))
        placed.extend(members)
    back = np.argsort(np.asarray(placed))
    order, mask, cell_keys = (
        jnp.concatenate([part[k] for part in parts])[back] for k in range(3)
    )
    ragged = len({-(-n // spec.batch_size) for n in lengths}) > 1

    def one(state, train, hyper, order, mask, cell_keys):
        # One gather per column and epoch, not one per minibatch: a batched
        # gather inside the scan is slow on CPU. Same values either way.
        shuffled = tuple(column[order] for column in train)

        def body(state, inputs):
            columns, real, cell_key = inputs
            batch = _make_batch(spec, columns, real)
            new = _step(state, batch, cell_key, hyper, spec, None)
            if ragged:  # a minibatch of padding only: no step at all
                keep = jnp.any(real > 0)
                new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
            return new, None

        return jax.lax.scan(body, state, (shuffled, mask, cell_keys))[0]

    new_state = jax.vmap(one)(state, train, hyper, order, mask, cell_keys)

    def select(flags, new, old):
        return jax.tree.map(
            lambda a, b: jnp.where(flags.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            new, old,
        )

    state = select(tracker.active, new_state, state)
    estimate = jax.vmap(
        functools.partial(_masked_valid_estimate, spec=spec)
    )(state.params, valid, valid_mask, n_valid, hyper)

    finite = jnp.isfinite(estimate)
    running = tracker.active & finite
    improved = running & (estimate < tracker.best)
    best_params = select(improved, state.params, best_params)
    stale = jnp.where(improved, 0, jnp.where(running, tracker.stale + 1,
                                                tracker.stale))
    tracker = _Tracker(
        best=jnp.where(improved, estimate, tracker.best),
        best_epoch=jnp.where(improved, epoch, tracker.best_epoch),
        stale=stale,
        active=running & (stale < patience) & (epoch < max_epochs),
    )
    return state, best_params, tracker, estimate


def _fit_vmapped(objective, trains, valids, n_users, n_items, cfgs, dr, keys):
    lengths = tuple(int(np.asarray(t.users).shape[0]) for t in trains)
    valid_lengths = [int(np.asarray(v.users).shape[0]) for v in valids]
    n_cells = n_users * n_items
    shared = cfgs[0]
    spec = _Spec(
        objective=objective,
        optimizer=shared.optimizer,
        batch_size=shared.batch_size,
        n_batches=-(-max(lengths) // shared.batch_size),
        n_cells_drawn=max(1, round(dr.unobserved_ratio * shared.batch_size)),
        n_users=n_users,
        n_items=n_items,
    )
    replicates = len(trains)
    hyper = _Hyper(
        lr=jnp.asarray([c.lr for c in cfgs], jnp.float32),
        l2=jnp.asarray([c.l2 for c in cfgs], jnp.float32),
        density=jnp.asarray([n / n_cells for n in lengths], jnp.float32),
        inv_cells=jnp.full((replicates,), 1.0 / n_cells, jnp.float32),
        alpha=jnp.zeros((replicates,), jnp.float32),
        floor=jnp.ones((replicates,), jnp.float32),
    )

    states, train_keys = [], []
    for train, cfg, key in zip(trains, cfgs, keys):
        key_model, key_imputation, key_train = jax.random.split(key, 3)
        mean = float(np.mean(np.asarray(train.ratings, np.float64)))
        params = init_mf(key_model, n_users, n_items, cfg.dim, cfg.init_scale, mean)
        if objective == "dr":
            imputation = init_mf(key_imputation, n_users, n_items, cfg.dim,
                                 cfg.init_scale, mean)
            imputation_opt = _init_opt(cfg.optimizer, imputation)
        else:
            imputation = imputation_opt = None
        states.append(_State(params, _init_opt(cfg.optimizer, params), imputation,
                             imputation_opt))
        train_keys.append(key_train)
    state = _stack(states)
    best_params = state.params
    keys_train = jnp.stack(train_keys)

    train_arrays = _padded_columns(list(trains), max(lengths))
    valid_arrays = _padded_columns(list(valids), max(valid_lengths))
    valid_mask = jnp.asarray(
        np.arange(max(valid_lengths))[None, :] < np.asarray(valid_lengths)[:, None],
        jnp.float32,
    )
    n_valid = jnp.asarray(valid_lengths, jnp.float32)
    patience = jnp.asarray([c.patience for c in cfgs], jnp.int32)
    max_epochs = jnp.asarray([c.max_epochs for c in cfgs], jnp.int32)
    tracker = _Tracker(
        best=jnp.full((replicates,), jnp.inf, jnp.float32),
        best_epoch=jnp.zeros((replicates,), jnp.int32),
        stale=jnp.zeros((replicates,), jnp.int32),
        active=jnp.ones((replicates,), bool),
    )

    histories: list[list[float]] = [[] for _ in range(replicates)]
    for epoch in range(1, max(c.max_epochs for c in cfgs) + 1):
        was_active = np.asarray(tracker.active)
        if not was_active.any():
            break
        state, best_params, tracker, estimate = _batch_epoch(
            state, best_params, tracker, train_arrays, valid_arrays, valid_mask,
            n_valid, hyper, keys_train, jnp.int32(epoch), patience, max_epochs,
            spec=spec, lengths=lengths,
        )
        estimate = np.asarray(estimate)
        for r in np.flatnonzero(was_active):
            histories[r].append(float(estimate[r]))

    best = np.asarray(tracker.best)
    best_epochs = np.asarray(tracker.best_epoch)
    best_host = jax.tree.map(np.asarray, best_params)
    results = []
    for r, (train, cfg) in enumerate(zip(trains, cfgs)):
        history = histories[r]
        if not math.isfinite(history[-1]):
            if best_epochs[r] == 0:
                raise FloatingPointError(
                    f"training diverged in replicate {r}: the validation estimate "
                    f"is {history[-1]} after epoch {len(history)}; lower train.lr "
                    f"(now {cfg.lr})"
                )
            warnings.warn(
                f"training diverged in replicate {r} at epoch {len(history)} "
                f"(validation estimate {history[-1]}); stopped and kept epoch "
                f"{best_epochs[r]}",
                RuntimeWarning,
                stacklevel=3,
            )
        max_weight, ess = _diagnostics(objective, train, lengths[r] / n_cells)
        results.append(FitResult(
            params=jax.tree.map(lambda leaf: leaf[r], best_host),
            l2=float(cfg.l2),
            epochs_run=len(history),
            best_epoch=int(best_epochs[r]),
            valid_estimate=float(best[r]) if best_epochs[r] else math.inf,
            history=history,
            max_weight=max_weight,
            ess=ess,
        ))
    return results
