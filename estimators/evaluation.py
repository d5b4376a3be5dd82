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

Whole-matrix metric estimation (``estimate_matrix_metric``) takes the full
(U, I) arrays instead: any prediction matrix, the observed mask, the ratings
(read at observed cells only) and p_observe, and estimates MSE, MAE or DCG@K
over the full matrix (``MATRIX_METRICS``) with the three estimators above and
two that also use an imputed value ehat for every cell:

- ``eib`` (error-imputation based; Steck, "Training and Testing of
  Recommender Systems on Data Missing Not at Random", KDD 2010):
  (1/N) [sum_obs e + sum_unobs ehat]. Biased unless the imputation is right
  on the unobserved cells; it does not use propensities for its value.
- ``dr`` (doubly robust; Wang, Zhang, Sun and Qi, "Doubly Robust Joint
  Learning for Recommendation on Data Missing Not at Random", ICML 2019):
  (1/N) sum_all [ehat + O (e - ehat) / p]. Unbiased when p is the true
  propensity, whatever the imputation, and also when the imputation is exact.

DCG@K fits the same frame (Schnabel et al. 2016, section 3.1): each cell has a
value delta_ui = r_ui / log2(1 + rank_u(i)) if rank_u(i) <= K else 0, with the
rank of item i among all items by the user's predictions (1 = best, ties by
item id), and DCG@K = (1/U) sum_u sum_i delta_ui = I * (1/N) sum delta. The
ranks depend only on the predictions, which are known everywhere; only the
ratings are missing.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from estimators.metrics import (
    _as_1d,
    _check_clip,
    _check_finite,
    _check_same_length,
    _Plain,
    cell_errors,
)
from sim.config import ConfigError, check

__all__ = [
    "ESTIMATORS",
    "MATRIX_ESTIMATORS",
    "MATRIX_METRICS",
    "Estimate",
    "estimate_error",
    "estimate_matrix_metric",
    "imputed_moments",
    "ips_variance",
    "matrix_cell_values",
    "matrix_metric",
    "naive_expectation",
]

ESTIMATORS = ("naive", "ips", "snips")
MATRIX_ESTIMATORS = ("naive", "ips", "snips", "eib", "dr")
MATRIX_METRICS = ("mse", "mae", "dcg")

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


# ------------------------------------------------- whole-matrix metric estimation


def _as_matrix(values: Any, name: str, shape: tuple[int, int] | None,
               dtype: Any = np.float64) -> np.ndarray:
    matrix = np.asarray(values, dtype=dtype)
    if shape is None:
        check(matrix.ndim == 2 and matrix.shape[0] >= 1 and matrix.shape[1] >= 1,
              name, "a (U, I) array with at least one user and one item",
              _Plain(f"shape {matrix.shape}"))
    else:
        check(matrix.shape == shape, name,
              f"an array of shape (U, I) = {shape} like predictions",
              _Plain(f"shape {matrix.shape}"))
    return matrix


def _check_finite_at(matrix: np.ndarray, name: str, mask: np.ndarray | None,
                     where: str = "") -> None:
    bad = ~np.isfinite(matrix)
    if mask is not None:
        bad &= mask
    if bad.any():
        u, i = (int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"{name} must be finite{where}, got "
                          f"{float(matrix[u, i])!r} (user {u}, item {i})")


def _check_metric(metric: Any, k: Any) -> int | None:
    check(metric in MATRIX_METRICS, "metric", "one of " + ", ".join(MATRIX_METRICS),
          metric)
    if metric != "dcg":
        return None
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
    check(ok and k >= 1, "k", "an integer >= 1 (the cut-off of DCG@K)", k)
    return int(k)


def _dcg_discount(predictions: np.ndarray, k: int) -> np.ndarray:
    """(U, I) 1/log2(1 + rank) for ranks <= K by descending prediction, else 0."""
    n_users, n_items = predictions.shape
    order = np.argsort(-predictions, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, n_items + 1)[None, :], axis=1)
    return np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)


def _scale(metric: str, n_items: int) -> float:
    """Target = scale * (mean of the cell values over all cells)."""
    return float(n_items) if metric == "dcg" else 1.0


