"""Logged bandit feedback from a world, and the exact value of any policy.

The off-policy-evaluation setting (`estimators.ope`): round i = 1..n, context
x_i = a user, the logging policy mu draws one action a_i out of A, and the
reward r_i ~ Bernoulli(q(x_i, a_i)) is logged. The expected reward table q
(U, A) comes from the world: for actions = a set of items, q(u, a) = gamma of
(u, item a) from `sim.relevance` (the click probability of an examined item,
``gamma[:, items]``), or any table of probabilities a user brings.

The truth to score against is the value of a target policy pi on the logged
contexts,

    V(pi) = (1/n) sum_i sum_a pi(a | x_i) q(x_i, a),

exact (``policy_value``). ``linear_moments`` gives the exact mean and variance,
given the logged contexts, of every estimator that is a mean of per-round
terms dm_i + w_i (r_i - qhat(x_i, a_i)) with weights possibly capped (IPS,
capped IPS, DR): the closed forms the tests compare with.

Slates (`estimators.ope_slate`): the value of a slate policy under the
position-based model is the expected number of clicks per visit,

    V = (1/n) sum_v sum_i sum_k theta_k p_rank(u_v, i, k) alpha(u_v, i),

with theta_k the examination probability of rank k and alpha the click
probability of an examined item (gamma for clicks drawn per impression with
``click.p_relevant = 1``, ``p_nonrelevant = 0``), exact (``slate_value_pbm``);
under the cascade model the expected clicks of a slate s are 1 - prod_k (1 -
alpha(u, s_k)), averaged over the policy's slates by Monte Carlo with its
standard error (``slate_value_cascade``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.config import ConfigError, check, check_range
from sim.exposure import SlatePolicy

__all__ = [
    "BanditLog",
    "linear_moments",
    "policy_value",
    "simulate_bandit",
    "slate_value_cascade",
    "slate_value_pbm",
    "softmax_policy",
]


class _Plain(str):
    """A description shown as is in an error message (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _table(values: Any, name: str, shape: tuple[int, ...] | None = None
           ) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if shape is None:
        check(table.ndim == 2 and min(table.shape) >= 1, name,
              "a 2-D array with at least one row and column",
              _Plain(f"shape {table.shape}"))
    else:
        check(table.shape == shape, name, f"an array of shape {shape}",
              _Plain(f"shape {table.shape}"))
    bad = ~np.isfinite(table)
    if bad.any():
        where = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"{name} must be finite, got {float(table[where])!r} "
                          f"(index {where})")
    return table


def _probabilities(values: Any, name: str, shape: tuple[int, ...] | None = None,
                   rows: bool = False) -> np.ndarray:
    """Entries in [0, 1]; with ``rows``, each row summing to 1 within 1e-6."""
    table = _table(values, name, shape)
    bad = (table < 0.0) | (table > 1.0)
    if bad.any():
        where = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"{name} must be in [0, 1], got {float(table[where])!r} "
                          f"(index {where})")
    if rows:
        total = table.sum(axis=-1)
        bad = ~(np.abs(total - 1.0) <= 1e-6)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{name} rows must sum to 1 (within 1e-06), got "
                              f"{float(total[row])!r} (row {row})")
    return table


def softmax_policy(scores: Any, temperature: float, epsilon: float = 0.0
                   ) -> np.ndarray:
    """pi(a | x) = (1 - eps) softmax(scores / T)_a + eps / A, shape (rows, A).

    ``scores`` (rows, A) finite; T = ``temperature`` > 0; eps = ``epsilon`` in
    [0, 1] is the share of uniform exploration, which bounds the importance
    weight of any target policy against it by A / eps.
    """
    scores = _table(scores, "scores")
    check_range(temperature, "temperature", 0.0, low_open=True)
    check_range(epsilon, "epsilon", 0.0, 1.0)
    logits = scores / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)
    return (1.0 - epsilon) * soft + epsilon / scores.shape[1]


@dataclass(frozen=True, eq=False)
class BanditLog:
    """A logged bandit data set (n rounds, A actions).

    contexts (n,) int64 user ids; actions (n,) int64; rewards (n,) float64 in
    {0, 1}; logging (n, A) float64, the full logging distribution of each
    round (the system knows its own policy). ``propensity`` gathers it at the
    logged actions.
    """

    contexts: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    logging: np.ndarray

    @property
    def propensity(self) -> np.ndarray:
        """mu(a_i | x_i) (n,)."""
        return self.logging[np.arange(self.actions.size), self.actions]


