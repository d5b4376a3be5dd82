"""Off-policy evaluation of slate (ranking) policies from logged clicks.

Setting (Li, Kim and Zitouni, "Offline Evaluation of Ranking Policies with
Click Models", KDD 2018). Visit v = 1..n shows user u_v a slate s_v of K items
drawn by the logging policy mu and logs a click c_vk (or any per-impression
reward) at each rank k. The value of a target slate policy pi is its expected
clicks per visit on the logged users,

    V(pi) = (1/n) sum_v E_{s ~ pi(. | u_v)} [sum_k c_k],

which under the position-based model (PBM: rank k examined with probability
theta_k, an examined item i clicked with probability alpha_ui, independently of
the rest of the slate) is sum_i sum_k theta_k p_rank_pi(u, i, k) alpha_ui
(`sim.bandit.slate_value_pbm`).

Both estimators weight each logged click by a ratio of the two policies'
marginal placement probabilities (``SlatePolicy.p_rank_table()``), never by
whole-slate probabilities, so their weights stay small when slates are many:

- ``iips`` (independent-item IPS, the item-position model of Li et al.): the
  weight of the item shown at rank k is p_rank_pi(u, i, k) / p_rank_mu(u, i, k).
  Unbiased whenever the expected click on an item depends only on the user,
  the item and its rank (true under the PBM, whatever theta is).
- ``pbm-ips`` (the PBM estimator of Li et al.): the weight is the ratio of the
  item's expected examination under each policy, sum_j theta_j p_rank_pi(u,
  i, j) / sum_j theta_j p_rank_mu(u, i, j), shared by every rank the item is
  shown at. Unbiased under the PBM when theta is right, with smaller weights
  than ``iips`` (it pools the ranks).

Under the cascade model a click depends on the items above, so neither
assumption holds and both are biased; the size of that bias is a robustness
result the ``ope-slate`` experiment reports (and a test documents), not a
defect to hide.

Inputs are full arrays, usable without the simulator: ``slates`` (n, K) item
ids, ``clicks`` (n, K), ``users`` (n,), and each policy's p_rank table (R, I,
K) with R = 1 (one table shared by all users) or R = U (row u for user u).
Per-visit contributions c_v = sum_k w_vk c_vk are computed once; the value is
their mean, the standard error their i.i.d. standard error over visits, and
the normal 95% interval follows from both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from estimators.metrics import _Plain
from sim.config import ConfigError, check

__all__ = [
    "SLATE_ESTIMATORS",
    "SlateEstimate",
    "estimate_slate_value",
    "estimate_slate_values",
    "iips",
    "pbm_ips",
]

SLATE_ESTIMATORS = ("pbm-ips", "iips")

_Z95 = 1.959963984540054
_TOP_SHARE = 0.01


class SlateEstimate(NamedTuple):
    """A slate-policy value estimate with its diagnostics.

    Attributes:
        value, se, ci_low, ci_high: the estimate, its standard error and the
            normal 95% interval (se is ``math.inf`` with a single visit).
        n: number of logged visits.
        ess: Kish effective sample size (sum w)^2 / sum w^2 over the n x K
            impression weights (0 if they are all 0).
        max_weight: the largest impression weight.
        top_share: share of the total weight held by the top 1% of
            impressions (0 if all weights are 0).
        support_violations: placements the target can make and the logger
            cannot, over the logged users' table rows: (row, item, rank)
            triples with p_rank_pi > 0 = p_rank_mu for ``iips``, (row, item)
            pairs with positive target and zero logging examination for
            ``pbm-ips``.
    """

    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    ess: float
    max_weight: float
    top_share: float
    support_violations: int


def _check_table(table: Any, name: str, slate_size: int) -> np.ndarray:
    table = np.asarray(table, dtype=np.float64)
    check(table.ndim == 3 and table.shape[0] >= 1 and table.shape[2] == slate_size,
          name, f"an (R, I, K) p_rank table with K = {slate_size} (the slates' "
          "columns)", _Plain(f"shape {table.shape}"))
    bad = ~((table >= 0.0) & (table <= 1.0))
    if bad.any():
        row, item, rank = (int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"{name} must be in [0, 1], got "
                          f"{float(table[row, item, rank])!r} "
                          f"(row {row}, item {item}, rank {rank + 1})")
    return table


def _rows(table: np.ndarray, users: np.ndarray, name: str) -> np.ndarray:
    if table.shape[0] == 1:
        return np.zeros(users.shape, dtype=np.int64)
    top = int(users.max())
    check(top < table.shape[0], name,
          f"one row per user (R = 1, or R > the largest user id {top})",
          _Plain(f"{table.shape[0]} rows"))
    return users


def _validate(slates: Any, clicks: Any, users: Any, logging_p_rank: Any,
              target_p_rank: Any) -> tuple[np.ndarray, ...]:
    slates = np.asarray(slates)
    check(slates.ndim == 2 and slates.shape[0] >= 1 and slates.shape[1] >= 1
          and np.issubdtype(slates.dtype, np.integer), "slates",
          "an (n, K) integer array of item ids with n >= 1",
          _Plain(f"{slates.dtype} array of shape {slates.shape}"))
    n, k = slates.shape
    clicks = np.asarray(clicks, dtype=np.float64)
    check(clicks.shape == (n, k), "clicks", f"an array of shape (n, K) = {(n, k)} "
          "like slates", _Plain(f"shape {clicks.shape}"))
    if not np.isfinite(clicks).all():
        row, col = (int(j) for j in np.argwhere(~np.isfinite(clicks))[0])
        raise ConfigError(f"clicks must be finite, got {float(clicks[row, col])!r} "
                          f"(visit {row}, rank {col + 1})")
    users = np.asarray(users)
    check(users.shape == (n,) and np.issubdtype(users.dtype, np.integer), "users",
          f"an integer array of one user id per visit (n = {n})",
          _Plain(f"{users.dtype} array of shape {users.shape}"))
    if (users < 0).any():
        j = int(np.flatnonzero(users < 0)[0])
        raise ConfigError(f"users must be >= 0, got {int(users[j])} (visit {j})")
    logging_p_rank = _check_table(logging_p_rank, "logging_p_rank", k)
    target_p_rank = _check_table(target_p_rank, "target_p_rank", k)
    n_items = logging_p_rank.shape[1]
    check(target_p_rank.shape[1] == n_items, "target_p_rank",
          f"a table over the logging table's {n_items} items",
          _Plain(f"{target_p_rank.shape[1]} items"))
    out = (slates < 0) | (slates >= n_items)
    if out.any():
        row, col = (int(j) for j in np.argwhere(out)[0])
        raise ConfigError(f"slates must hold item ids in [0, {n_items - 1}], got "
                          f"{int(slates[row, col])} (visit {row}, rank {col + 1})")
    return slates, clicks, users, logging_p_rank, target_p_rank


def _weights(name: str, slates: np.ndarray, users: np.ndarray,
             logging_p_rank: np.ndarray, target_p_rank: np.ndarray,
             theta: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Impression weights (n, K) and the support-violation count."""
    n, k = slates.shape
    rows_mu = _rows(logging_p_rank, users, "logging_p_rank")
    rows_pi = _rows(target_p_rank, users, "target_p_rank")
    # Support over the table rows the logged users use, once per distinct pair.
    pairs = np.unique(np.stack([rows_mu, rows_pi], axis=1), axis=0)
    if name == "iips":
        ranks = np.arange(k)[None, :]
        numerator = target_p_rank[rows_pi[:, None], slates, ranks]
        denominator = logging_p_rank[rows_mu[:, None], slates, ranks]
        mu_support = logging_p_rank[pairs[:, 0]]
        pi_support = target_p_rank[pairs[:, 1]]
        what = "logging p_rank of the shown item at its rank"
    else:
        exposure_mu = logging_p_rank @ theta  # (R, I): expected examinations
        exposure_pi = target_p_rank @ theta
        numerator = exposure_pi[rows_pi[:, None], slates]
        denominator = exposure_mu[rows_mu[:, None], slates]
        mu_support = exposure_mu[pairs[:, 0]]
        pi_support = exposure_pi[pairs[:, 1]]
        what = "logging examination sum_j theta_j p_rank of the shown item"
    bad = ~(denominator > 0.0)
    if bad.any():
        row, col = (int(j) for j in np.argwhere(bad)[0])
        item = int(slates[row, col])
        raise ConfigError(f"{what} must be > 0, got {float(denominator[row, col])!r} "
                          f"(visit {row}, rank {col + 1}, item {item})")
    violations = int(np.count_nonzero((pi_support > 0.0) & (mu_support == 0.0)))
    return numerator / denominator, violations