def matrix_cell_values(
    predictions: Any,
    ratings: Any,
    metric: str,
    k: int | None = None,
    clip: tuple[float, float] | None = (1.0, 5.0),
) -> np.ndarray:
    """Per-cell values (U, I) whose scaled mean is the metric over the matrix.

    ``mse``: (clip(rhat) - r)^2; ``mae``: |clip(rhat) - r|; ``dcg``: r /
    log2(1 + rank_u(i)) for rank_u(i) <= K, else 0, the rank of item i by the
    user's predictions (1 = highest, ties by item id; ``clip`` unused). Use it
    on a full matrix of true ratings for the truth, or on imputed ratings for
    the ``imputed`` argument of ``estimate_matrix_metric``.

    Args:
        predictions: (U, I) finite predicted ratings.
        ratings: (U, I) finite ratings (true or imputed).
        metric: one of ``MATRIX_METRICS``.
        k: the cut-off K of ``dcg`` (integer >= 1).
        clip: predictions are clipped into (low, high) for ``mse``/``mae``.
    """
    k = _check_metric(metric, k)
    predictions = _as_matrix(predictions, "predictions", None)
    _check_finite_at(predictions, "predictions", None)
    ratings = _as_matrix(ratings, "ratings", predictions.shape)
    _check_finite_at(ratings, "ratings", None)
    if metric == "dcg":
        return ratings * _dcg_discount(predictions, k)
    return cell_errors(predictions.ravel(), ratings.ravel(), metric, clip).reshape(
        predictions.shape)


def matrix_metric(
    predictions: Any,
    ratings: Any,
    metric: str,
    k: int | None = None,
    clip: tuple[float, float] | None = (1.0, 5.0),
) -> float:
    """The exact metric over the full matrix (the truth, ``_truth`` in results).

    MSE and MAE are means over all U x I cells; DCG@K is the mean over users
    of sum_i delta_ui (see ``matrix_cell_values``), I times the cell mean.
    """
    values = matrix_cell_values(predictions, ratings, metric, k, clip)
    return _scale(metric, values.shape[1]) * float(values.mean())


def estimate_matrix_metric(
    predictions: Any,
    ratings: Any,
    observed: Any,
    p_observe: Any,
    metric: str,
    estimator: str,
    k: int | None = None,
    imputed: Any = None,
    clip: tuple[float, float] | None = (1.0, 5.0),
) -> Estimate:
    """Estimate MSE, MAE or DCG@K of a prediction matrix over the full matrix.

    With cell values e (``matrix_cell_values``; known at observed cells
    only), N = U x I cells, O the observed mask, p = ``p_observe``, ehat =
    ``imputed`` and s the scale of the metric (1 for MSE and MAE, I for
    DCG@K, the mean over users of a per-user sum), the target is
    s (1/N) sum_all e and:

    - ``naive``, ``ips``, ``snips``: as in ``estimate_error``, times s.
    - ``eib``: s (1/N) sum_all [ehat + O (e - ehat)] (Steck, KDD 2010).
      Biased unless ehat = e in expectation on the unobserved cells: its
      expectation is s (1/N) sum [p e + (1 - p) ehat]. With ehat fixed its
      variance s^2 (1/N^2) sum p (1 - p) (e - ehat)^2 is estimated without
      bias by se^2 = s^2 (1/N^2) sum_obs (1 - p) (e - ehat)^2 (this is the
      only use of p here); the interval describes that noise, not the bias.
    - ``dr``: s (1/N) sum_all [ehat + O (e - ehat) / p] (Wang et al., ICML
      2019). Unbiased when p is the true propensity (any ehat fixed
      independently of the observation draw), or when ehat = e. Its
      Horvitz-Thompson variance s^2 (1/N^2) sum (1 - p) (e - ehat)^2 / p is
      estimated without bias by se^2 = s^2 (1/N^2) sum_obs (1 - p) (e -
      ehat)^2 / p^2.

    Per-cell contributions are computed once (over the observed cells for
    naive, IPS and SNIPS, over all cells for EIB and DR) and the value, se
    and interval come from them. ``imputed_moments`` gives the exact mean and
    variance of ``eib`` and ``dr`` for tests and experiments.

    Args:
        predictions: (U, I) finite predictions (any matrix: a model's, one of
            ``sim.predictions``, or a user's own).
        ratings: (U, I) ratings, read at observed cells only (the others may
            hold anything, NaN included).
        observed: (U, I) bool mask O of the cells whose rating is logged (at
            least one).
        p_observe: (U, I) observation propensities, read at observed cells
            only, in (0, 1] there; may be None for ``naive``.
        metric: one of ``MATRIX_METRICS``.
        estimator: one of ``MATRIX_ESTIMATORS``.
        k: the cut-off of ``dcg``.
        imputed: (U, I) finite imputed cell values ehat, in the metric's own
            units (an imputed error for MSE/MAE, an imputed delta for DCG,
            e.g. ``matrix_cell_values(predictions, imputed_ratings, metric)``);
            required by ``eib`` and ``dr``.
        clip: predictions are clipped into (low, high) for ``mse``/``mae``.

    Returns:
        An ``Estimate`` of the metric (n, ess and max_weight as in
        ``estimate_error``; ``eib`` weighs observed cells by 1).
    """
    check(estimator in MATRIX_ESTIMATORS, "estimator",
          "one of " + ", ".join(MATRIX_ESTIMATORS), estimator)
    k = _check_metric(metric, k)
    bounds = _check_clip(clip)
    predictions = _as_matrix(predictions, "predictions", None)
    _check_finite_at(predictions, "predictions", None)
    shape = predictions.shape
    observed_in = np.asarray(observed)
    check(observed_in.dtype == bool, "observed", "a boolean (U, I) mask",
          _Plain(f"dtype {observed_in.dtype}"))
    observed = _as_matrix(observed_in, "observed", shape, dtype=bool)
    check(bool(observed.any()), "observed", "a mask with at least one observed cell",
          _Plain("no observed cell"))
    ratings = _as_matrix(ratings, "ratings", shape)
    _check_finite_at(ratings, "ratings", observed, " at observed cells")
    if p_observe is None:
        check(estimator == "naive", "p_observe",
              f"a (U, I) array of observation propensities for estimator "
              f"{estimator!r}", None)
        propensity = None
    else:
        p_observe = _as_matrix(p_observe, "p_observe", shape)
        bad = observed & ~((p_observe > 0.0) & (p_observe <= 1.0))
        if bad.any():
            u, i = (int(j) for j in np.argwhere(bad)[0])
            raise ConfigError(f"p_observe must be in (0, 1] at observed cells, got "
                              f"{float(p_observe[u, i])!r} (user {u}, item {i})")
        propensity = p_observe[observed]
    if estimator in ("eib", "dr"):
        check(imputed is not None, "imputed",
              f"a (U, I) array of imputed cell values for estimator {estimator!r}",
              None)
        imputed = _as_matrix(imputed, "imputed", shape)
        _check_finite_at(imputed, "imputed", None)

    # Cell values at the observed cells only: the ratings elsewhere are unknown.
    if metric == "dcg":
        values = ratings[observed] * _dcg_discount(predictions, k)[observed]
    else:
        values = cell_errors(predictions[observed], ratings[observed], metric,
                             bounds)
    scale = _scale(metric, shape[1])
    n_cells = observed.size
    if estimator in ESTIMATORS:
        return estimate_error(scale * values, propensity, n_cells, estimator)

    n = values.size
    gap = values - imputed[observed]
    weight = np.ones(n) if estimator == "eib" else 1.0 / propensity
    contributions = imputed * (scale / n_cells)
    contributions[observed] += gap * weight * (scale / n_cells)
    value = float(contributions.sum())
    spread = (1.0 - propensity) * (gap * weight) ** 2
    se = scale / n_cells * math.sqrt(float(spread.sum()))
    return Estimate(
        value=value,
        se=se,
        ci_low=value - _Z95 * se,
        ci_high=value + _Z95 * se,
        n=int(n),
        ess=float(weight.sum() ** 2 / (weight**2).sum()),
        max_weight=float(weight.max()),
    )


