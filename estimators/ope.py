"""Off-policy evaluation of a target policy from logged bandit feedback.

Setting (one action per round). Round i = 1..n shows context x_i (a user), the
logging policy mu draws one action a_i ~ mu(. | x_i) out of A, and the reward
r_i is observed for that action only. The quantity estimated is the value of a
target policy pi,

    V(pi) = (1/n) sum_i sum_a pi(a | x_i) q(x_i, a),   q(x, a) = E[r | x, a],

its expected reward on the logged contexts (over the context distribution when
the contexts are i.i.d.). Importance weights are w_i = pi(a_i | x_i) / mu(a_i |
x_i) and a reward model gives predictions qhat(x_i, a) for every action.

Estimators (``OPE_ESTIMATORS``; one function each, formulas in their docstrings):
``dm`` (direct method), ``ips``, ``snips``, ``ips-cap``, ``dr``, ``sndr`` and
``switch-dr``. All take the same full arrays, so they run on anyone's own logs
without the simulator:

- ``target`` (n, A): pi(a | x_i) for every round and action (rows sum to 1);
- ``actions`` (n,): the logged action ids a_i in [0, A);
- ``rewards`` (n,): the observed rewards r_i;
- ``logging``: either (n,) the logging probability mu(a_i | x_i) of each logged
  action, or (n, A) the full logging distribution (rows sum to 1), which also
  lets the estimators count support violations;
- ``reward_predictions`` (n, A): qhat(x_i, a) for every round and action (for
  ``dm``, ``dr``, ``sndr``, ``switch-dr``), for example from
  ``cross_fit_rewards``.

The estimators gather ``target`` and ``reward_predictions`` at the logged
actions themselves, so every (n, A) array must have one row per logged round:
arrays built for other rows are refused by their shape. Per-round
contributions are computed once; the value, the standard error and the normal
95% interval all come from them (the delta method for the self-normalised
forms). Every estimate carries its diagnostics (see ``OpeEstimate``).

Standard errors are i.i.d. standard errors over rounds (contexts, actions and
rewards all random). Against the value on the logged contexts they err on the
safe side by the context spread Var_x(V(x)) / n, small next to the reward and
action noise in typical logs.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from estimators.metrics import _Plain
from sim.config import ConfigError, check, check_range

__all__ = [
    "OPE_ESTIMATORS",
    "OpeEstimate",
    "cross_fit_rewards",
    "direct_method",
    "doubly_robust",
    "estimate_policy_value",
    "estimate_policy_values",
    "ips",
    "ips_cap",
    "sndr",
    "snips",
    "switch_dr",
]

OPE_ESTIMATORS = ("dm", "ips", "snips", "ips-cap", "dr", "sndr", "switch-dr")
_NEEDS_MODEL = ("dm", "dr", "sndr", "switch-dr")

_Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
_ROW_SUM_TOL = 1e-6  # how far a probability row may sum from 1
_TOP_SHARE = 0.01  # the "top 1%" of samples in the weight-concentration diagnostic


class OpeEstimate(NamedTuple):
    """A policy-value estimate, its uncertainty and its diagnostics.

    Attributes:
        value: the point estimate of V(pi).
        se: its standard error (``math.inf`` with a single round).
        ci_low, ci_high: value -/+ 1.96 se, the normal 95% interval.
        n: number of logged rounds.
        ess: Kish effective sample size (sum w)^2 / sum w^2 of the weights the
            estimator applies (after a cap or a switch; 0 if they are all 0).
            For ``dm``, which uses no weights, the plain weights pi / mu of
            the log (or None when no logging probabilities were given).
        max_weight: the largest weight applied (same convention).
        top_share: share of the total weight held by the top 1% of rounds
            (the ceil(n / 100) largest weights; 0 if all weights are 0).
        n_capped: how many rounds' weights the cap changed (``ips-cap``) or
            the switch sent to the reward model (``switch-dr``); 0 otherwise.
        support_violations: number of (round, action) pairs with pi > 0 and
            mu = 0, where the full logging distribution was given; None
            (not available) when only the logged actions' probabilities were.
        threshold: the weight cap (``ips-cap``) or the switch threshold tau
            (``switch-dr``) used; None for the other estimators.
    """

    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    ess: float | None
    max_weight: float | None
    top_share: float | None
    n_capped: int
    support_violations: int | None
    threshold: float | None


class _Log(NamedTuple):
    """Validated inputs, with what several estimators share computed once."""

    n: int
    weights: np.ndarray | None  # (n,) w_i = pi(a_i|x_i) / mu(a_i|x_i)
    rewards: np.ndarray  # (n,)
    direct: np.ndarray | None  # (n,) sum_a pi(a|x_i) qhat(x_i, a)
    residual: np.ndarray | None  # (n,) r_i - qhat(x_i, a_i)
    support_violations: int | None
    plain_diagnostics: list  # the diagnostics of ``weights``, once computed


# ------------------------------------------------------------------ validation


def _where(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(j) for j in np.argwhere(mask)[0])


def _check_probability_rows(table: np.ndarray, name: str) -> None:
    """Entries >= 0 and each row summing to 1 (this also refuses NaN and inf)."""
    total = table @ np.ones(table.shape[1])  # a matrix-vector product: fast sums
    bad = ~(np.abs(total - 1.0) <= _ROW_SUM_TOL)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{name} rows must sum to 1 (within {_ROW_SUM_TOL:g}), "
                          f"got {float(total[row])!r} (row {row})")
    if table.min() < 0.0:
        row, col = _where(table < 0.0)
        raise ConfigError(f"{name} must be >= 0, got {float(table[row, col])!r} "
                          f"(row {row}, action {col})")


def _as_table(values: Any, name: str, shape: tuple[int, int] | None) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if shape is None:
        check(table.ndim == 2 and table.shape[0] >= 1 and table.shape[1] >= 1, name,
              "an (n, A) array with n >= 1 rounds and A >= 1 actions",
              _Plain(f"shape {table.shape}"))
    else:
        check(table.shape == shape, name, f"of shape (n, A) = {shape} like target",
              _Plain(f"shape {table.shape}"))
    return table


def _as_rounds(values: Any, name: str, n: int) -> np.ndarray:
    array = np.asarray(values)
    check(array.ndim == 1 and array.shape[0] == n, name,
          f"a 1-D array of one entry per round (n = {n}, the rows of target)",
          _Plain(f"shape {array.shape}"))
    return array


def _prepare(target: Any, actions: Any, rewards: Any, logging: Any,
             reward_predictions: Any, need_model: bool, need_logging: bool) -> _Log:
    """Refuse bad input (naming the argument, the range and the value) and
    gather everything at the logged actions."""
    target = _as_table(target, "target", None)
    n, n_actions = target.shape
    _check_probability_rows(target, "target")

    actions = _as_rounds(actions, "actions", n)
    check(np.issubdtype(actions.dtype, np.integer), "actions", "integer action ids",
          _Plain(f"dtype {actions.dtype}"))
    out = (actions < 0) | (actions >= n_actions)
    if out.any():
        j = int(np.flatnonzero(out)[0])
        raise ConfigError(f"actions must be in [0, {n_actions - 1}], got "
                          f"{int(actions[j])} (round {j})")

    rewards = _as_rounds(rewards, "rewards", n).astype(np.float64, copy=False)
    bad = ~np.isfinite(rewards)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"rewards must be finite, got {float(rewards[j])!r} "
                          f"(round {j})")

    rounds = np.arange(n)
    weights = violations = None
    if logging is None:
        check(not need_logging, "logging",
              "the logging probabilities, (n,) at the logged actions or (n, A)",
              None)
    else:
        logging = np.asarray(logging, dtype=np.float64)
        if logging.ndim == 2:
            logging = _as_table(logging, "logging", (n, n_actions))
            _check_probability_rows(logging, "logging")
            propensity = logging[rounds, actions]
            violations = int(np.count_nonzero((target > 0.0) & (logging == 0.0)))
        else:
            propensity = _as_rounds(logging, "logging", n)
        bad = ~((propensity > 0.0) & (propensity <= 1.0))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                "logging probability of the logged action must be in (0, 1], got "
                f"{float(propensity[j])!r} (round {j}, action {int(actions[j])})")
        weights = target[rounds, actions] / propensity

    direct = residual = None
    if reward_predictions is None:
        check(not need_model, "reward_predictions",
              "an (n, A) array of predicted rewards for this estimator", None)
    else:
        reward_predictions = _as_table(reward_predictions, "reward_predictions",
                                       (n, n_actions))
        direct = np.einsum("ij,ij->i", target, reward_predictions)
        # A NaN or inf anywhere in a row makes its direct term non-finite
        # (0 * inf is NaN), so one check on (n,) covers the (n, A) array.
        if not np.isfinite(direct).all():
            row, col = _where(~np.isfinite(reward_predictions))
            raise ConfigError("reward_predictions must be finite, got "
                              f"{float(reward_predictions[row, col])!r} "
                              f"(row {row}, action {col})")
        residual = rewards - reward_predictions[rounds, actions]
    return _Log(n, weights, rewards, direct, residual, violations, [])


# ------------------------------------------------------------------- kernels


def _diagnostics(weights: np.ndarray | None) -> tuple[Any, Any, Any]:
    """(ess, max_weight, top_share) of the applied weights (n,)."""
    if weights is None:
        return None, None, None
    total = float(weights.sum())
    if total <= 0.0:
        return 0.0, float(weights.max()), 0.0
    n = weights.size
    top = max(1, math.ceil(_TOP_SHARE * n))
    largest = np.partition(weights, n - top)[n - top:]
    ess = total**2 / float(np.dot(weights, weights))
    return ess, float(weights.max()), float(largest.sum()) / total


def _result(value: float, influence: np.ndarray, applied: np.ndarray | None,
            log: _Log, n_capped: int = 0, threshold: float | None = None
            ) -> OpeEstimate:
    """Build the estimate from the centred per-round influence terms psi_i.

    se^2 = sum_i psi_i^2 / (n (n - 1)); for a mean of terms t_i, psi_i is
    t_i - mean(t) and this is the usual s^2 / n.
    """
    n = log.n
    if n > 1:
        se = math.sqrt(float(np.dot(influence, influence)) / (n * (n - 1)))
    else:
        se = math.inf
    if applied is log.weights:  # shared by several estimators: computed once
        if not log.plain_diagnostics:
            log.plain_diagnostics.append(_diagnostics(applied))
        ess, max_weight, top_share = log.plain_diagnostics[0]
    else:
        ess, max_weight, top_share = _diagnostics(applied)
    return OpeEstimate(value, se, value - _Z95 * se, value + _Z95 * se, n, ess,
                       max_weight, top_share, int(n_capped), log.support_violations,
                       threshold)


def _mean_of(terms: np.ndarray, applied: np.ndarray | None, log: _Log,
             n_capped: int = 0, threshold: float | None = None) -> OpeEstimate:
    value = float(terms.mean())
    return _result(value, terms - value, applied, log, n_capped, threshold)


def _self_normalised(corrections: np.ndarray, weights: np.ndarray, name: str
                     ) -> tuple[float, np.ndarray]:
    """rho = sum w c / sum w and its influence terms w (c - rho) / mean(w)."""
    total = float(weights.sum())
    if not total > 0.0:
        raise ConfigError(
            f"target must give positive probability to at least one logged action "
            f"for {name} (its normaliser sum_i w_i is 0; every weight pi/mu is 0)")
    ratio = float(np.dot(weights, corrections)) / total
    return ratio, weights * (corrections - ratio) * (weights.size / total)


def _switch_threshold(log: _Log, reward_bound: float) -> float:
    """The threshold tau minimising estimated variance + squared bias bound.

    For each candidate tau in {0} and the distinct logged weights, the
    switch-DR terms are t_i = dm_i + 1{w_i <= tau} w_i (r_i - qhat_i); the
    objective is s^2(tau) / n + B(tau)^2, with s^2 the sample variance of the
    terms and B(tau) = reward_bound * (1/n) sum_i w_i 1{w_i > tau}, the
    largest bias the reward model can cause on the target probability mass
    that the switch hands to it (estimated from the log, E_mu[w 1{w > tau}]
    = sum_a pi 1{pi/mu > tau}). All candidates in O(n log n) by prefix sums
    over the weights in increasing order.
    """
    n = log.n
    order = np.argsort(log.weights, kind="stable")
    weights = log.weights[order]
    direct = log.direct[order]
    correction = weights * log.residual[order]

    sum_direct = float(direct.sum())
    sum_direct_sq = float(np.dot(direct, direct))
    # Candidate k keeps the k smallest weights (k = 0..n) in the DR part.
    zero = np.zeros(1)
    sums = sum_direct + np.concatenate([zero, np.cumsum(correction)])
    squares = sum_direct_sq + np.concatenate(
        [zero, np.cumsum(correction * (2.0 * direct + correction))])
    variance = np.maximum(squares - sums**2 / n, 0.0) / max(n - 1, 1) / n
    excluded = float(weights.sum()) - np.concatenate([zero, np.cumsum(weights)])
    bias = reward_bound * np.maximum(excluded, 0.0) / n
    objective = variance + bias**2
    # Only the ends of runs of equal weights are thresholds.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = weights[1:] > weights[:-1]
    objective[~valid] = np.inf
    best = int(np.argmin(objective))
    return 0.0 if best == 0 else float(weights[best - 1])


def _estimate(name: str, log: _Log, weight_cap: Any, switch_threshold: Any,
              reward_bound: float) -> OpeEstimate:
    weights = log.weights
    if name == "dm":
        return _mean_of(log.direct, weights, log)
    if name == "ips":
        return _mean_of(weights * log.rewards, weights, log)
    if name == "ips-cap":
        capped = np.minimum(weights, weight_cap)
        n_capped = int(np.count_nonzero(weights > weight_cap))
        return _mean_of(capped * log.rewards, capped, log, n_capped,
                        float(weight_cap))
    if name == "dr":
        return _mean_of(log.direct + weights * log.residual, weights, log)
    if name == "snips":
        value, influence = _self_normalised(log.rewards, weights, "snips")
        return _result(value, influence, weights, log)
    if name == "sndr":
        ratio, influence = _self_normalised(log.residual, weights, "sndr")
        mean_direct = float(log.direct.mean())
        influence = influence + (log.direct - mean_direct)
        return _result(mean_direct + ratio, influence, weights, log)
    # switch-dr
    tau = (_switch_threshold(log, reward_bound) if switch_threshold is None
           else float(switch_threshold))
    kept = weights <= tau
    applied = np.where(kept, weights, 0.0)
    terms = log.direct + applied * log.residual
    return _mean_of(terms, applied, log, int(np.count_nonzero(~kept)), tau)


def _check_options(names: Sequence[str], weight_cap: Any, switch_threshold: Any,
                   reward_bound: Any) -> None:
    for name in names:
        check(name in OPE_ESTIMATORS, "estimator",
              "one of " + ", ".join(OPE_ESTIMATORS), name)
    number = (int, float, np.integer, np.floating)
    if "ips-cap" in names:
        ok = isinstance(weight_cap, number) and not isinstance(weight_cap, bool)
        ok = ok and weight_cap > 0  # NaN fails; math.inf is allowed (no cap)
        check(ok, "weight_cap", "a number > 0 (math.inf for no cap) for ips-cap",
              weight_cap)
    if switch_threshold is not None:
        ok = isinstance(switch_threshold, number) and not isinstance(
            switch_threshold, bool) and switch_threshold >= 0
        check(ok, "switch_threshold",
              "None (the data-driven rule) or a number >= 0 (math.inf: plain DR)",
              switch_threshold)
    check_range(reward_bound, "reward_bound", 0.0, low_open=True)


# ---------------------------------------------------------------- public API


def estimate_policy_values(
    estimators: Sequence[str],
    target: Any,
    actions: Any,
    rewards: Any,
    logging: Any = None,
    reward_predictions: Any = None,
    *,
    weight_cap: float | None = None,
    switch_threshold: float | None = None,
    reward_bound: float = 1.0,
) -> dict[str, OpeEstimate]:
    """Several estimators on one log, validating and gathering the arrays once.

    Args:
        estimators: names from ``OPE_ESTIMATORS``.
        target: (n, A) pi(a | x_i), rows summing to 1.
        actions: (n,) integer logged actions a_i in [0, A).
        rewards: (n,) finite observed rewards r_i.
        logging: (n,) mu(a_i | x_i) in (0, 1], or the full (n, A) logging
            distribution (rows summing to 1, positive at the logged actions).
            May be None only when every estimator is ``dm``.
        reward_predictions: (n, A) finite qhat(x_i, a); required by ``dm``,
            ``dr``, ``sndr`` and ``switch-dr``.
        weight_cap: the cap c of ``ips-cap`` (> 0, ``math.inf`` for none);
            ignored by the others.
        switch_threshold: tau of ``switch-dr`` (>= 0); None chooses it by the
            rule of ``switch_dr``.
        reward_bound: largest possible |r - qhat| (> 0), used only by the
            switch-DR threshold rule; 1 for rewards and predictions in [0, 1].

    Returns:
        A dict from estimator name to ``OpeEstimate``, in the order asked.
    """
    check(not isinstance(estimators, str) and len(estimators) > 0, "estimators",
          "a non-empty list of names from " + ", ".join(OPE_ESTIMATORS), estimators)
    names = tuple(estimators)
    _check_options(names, weight_cap, switch_threshold, reward_bound)
    need_model = any(name in _NEEDS_MODEL for name in names)
    need_logging = any(name != "dm" for name in names)
    log = _prepare(target, actions, rewards, logging, reward_predictions,
                   need_model, need_logging)
    return {name: _estimate(name, log, weight_cap, switch_threshold, reward_bound)
            for name in names}


def estimate_policy_value(
    estimator: str,
    target: Any,
    actions: Any,
    rewards: Any,
    logging: Any = None,
    reward_predictions: Any = None,
    *,
    weight_cap: float | None = None,
    switch_threshold: float | None = None,
    reward_bound: float = 1.0,
) -> OpeEstimate:
    """One estimator by name; arguments as in ``estimate_policy_values``."""
    check(isinstance(estimator, str), "estimator",
          "one of " + ", ".join(OPE_ESTIMATORS), estimator)
    return estimate_policy_values(
        [estimator], target, actions, rewards, logging, reward_predictions,
        weight_cap=weight_cap, switch_threshold=switch_threshold,
        reward_bound=reward_bound)[estimator]


def direct_method(target: Any, actions: Any, rewards: Any,
                  reward_predictions: Any, logging: Any = None) -> OpeEstimate:
    """Direct method ``dm``: Vhat = (1/n) sum_i sum_a pi(a|x_i) qhat(x_i, a).

    pi = ``target``, qhat = ``reward_predictions``; ``actions`` and
    ``rewards`` are only checked, ``logging`` (optional) only feeds the
    diagnostics. Unbiased only when qhat equals q on the logged contexts; its
    bias is (1/n) sum_i sum_a pi (qhat - q), whatever n. Its se is the spread
    of the per-context terms over contexts, which says nothing about that
    bias. (Dudik, Langford and Li, "Doubly Robust Policy Evaluation and
    Learning", ICML 2011, section 2.)
    """
    return estimate_policy_value("dm", target, actions, rewards, logging,
                                 reward_predictions)


def ips(target: Any, actions: Any, rewards: Any, logging: Any) -> OpeEstimate:
    """Inverse propensity scoring ``ips``: Vhat = (1/n) sum_i w_i r_i.

    w_i = pi(a_i|x_i) / mu(a_i|x_i) with pi = ``target`` gathered at
    ``actions`` and mu = ``logging``, r = ``rewards``. Unbiased when mu is the
    true logging probability and mu > 0 wherever pi > 0 (no support
    violation); its variance grows with E[w^2] (Horvitz and Thompson, JASA
    1952; in this setting Dudik, Langford and Li, ICML 2011).
    """
    return estimate_policy_value("ips", target, actions, rewards, logging)


def snips(target: Any, actions: Any, rewards: Any, logging: Any) -> OpeEstimate:
    """Self-normalised IPS ``snips``: Vhat = sum_i w_i r_i / sum_i w_i.

    Symbols as in ``ips``. Consistent but biased at finite n (the bias is of
    order 1/n); it stays in the range of the rewards and usually has a lower
    variance than IPS. Delta-method standard error: se^2 = sum_i psi_i^2 /
    (n (n - 1)), psi_i = w_i (r_i - Vhat) / mean(w). All-zero weights are
    refused (the ratio is undefined). (Swaminathan and Joachims, "The
    Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015.)
    """
    return estimate_policy_value("snips", target, actions, rewards, logging)


def ips_cap(target: Any, actions: Any, rewards: Any, logging: Any,
            weight_cap: float) -> OpeEstimate:
    """IPS with a weight cap ``ips-cap``: Vhat = (1/n) sum_i min(w_i, c) r_i.

    c = ``weight_cap`` (> 0; ``math.inf`` gives IPS exactly), other symbols as
    in ``ips``. Biased (downwards for non-negative rewards) whenever the cap
    binds on an action pi favours; the cap trades that bias for a variance
    bounded by c^2 (Ionides, "Truncated Importance Sampling", JCGS 2008;
    Bottou et al., "Counterfactual Reasoning and Learning Systems", JMLR
    2013). ``n_capped`` counts the rounds with w_i > c.
    """
    return estimate_policy_value("ips-cap", target, actions, rewards, logging,
                                 weight_cap=weight_cap)


def doubly_robust(target: Any, actions: Any, rewards: Any, logging: Any,
                  reward_predictions: Any) -> OpeEstimate:
    """Doubly robust ``dr``: Vhat = (1/n) sum_i [dm_i + w_i (r_i - qhat(x_i, a_i))].

    dm_i = sum_a pi(a|x_i) qhat(x_i, a), qhat = ``reward_predictions``, other
    symbols as in ``ips``. Unbiased when mu is the true logging probability
    (any qhat fixed independently of round i's own reward, for example
    cross-fitted by ``cross_fit_rewards``), or when qhat = q; its variance is
    below IPS's when qhat is close to q. (Dudik, Langford and Li, "Doubly
    Robust Policy Evaluation and Learning", ICML 2011.)
    """
    return estimate_policy_value("dr", target, actions, rewards, logging,
                                 reward_predictions)


def sndr(target: Any, actions: Any, rewards: Any, logging: Any,
         reward_predictions: Any) -> OpeEstimate:
    """Self-normalised DR ``sndr``:

        Vhat = (1/n) sum_i dm_i + sum_i w_i (r_i - qhat_i) / sum_i w_i,

    symbols as in ``doubly_robust``, qhat_i = qhat(x_i, a_i). Consistent, biased
    at finite n like SNIPS. Delta-method se from psi_i = (dm_i - mean(dm)) +
    w_i (r_i - qhat_i - rho) / mean(w), rho the ratio. All-zero weights are
    refused. (Kallus and Uehara, "Intrinsically Efficient, Stable, and Bounded
    Off-Policy Evaluation for Reinforcement Learning", NeurIPS 2019;
    Swaminathan and Joachims, NeurIPS 2015 for the normalisation.)
    """
    return estimate_policy_value("sndr", target, actions, rewards, logging,
                                 reward_predictions)


def switch_dr(target: Any, actions: Any, rewards: Any, logging: Any,
              reward_predictions: Any, switch_threshold: float | None = None,
              reward_bound: float = 1.0) -> OpeEstimate:
    """Switch doubly robust ``switch-dr``:

        Vhat = (1/n) sum_i [dm_i + 1{w_i <= tau} w_i (r_i - qhat(x_i, a_i))],

    symbols as in ``doubly_robust``: DR where the weight is at most tau, the
    reward model alone where it is larger. tau = ``switch_threshold``
    (math.inf gives DR, 0 gives DM when every weight is positive). Biased
    where the switch binds and qhat is wrong.

    Threshold rule when ``switch_threshold`` is None: tau minimises the
    estimated MSE s^2(tau)/n + B(tau)^2 over {0} and the distinct logged
    weights, where s^2(tau) is the sample variance of the terms above and
    B(tau) = ``reward_bound`` * (1/n) sum_i w_i 1{w_i > tau} bounds the bias
    on the target mass handed to the model (its expectation is sum_a pi
    1{pi/mu > tau} per context). The se is then computed at the chosen tau
    and ignores the choice. (Wang, Agarwal and Dudik, "Optimal and Adaptive
    Off-policy Evaluation in Contextual Bandits", ICML 2017, section 4.)
    """
    return estimate_policy_value("switch-dr", target, actions, rewards, logging,
                                 reward_predictions,
                                 switch_threshold=switch_threshold,
                                 reward_bound=reward_bound)


# ------------------------------------------------------------- reward model


def cross_fit_rewards(
    actions: Any,
    rewards: Any,
    n_actions: int,
    rng: np.random.Generator,
    n_folds: int = 2,
    features: Any = None,
    l2: float = 1.0,
) -> np.ndarray:
    """Cross-fitted reward predictions qhat (n, A) for ``dm``, ``dr``, ``sndr``.

    The rounds are split at random (``rng``) into ``n_folds`` folds; the rows
    of each fold are predicted by a model fitted on the other folds only, so
    a round's prediction never saw its own reward and DR stays unbiased with
    true propensities (Chernozhukov et al., "Double/debiased machine
    learning", Econometrics Journal 2018).

    The model, per action a, is ridge regression of the centred reward on
    z = [1, features]: qhat(x, a) = m + z' beta_a, beta_a = (Z_a' Z_a + l2
    I)^-1 Z_a' (r_a - m), with m the mean training reward and Z_a, r_a the
    training rounds that took action a. Without ``features`` this is the
    per-action mean shrunk towards m: qhat(a) = (sum_a r + l2 m) / (n_a + l2).
    An action never taken in the training folds is predicted m.

    Args:
        actions: (n,) integer logged actions in [0, n_actions).
        rewards: (n,) finite rewards.
        n_actions: A.
        rng: draws the fold assignment.
        n_folds: K >= 2, at most n.
        features: optional (n, d) finite context features of each round.
        l2: ridge penalty (> 0).

    Returns:
        (n, A) float64 predictions for every round and action.
    """
    ok = isinstance(n_actions, (int, np.integer)) and not isinstance(n_actions, bool)
    check(ok and n_actions >= 1, "n_actions", "an integer >= 1", n_actions)
    actions = np.asarray(actions)
    check(actions.ndim == 1 and actions.size >= 2, "actions",
          "a 1-D array of at least 2 rounds", _Plain(f"shape {actions.shape}"))
    n = actions.size
    check(np.issubdtype(actions.dtype, np.integer), "actions", "integer action ids",
          _Plain(f"dtype {actions.dtype}"))
    out = (actions < 0) | (actions >= n_actions)
    if out.any():
        j = int(np.flatnonzero(out)[0])
        raise ConfigError(f"actions must be in [0, {n_actions - 1}], got "
                          f"{int(actions[j])} (round {j})")
    rewards = _as_rounds(rewards, "rewards", n).astype(np.float64)
    if not np.isfinite(rewards).all():
        j = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise ConfigError(f"rewards must be finite, got {float(rewards[j])!r} "
                          f"(round {j})")
    ok = isinstance(n_folds, (int, np.integer)) and not isinstance(n_folds, bool)
    check(ok and 2 <= n_folds <= n, "n_folds", f"an integer in [2, {n}]", n_folds)
    check_range(l2, "l2", 0.0, low_open=True)
    if features is None:
        design = np.ones((n, 1))
    else:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim == 1:
            features = features[:, None]
        check(features.ndim == 2 and features.shape[0] == n, "features",
              f"an (n, d) array with n = {n} rows", _Plain(f"shape {features.shape}"))
        if not np.isfinite(features).all():
            row, col = _where(~np.isfinite(features))
            raise ConfigError(f"features must be finite, got "
                              f"{float(features[row, col])!r} "
                              f"(row {row}, column {col})")
        design = np.column_stack([np.ones(n), features])

    fold = rng.permutation(n) % n_folds
    dim = design.shape[1]
    predictions = np.empty((n, n_actions))
    eye = l2 * np.eye(dim)
    for k in range(n_folds):
        train = fold != k
        z, a, r = design[train], actions[train], rewards[train]
        mean = float(r.mean())
        # Per-action Gram matrices and moments, one bincount per entry.
        gram = np.empty((n_actions, dim, dim))
        for p in range(dim):
            for q in range(p, dim):
                gram[:, p, q] = gram[:, q, p] = np.bincount(
                    a, weights=z[:, p] * z[:, q], minlength=n_actions)
        moment = np.stack([np.bincount(a, weights=z[:, p] * (r - mean),
                                       minlength=n_actions) for p in range(dim)],
                          axis=1)
        beta = np.linalg.solve(gram + eye, moment[..., None])[..., 0]  # (A, dim)
        held = fold == k
        predictions[held] = mean + design[held] @ beta.T
    return predictions