def estimate_slate_values(
    estimators: Sequence[str],
    slates: Any,
    clicks: Any,
    users: Any,
    logging_p_rank: Any,
    target_p_rank: Any,
    p_examine: Any = None,
) -> dict[str, SlateEstimate]:
    """Several slate estimators on one log; see ``pbm_ips`` and ``iips``.

    Args:
        estimators: names from ``SLATE_ESTIMATORS``.
        slates: (n, K) integer item ids shown, in rank order.
        clicks: (n, K) finite clicks (or any per-impression reward).
        users: (n,) integer user id of each visit (>= 0).
        logging_p_rank, target_p_rank: (R, I, K) p_rank tables of the logging
            and the target policy, entries in [0, 1]; R = 1 for a table shared
            by all users, else one row per user id.
        p_examine: (K,) theta_k >= 0, not all 0; required by ``pbm-ips``.

    Returns:
        A dict from estimator name to ``SlateEstimate``, in the order asked.
    """
    check(not isinstance(estimators, str) and len(estimators) > 0, "estimators",
          "a non-empty list of names from " + ", ".join(SLATE_ESTIMATORS),
          estimators)
    for name in estimators:
        check(name in SLATE_ESTIMATORS, "estimator",
              "one of " + ", ".join(SLATE_ESTIMATORS), name)
    slates, clicks, users, logging_p_rank, target_p_rank = _validate(
        slates, clicks, users, logging_p_rank, target_p_rank)
    theta = None
    if "pbm-ips" in estimators:
        check(p_examine is not None, "p_examine",
              "a (K,) array of examination probabilities theta_k for pbm-ips", None)
        theta = np.asarray(p_examine, dtype=np.float64)
        k = slates.shape[1]
        check(theta.shape == (k,), "p_examine", f"an array of shape ({k},)",
              _Plain(f"shape {theta.shape}"))
        bad = ~((theta >= 0.0) & (theta <= 1.0))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"p_examine must be in [0, 1], got {float(theta[j])!r} "
                              f"(rank {j + 1})")
        check(theta.max() > 0.0, "p_examine", "positive at some rank",
              _Plain("all zeros"))

    out = {}
    n = slates.shape[0]
    for name in estimators:
        weights, violations = _weights(name, slates, users, logging_p_rank,
                                       target_p_rank, theta)
        contributions = np.einsum("vk,vk->v", weights, clicks)
        value = float(contributions.mean())
        if n > 1:
            se = float(contributions.std(ddof=1)) / math.sqrt(n)
        else:
            se = math.inf
        flat = weights.ravel()
        total = float(flat.sum())
        if total > 0.0:
            top = max(1, math.ceil(_TOP_SHARE * flat.size))
            largest = np.partition(flat, flat.size - top)[flat.size - top:]
            ess = total**2 / float(np.dot(flat, flat))
            top_share = float(largest.sum()) / total
        else:
            ess = top_share = 0.0
        out[name] = SlateEstimate(value, se, value - _Z95 * se, value + _Z95 * se, n,
                                  ess, float(flat.max()), top_share, violations)
    return out


