"""Estimate a fixed prediction's error over the full rating matrix from a biased log.

Setting (Schnabel, Swaminathan, Singh, Chandak and Joachims, "Recommendations as
Treatments: Debiasing Learning and Evaluation", ICML 2016, section 3.1): a
matrix of N cells with fixed predictions rhat_ui and true ratings r_ui, and an
error per cell e_ui = (rhat_ui - r_ui)^2 (MSE) or |rhat_ui - r_ui| (MAE), see
``estimators.metrics.cell_errors``. The target is the full-matrix mean error

    R = (1/N) sum_{all u,i} e_ui.

Each cell is observed (O_ui = 1) independently with probability p_ui =
``p_observe``, and only the errors at observed cells are known. Three
estimators of R, each from the errors and propensities at the observed cells:

- ``naive``: (1/n) sum_obs e, n = sum O. Biased whenever the observation
  probability depends on the error (missing not at random); its exact
  expectation is ``naive_expectation``.
- ``ips``: (1/N) sum_obs e / p (Horvitz and Thompson, JASA 1952). Unbiased
  when p is the true propensity and p > 0 in every cell; its variance is
  ``ips_variance``.
- ``snips``: sum_obs (e / p) / sum_obs (1 / p), the self-normalised (ratio)
  estimator (Hajek 1971; Swaminathan and Joachims, NeurIPS 2015). Consistent
  as N grows but biased at finite N; often of lower variance than IPS.

Every estimate comes with a standard error, a normal 95% interval, the number
of observed cells n, the Kish effective sample size (sum w)^2 / sum w^2 of the
importance weights w = 1/p, and the largest weight.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from estimators.metrics import (
    _as_1d,
    _check_finite,
    _check_same_length,
    _Plain,
)
from sim.config import ConfigError, check

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "estimate_error",
    "ips_variance",
    "naive_expectation",
]

ESTIMATORS = ("naive", "ips", "snips")

# Two-sided 95% quantile of the standard normal.
_Z95 = 1.959963984540054


class Estimate(NamedTuple):
    """An estimate of the full-matrix mean error and its uncertainty.

    Attributes:
        value: the point estimate.
        se: its standard error (``math.inf`` where it is undefined, see
            ``estimate_error``).
        ci_low, ci_high: value -/+ 1.96 se, the normal 95% interval.
        n: number of observed cells used.
        ess: Kish effective sample size (sum w)^2 / sum w^2, w = 1/p
            (n for ``naive``, which weighs every cell alike).
        max_weight: the largest importance weight max 1/p (1 for ``naive``).
    """

    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    ess: float
    max_weight: float


def _check_propensity(propensity: Any, name: str = "propensity") -> np.ndarray:
    """Return ``propensity`` as a 1-D array after refusing values outside (0, 1]."""
    propensity = _as_1d(propensity, name)
    bad = ~((propensity > 0.0) & (propensity <= 1.0))  # NaN is bad too
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{name} must be in (0, 1], got {float(propensity[j])} (index {j})"
        )
    return propensity


def _check_errors(errors: Any, name: str = "errors") -> np.ndarray:
    errors = _as_1d(errors, name)
    _check_finite(errors, name)
    return errors


def estimate_error(
    errors: Any,
    propensity: Any,
    n_cells: int,
    estimator: str,
) -> Estimate:
    """Estimate the full-matrix mean error R = (1/N) sum_all e from observed cells.

    With e_j the error and p_j the observation propensity of observed cell j
    (j = 1..n), N = ``n_cells`` and w_j = 1 / p_j:

    - ``naive``:  Rhat = (1/n) sum_j e_j, with the i.i.d. standard error
      se^2 = s^2 / n, s^2 the sample variance of e (n - 1 in the
      denominator). It describes the spread around E[e | observed], not
      around R: under selection that depends on the error the interval
      misses R however large n grows. ``propensity`` is not used and may
      be None.
    - ``ips``:  Rhat = (1/N) sum_j w_j e_j. Unbiased for R when p is the
      true propensity and positive in every cell. Its Horvitz-Thompson
      variance (1/N^2) sum_all e^2 (1 - p) / p is estimated without bias by
      se^2 = (1/N^2) sum_j e_j^2 (1 - p_j) / p_j^2.
    - ``snips``:  Rhat = sum_j w_j e_j / sum_j w_j. Consistent, biased at
      finite N (the bias is of order 1/N). Delta-method standard error of
      the ratio: se^2 = sum_j w_j^2 (e_j - Rhat)^2 (1 - p_j) / (sum_j w_j)^2.
      ``n_cells`` is not needed for the value and is only checked.

    The per-cell contributions c_j (Rhat = sum_j c_j) are computed once and
    the value, the standard error and the interval all come from them. With
    a single observed cell the naive and SNIPS standard errors are undefined
    and reported as ``math.inf``, so the interval is (-inf, inf).

    Args:
        errors: (n,) errors e_j at the observed cells (finite).
        propensity: (n,) p_observe at the same cells, in (0, 1].
        n_cells: N, the number of cells in the full matrix (>= n).
        estimator: one of ``ESTIMATORS``.

    Returns:
        An ``Estimate``.
    """
    check(estimator in ESTIMATORS, "estimator", "one of " + ", ".join(ESTIMATORS),
          estimator)
    errors = _check_errors(errors)
    check(errors.size > 0, "errors", "non-empty (at least one observed cell)",
          _Plain("0 cells"))
    if propensity is None and estimator == "naive":
        propensity = np.ones_like(errors)
    check(propensity is not None, "propensity",
          f"an array of p_observe for estimator {estimator!r}", None)
    propensity = _check_propensity(propensity)
    _check_same_length(propensity, "propensity", errors, "errors")
    n = errors.size
    ok = isinstance(n_cells, (int, np.integer)) and not isinstance(n_cells, bool)
    check(ok and n_cells >= n, "n_cells",
          f"an integer >= the number of observed cells ({n})", n_cells)

    # One array of per-cell contributions c_j with value = sum_j c_j, and the
    # per-cell variance factor of the linearised estimator.
    if estimator == "naive":
        weight = np.ones_like(errors)
        contributions = errors / n
        value = float(contributions.sum())
        spread = (contributions - value / n) ** 2
        var = float(spread.sum()) * n / (n - 1) if n > 1 else math.inf
    elif estimator == "ips":
        weight = 1.0 / propensity
        contributions = weight * errors / n_cells
        value = float(contributions.sum())
        var = float((contributions**2 * (1.0 - propensity)).sum())
    else:  # snips
        weight = 1.0 / propensity
        total_weight = weight.sum()
        contributions = weight * errors / total_weight
        value = float(contributions.sum())
        residual = contributions - weight * value / total_weight
        var = float((residual**2 * (1.0 - propensity)).sum()) if n > 1 else math.inf

    se = math.sqrt(var)
    ess = float(weight.sum() ** 2 / (weight**2).sum())
    return Estimate(
        value=value,
        se=se,
        ci_low=value - _Z95 * se,
        ci_high=value + _Z95 * se,
        n=int(n),
        ess=ess,
        max_weight=float(weight.max()),
    )


def _check_full(errors_all: Any, p_all: Any) -> tuple[np.ndarray, np.ndarray]:
    errors_all = _check_errors(errors_all, "errors_all")
    check(errors_all.size > 0, "errors_all", "non-empty (at least one cell)",
          _Plain("0 cells"))
    p_all = _check_propensity(p_all, "p_all")
    _check_same_length(p_all, "p_all", errors_all, "errors_all")
    return errors_all, p_all


def ips_variance(errors_all: Any, p_all: Any) -> float:
    """Exact variance of the IPS estimate under independent Bernoulli observation.

    Var[Rhat_IPS] = (1/N^2) sum_all e^2 (1 - p) / p   (Horvitz-Thompson),

    counting the draw with no observed cell (where IPS is 0) like any other.

    Args:
        errors_all: (N,) errors e of every cell of the matrix.
        p_all: (N,) observation propensities p of every cell, in (0, 1].
    """
    errors_all, p_all = _check_full(errors_all, p_all)
    n_cells = errors_all.size
    return float((errors_all**2 * (1.0 - p_all) / p_all).sum() / n_cells**2)


def naive_expectation(errors_all: Any, p_all: Any) -> float:
    """Exact E[naive | at least one cell observed] under Bernoulli observation.

    With O_i ~ Bernoulli(p_i) independent and S = sum_i O_i,

        E[ sum_i O_i e_i / S | S > 0 ]
            = sum_i e_i p_i E[1 / (1 + S_-i)] / P(S > 0),

    where S_-i is the Poisson-binomial count of the cells other than i and
    P(S > 0) = 1 - prod_i (1 - p_i). The distribution of S_-i comes from a
    dynamic programme over prefixes and suffixes of the cells: with A_i the
    distribution of the count among cells < i and B_i among cells > i,
    E[1 / (1 + S_-i)] = sum_{a, b} A_i[a] B_i[b] / (1 + a + b). Memory is
    O(N^2) and time O(N^3) in one matrix product, which is meant for N up
    to a few thousand cells.

    Args:
        errors_all: (N,) errors e of every cell of the matrix.
        p_all: (N,) observation propensities p of every cell, in (0, 1].
    """
    errors_all, p_all = _check_full(errors_all, p_all)
    n_cells = errors_all.size

    # prefix[k] = distribution of the count among cells 0..k-1 (k = 0..N).
    prefix = np.zeros((n_cells + 1, n_cells + 1))
    prefix[0, 0] = 1.0
    for k, p in enumerate(p_all):
        prefix[k + 1] = prefix[k] * (1.0 - p)
        prefix[k + 1, 1:] += prefix[k, :-1] * p
    # suffix[k] = distribution of the count among cells k..N-1 (k = 0..N).
    suffix = np.zeros((n_cells + 1, n_cells + 1))
    suffix[n_cells, 0] = 1.0
    for k in range(n_cells - 1, -1, -1):
        p = p_all[k]
        suffix[k] = suffix[k + 1] * (1.0 - p)
        suffix[k, 1:] += suffix[k + 1, :-1] * p

    counts = np.arange(n_cells + 1)
    inverse = 1.0 / (1.0 + counts[:, None] + counts[None, :])
    # E[1/(1+S_-i)] for every i: prefix over cells < i, suffix over cells > i.
    inverse_count = ((prefix[:-1] @ inverse) * suffix[1:]).sum(axis=1)

    p_any = -math.expm1(float(np.log1p(-p_all).sum())) if (p_all < 1).all() else 1.0
    return float((errors_all * p_all * inverse_count).sum() / p_any)