def simulate_bandit(
    expected_reward: Any,
    logging: Any,
    n_rounds: int,
    rng: np.random.Generator,
    contexts: Any = None,
) -> BanditLog:
    """Draw a log: contexts uniform over users (or given), a_i ~ mu, r_i ~ Bernoulli.

    Args:
        expected_reward: (U, A) q(u, a) in [0, 1].
        logging: (U, A) the logging policy mu(a | u), rows summing to 1.
        n_rounds: n >= 1 (ignored when ``contexts`` is given).
        rng: draws contexts, then actions, then rewards (three child streams,
            so that fixing the contexts leaves the other draws alone).
        contexts: optional (n,) user ids in [0, U) to log on instead of
            uniform draws (to hold the contexts fixed across replicates).

    Returns:
        A ``BanditLog``.
    """
    expected_reward = _probabilities(expected_reward, "expected_reward")
    n_users, n_actions = expected_reward.shape
    logging = _probabilities(logging, "logging", (n_users, n_actions), rows=True)
    context_rng, action_rng, reward_rng = rng.spawn(3)
    if contexts is None:
        ok = isinstance(n_rounds, (int, np.integer)) and not isinstance(n_rounds, bool)
        check(ok and n_rounds >= 1, "n_rounds", "an integer >= 1", n_rounds)
        contexts = context_rng.integers(n_users, size=n_rounds)
    else:
        contexts = np.asarray(contexts)
        ok = contexts.ndim == 1 and contexts.size >= 1
        ok = ok and np.issubdtype(contexts.dtype, np.integer)
        check(ok, "contexts", "a non-empty 1-D array of user ids",
              _Plain(f"{contexts.dtype} array of shape {contexts.shape}"))
        out = (contexts < 0) | (contexts >= n_users)
        if out.any():
            j = int(np.flatnonzero(out)[0])
            raise ConfigError(f"contexts must be in [0, {n_users - 1}], got "
                              f"{int(contexts[j])} (round {j})")
    contexts = contexts.astype(np.int64)
    mu = logging[contexts]
    cumulative = np.cumsum(mu, axis=1)
    draw = action_rng.random(contexts.size) * cumulative[:, -1]
    actions = (cumulative <= draw[:, None]).sum(axis=1)
    actions = np.minimum(actions, n_actions - 1)
    rows = np.arange(contexts.size)
    # Rounding can land a draw on a zero-probability action only at a tie
    # with the cumulative sum; move it to the nearest positive one below.
    zero = mu[rows, actions] <= 0.0
    while zero.any():
        actions[zero] -= 1
        zero = mu[rows, actions] <= 0.0
    q = expected_reward[contexts, actions]
    rewards = (reward_rng.random(contexts.size) < q).astype(np.float64)
    return BanditLog(contexts, actions.astype(np.int64), rewards, mu)


def policy_value(target: Any, expected_reward: Any) -> float:
    """Exact V(pi) = (1/n) sum_i sum_a pi(a | x_i) q(x_i, a).

    ``target`` (n, A) pi on the logged rounds (rows summing to 1) and
    ``expected_reward`` (n, A) q on the same rounds (for a table over users,
    pass ``table[contexts]``).
    """
    target = _probabilities(target, "target", rows=True)
    expected_reward = _table(expected_reward, "expected_reward", target.shape)
    return float(np.einsum("ij,ij->i", target, expected_reward).mean())


def linear_moments(
    target: Any,
    logging: Any,
    expected_reward: Any,
    reward_predictions: Any = None,
    weight_cap: float = math.inf,
) -> tuple[float, float]:
    """Exact mean and variance, given the contexts, of a mean of per-round terms

        t_i = dm_i + w_i (r_i - qhat(x_i, a_i)),   w_i = min(pi/mu, c),

    dm_i = sum_a pi qhat, a_i ~ mu(. | x_i), r_i ~ Bernoulli(q(x_i, a_i)).
    With qhat = 0 (``reward_predictions`` None) this is IPS, with a finite
    c = ``weight_cap`` capped IPS, with qhat given DR. For one round, with
    b = q - qhat and only actions with mu > 0 counted,

        E[t] = dm + sum_a mu w b,
        Var[t] = sum_a mu w^2 (q (1 - q) + b^2) - (sum_a mu w b)^2,

    and the mean over n rounds has the mean of E[t] and (1/n^2) sum Var[t].

    Args:
        target, logging, expected_reward: (n, A) pi, mu (rows summing to 1)
            and q on the logged rounds.
        reward_predictions: optional (n, A) qhat.
        weight_cap: c > 0 (math.inf: no cap).
    """
    target = _probabilities(target, "target", rows=True)
    logging = _probabilities(logging, "logging", target.shape, rows=True)
    q = _probabilities(expected_reward, "expected_reward", target.shape)
    check(weight_cap > 0, "weight_cap", "a number > 0 (math.inf for no cap)",
          weight_cap)
    q_hat = (np.zeros_like(q) if reward_predictions is None
             else _table(reward_predictions, "reward_predictions", target.shape))
    support = logging > 0.0
    weights = np.where(support, target / np.where(support, logging, 1.0), 0.0)
    weights = np.minimum(weights, weight_cap)
    gap = q - q_hat
    shift = (logging * weights * gap).sum(axis=1)
    direct = (target * q_hat).sum(axis=1)
    second = (logging * weights**2 * (q * (1.0 - q) + gap**2)).sum(axis=1)
    n = target.shape[0]
    return float((direct + shift).mean()), float((second - shift**2).sum() / n**2)