def estimate_slate_value(estimator: str, slates: Any, clicks: Any, users: Any,
                         logging_p_rank: Any, target_p_rank: Any,
                         p_examine: Any = None) -> SlateEstimate:
    """One slate estimator by name; arguments as in ``estimate_slate_values``."""
    check(isinstance(estimator, str), "estimator",
          "one of " + ", ".join(SLATE_ESTIMATORS), estimator)
    return estimate_slate_values([estimator], slates, clicks, users, logging_p_rank,
                                 target_p_rank, p_examine)[estimator]


def iips(slates: Any, clicks: Any, users: Any, logging_p_rank: Any,
         target_p_rank: Any) -> SlateEstimate:
    """Independent-item IPS ``iips``:

        Vhat = (1/n) sum_v sum_k c_vk p_rank_pi(u_v, s_vk, k) / p_rank_mu(u_v, s_vk, k),

    c = ``clicks``, s = ``slates``, u = ``users``, p_rank_pi = ``target_p_rank``,
    p_rank_mu = ``logging_p_rank``. Unbiased when the expected click on an
    item depends only on (user, item, rank), as under the position-based
    model, and p_rank_mu > 0 wherever p_rank_pi > 0; biased under the cascade
    model, where clicks depend on the items above. (Li, Kim and Zitouni,
    "Offline Evaluation of Ranking Policies with Click Models", KDD 2018,
    the item-position model estimator.)
    """
    return estimate_slate_value("iips", slates, clicks, users, logging_p_rank,
                                target_p_rank)


def pbm_ips(slates: Any, clicks: Any, users: Any, logging_p_rank: Any,
            target_p_rank: Any, p_examine: Any) -> SlateEstimate:
    """Position-based item estimator ``pbm-ips``:

        Vhat = (1/n) sum_v sum_k c_vk E_pi(u_v, s_vk) / E_mu(u_v, s_vk),
        E_pi(u, i) = sum_j theta_j p_rank_pi(u, i, j)   (E_mu alike),

    theta = ``p_examine``, other symbols as in ``iips``. Under the PBM the
    expected click of item i at rank k is theta_k alpha_ui, so E[sum of the
    item's weighted clicks] = alpha_ui E_pi(u, i): unbiased when theta is the
    true examination probability and E_mu > 0 wherever E_pi > 0, with weights
    pooled over ranks (smaller than ``iips``'s). Biased under the cascade
    model and when theta is wrong. (Li, Kim and Zitouni, KDD 2018, the PBM
    estimator.)
    """
    return estimate_slate_value("pbm-ips", slates, clicks, users, logging_p_rank,
                                target_p_rank, p_examine)