def imputed_moments(errors_all: Any, imputed_all: Any, p_all: Any,
                    estimator: str) -> tuple[float, float]:
    """Exact mean and variance of ``eib`` or ``dr`` under Bernoulli observation.

    For cells with values e, fixed imputations ehat and propensities p
    (N cells, the scale s of the metric left out: multiply the mean by s and
    the variance by s^2):

        eib: mean (1/N) sum [p e + (1 - p) ehat],
             variance (1/N^2) sum p (1 - p) (e - ehat)^2;
        dr:  mean (1/N) sum e,
             variance (1/N^2) sum (1 - p) (e - ehat)^2 / p.

    Args:
        errors_all, imputed_all: (N,) e and ehat of every cell.
        p_all: (N,) p of every cell, in (0, 1].
        estimator: ``"eib"`` or ``"dr"``.
    """
    check(estimator in ("eib", "dr"), "estimator", "one of eib, dr", estimator)
    errors_all, p_all = _check_full(errors_all, p_all)
    imputed_all = _check_errors(imputed_all, "imputed_all")
    _check_same_length(imputed_all, "imputed_all", errors_all, "errors_all")
    n_cells = errors_all.size
    gap = errors_all - imputed_all
    if estimator == "eib":
        mean = (p_all * errors_all + (1.0 - p_all) * imputed_all).mean()
        variance = (p_all * (1.0 - p_all) * gap**2).sum() / n_cells**2
    else:
        mean = errors_all.mean()
        variance = ((1.0 - p_all) / p_all * gap**2).sum() / n_cells**2
    return float(mean), float(variance)