# ------------------------------------------------------------------- slates


def _check_users(users: Any, n_users: int) -> np.ndarray:
    users = np.asarray(users)
    ok = users.ndim == 1 and users.size >= 1 and np.issubdtype(users.dtype, np.integer)
    check(ok, "users", "a non-empty 1-D array of user ids",
          _Plain(f"{users.dtype} array of shape {users.shape}"))
    out = (users < 0) | (users >= n_users)
    if out.any():
        j = int(np.flatnonzero(out)[0])
        raise ConfigError(f"users must be in [0, {n_users - 1}], got {int(users[j])} "
                          f"(visit {j})")
    return users


def slate_value_pbm(target_p_rank: Any, attractiveness: Any, p_examine: Any,
                    users: Any) -> float:
    """Exact expected clicks per visit of a slate policy under the PBM.

    V = (1/n) sum_v sum_i sum_k theta_k p_rank(u_v, i, k) alpha(u_v, i).

    Args:
        target_p_rank: (R, I, K) the policy's p_rank table, R = 1 (shared by
            all users) or R = U (``SlatePolicy.p_rank_table()``).
        attractiveness: (U, I) alpha, the click probability of an examined item.
        p_examine: (K,) theta_k.
        users: (n,) the logged visits' users.
    """
    alpha = _probabilities(attractiveness, "attractiveness")
    n_users, n_items = alpha.shape
    table = np.asarray(target_p_rank, dtype=np.float64)
    check(table.ndim == 3 and table.shape[0] in (1, n_users)
          and table.shape[1] == n_items, "target_p_rank",
          f"an (R, {n_items}, K) array with R = 1 or {n_users}",
          _Plain(f"shape {table.shape}"))
    table = _probabilities(table, "target_p_rank", table.shape)
    theta = _probabilities(p_examine, "p_examine", (table.shape[2],))
    users = _check_users(users, n_users)
    exposure = table @ theta  # (R, I): sum_k theta_k p_rank
    per_user = (exposure * alpha).sum(axis=1) if table.shape[0] == n_users else (
        alpha @ exposure[0])
    return float(per_user[users].mean())


def slate_value_cascade(policy: SlatePolicy, attractiveness: Any, users: Any,
                        n_draws: int, rng: np.random.Generator
                        ) -> tuple[float, float]:
    """Expected clicks per visit of a slate policy under the cascade model.

    A slate s shown to user u gets 1 - prod_k (1 - alpha(u, s_k)) clicks in
    expectation (one click at most, scanning from the top). The policy's
    average over slates has no closed form from its marginals, so it is a
    Monte Carlo mean over ``n_draws`` visits: each draw picks a logged visit's
    user uniformly from ``users`` and one slate from ``policy``; the expected
    clicks of each slate are exact, so only the slate draw is random.

    Returns:
        (value, se), se the Monte Carlo standard error.
    """
    alpha = _probabilities(attractiveness, "attractiveness")
    n_users, n_items = alpha.shape
    check(policy.n_items == n_items, "policy", f"a policy over {n_items} items",
          policy.n_items)
    users = _check_users(users, n_users)
    ok = isinstance(n_draws, (int, np.integer)) and not isinstance(n_draws, bool)
    check(ok and n_draws >= 2, "n_draws", "an integer >= 2", n_draws)
    pick_rng, slate_rng = rng.spawn(2)
    drawn = users[pick_rng.integers(users.size, size=n_draws)]
    slates = policy.sample(drawn, slate_rng)
    clicks = 1.0 - np.prod(1.0 - alpha[drawn[:, None], slates], axis=1)
    return float(clicks.mean()), float(clicks.std(ddof=1) / math.sqrt(n_draws))
