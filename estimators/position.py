r"""Position bias: the examination probabilities ``theta_k = P(examine | rank k)``.

Under the position-based model (PBM) a click on the item shown at rank ``k``
happens when the user examines that rank and finds the item relevant, two
independent events:

.. math::

    P(C = 1 \mid k, x) = \theta_k \, \gamma(x)

with ``gamma(x)`` the item's relevance probability given the pair ``x``.
Clicks alone identify ``theta`` only up to a common scale (``theta / c`` and
``c * gamma`` give the same clicks), so every estimate here is reported
relative to rank 1: ``theta_hat[0] == 1`` and ``theta_hat[k - 1]`` estimates
``theta_k / theta_1``. Ranks ``k`` are 1-based in the inputs, as in the
papers; arrays are 0-based, so rank ``k`` is index ``k - 1``.

Two estimators:

- :func:`position_bias_randpair`, from randomised swap interventions
  (Joachims, Swaminathan and Schnabel, WSDM 2017; Wang et al., WSDM 2018).
- :func:`position_bias_em`, regression EM on ordinary logs (Wang, Golbandi,
  Bendersky, Metzler and Najork, WSDM 2018), with a logistic relevance model
  on observable pair features that never sees the truth.

:func:`propensity_error` scores an estimated curve against the true one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from sim.config import ConfigError

__all__ = [
    "RandPairResult",
    "EMResult",
    "position_bias_randpair",
    "position_bias_em",
    "predict_relevance",
    "propensity_error",
]

_GAMMA_EPS = 1e-10  # relevance kept in [eps, 1 - eps] so 1 - theta*gamma > 0


class RandPairResult(NamedTuple):
    """Swap-intervention estimate of the position bias, every field (K,).

    ``theta``: ``theta_hat_k / theta_hat_1`` at index ``k - 1``
    (``theta[0] == 1``); ``stderr``: delta-method standard errors (0 at rank
    1); ``n_impressions``: the impressions behind each click rate, at index
    ``k - 1`` the swap impressions that moved the rank-1 item to rank k, at
    index 0 the unswapped control impressions at rank 1; ``n_clicks``: their
    clicks.
    """

    theta: np.ndarray
    stderr: np.ndarray
    n_impressions: np.ndarray
    n_clicks: np.ndarray


class EMResult(NamedTuple):
    """Regression-EM fit of the position-based model.

    ``theta`` (K,): the examination curve relative to rank 1
    (``theta[0] == 1``). ``theta_fitted`` (K,): the fitted probabilities on
    the model's own, unidentified scale (``theta_fitted * relevance`` are the
    fitted click rates). ``coef`` (f + 1,): logistic-regression coefficients
    of the relevance model on ``[features, 1]`` (intercept last), so that
    ``relevance = predict_relevance(coef, features)`` (n,).
    ``log_likelihood`` (n_iter + 1,): the mean observed-click log-likelihood
    (less the ridge term) at the start and after each iteration, never
    decreasing; ``n_iter`` iterations (SQUAREM cycles of three EM steps) were
    run; ``converged`` says whether the relative curve moved less than
    ``tol`` in the last one.
    """

    theta: np.ndarray
    theta_fitted: np.ndarray
    coef: np.ndarray
    relevance: np.ndarray
    log_likelihood: np.ndarray
    n_iter: int
    converged: bool


# ---------------------------------------------------------------- validation

def _check_int(name: str, value: Any, low: int) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not (ok and value >= low):
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_vector(name: str, value: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-d (impressions,) array, "
                          f"got shape {arr.shape}")
    if arr.size == 0:
        raise ConfigError(f"{name} must hold at least one impression, got an "
                          f"empty array")
    if n is not None and arr.size != n:
        raise ConfigError(f"{name} must have one entry per impression ({n}), "
                          f"got {arr.size}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _check_ranks(name: str, value: Any, n: int | None, n_ranks: int) -> np.ndarray:
    ranks = _check_vector(name, value, n)
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ConfigError(f"{name} must be integer ranks 1..{n_ranks}, got dtype "
                          f"{ranks.dtype}")
    bad = (ranks < 1) | (ranks > n_ranks)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{name} must be in 1..{n_ranks} (n_ranks), got "
                          f"{ranks[i]} (impression {i})")
    return ranks.astype(np.int64)


def _check_binary(name: str, value: Any, n: int) -> np.ndarray:
    arr = _check_vector(name, value, n)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{name} must be 0 or 1, got {arr[i].item()!r} "
                          f"(impression {i})")
    return arr.astype(bool)


# ------------------------------------------------------------------ RandPair

def position_bias_randpair(
    original_ranks: Any,
    shown_ranks: Any,
    clicks: Any,
    swapped: Any,
    n_ranks: int,
) -> RandPairResult:
    r"""Position bias from RandPair swap interventions, relative to rank 1.

    On a swap visit the logger's rank-1 item is exchanged with the item at a
    rank ``k`` drawn uniformly from 2..K; every other visit is shown as
    ranked. Because the swap is decided at random, the item the logger put at
    rank 1 has the same relevance distribution on both kinds of visit, so
    under the position-based model

    .. math::

        \hat\theta_k / \hat\theta_1 =
        \frac{\bar c(\text{orig. rank 1 shown at } k,\ \text{swap visits})}
             {\bar c(\text{orig. rank 1 shown at } 1,\ \text{other visits})}
        \;\to\; \frac{\theta_k\,\mathrm{E}[\gamma \mid \text{rank 1}]}
                     {\theta_1\,\mathrm{E}[\gamma \mid \text{rank 1}]}

    where ``c-bar`` is a click rate over impressions. The numerator is an
    unbiased mean, the ratio is consistent (bias of order 1/n from the
    denominator), as in the swap intervention of Joachims, Swaminathan and
    Schnabel, "Unbiased learning-to-rank with biased feedback", WSDM 2017,
    and the RandPair design of Wang, Golbandi, Bendersky, Metzler and Najork,
    "Position bias estimation for unbiased learning to rank in personal
    search", WSDM 2018. Only impressions whose original rank is 1 are used.
    The standard error is the delta method for a ratio of two independent
    binomial means, ``se^2 = (p_k (1 - p_k) / n_k) / p_1^2
    + p_k^2 (p_1 (1 - p_1) / n_1) / p_1^4``; it is 0 when no swapped item was
    clicked at rank k (the estimate is then 0 and too uncertain for a
    weight).

    Arguments, each (n,) over impressions: ``original_ranks`` the 1-based rank
    the logger gave the item; ``shown_ranks`` the rank it was displayed at
    (equal to the original rank except on a swap visit's exchanged pair);
    ``clicks`` 0/1; ``swapped`` True for every impression of a swap visit.
    ``n_ranks`` is K, the slate length. Returns a :class:`RandPairResult`.
    """
    n_ranks = _check_int("n_ranks", n_ranks, 2)
    original_ranks = _check_ranks("original_ranks", original_ranks, None, n_ranks)
    n = original_ranks.size
    shown_ranks = _check_ranks("shown_ranks", shown_ranks, n, n_ranks)
    clicks = _check_binary("clicks", clicks, n)
    swapped = _check_binary("swapped", swapped, n)

    moved = original_ranks != shown_ranks
    bad = moved & ~swapped
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"shown_ranks must equal original_ranks off swap visits, "
                          f"got shown {shown_ranks[i]} for original "
                          f"{original_ranks[i]} (impression {i})")
    bad = moved & (original_ranks != 1) & (shown_ranks != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"a swap must exchange rank 1 with another rank, got "
                          f"original {original_ranks[i]} shown at {shown_ranks[i]} "
                          f"(impression {i})")

    top = original_ranks == 1
    treated = top & swapped & moved
    if not treated.any():
        raise ConfigError("swapped must flag at least one swap visit that moved the "
                          "rank-1 item, got none: RandPair needs interventions")
    control = top & ~swapped
    n_impressions = np.bincount(shown_ranks[treated] - 1, minlength=n_ranks)
    n_impressions[0] = control.sum()
    n_clicks = np.bincount(shown_ranks[treated] - 1, weights=clicks[treated],
                           minlength=n_ranks)
    n_clicks[0] = clicks[control].sum()
    empty = np.flatnonzero(n_impressions == 0)
    if empty.size:
        k = int(empty[0]) + 1
        what = ("unswapped visits" if k == 1
                else f"swap visits that exchanged rank 1 with rank {k}")
        raise ConfigError(f"need at least one of the {what} for every rank "
                          f"1..{n_ranks}, got none")
    if n_clicks[0] == 0:
        raise ConfigError(f"the rank-1 items of the {n_impressions[0]} unswapped "
                          f"visits must have at least one click, got 0: theta_1 "
                          f"has no estimate to divide by")

    rate = n_clicks / n_impressions
    theta = rate / rate[0]
    var_rate = rate * (1.0 - rate) / n_impressions
    var = var_rate / rate[0] ** 2 + rate**2 * var_rate[0] / rate[0] ** 4
    var[0] = 0.0
    return RandPairResult(theta, np.sqrt(var), n_impressions,
                          n_clicks.astype(np.int64))


# ------------------------------------------------------------- regression EM

def predict_relevance(coef: Any, features: Any) -> np.ndarray:
    """Relevance ``gamma(x) = sigmoid([x, 1] @ coef)``, (n,), from an EM fit.

    ``coef`` (f + 1,), intercept last, as in :attr:`EMResult.coef`;
    ``features`` (n, f).
    """
    coef = np.asarray(coef, dtype=float)
    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or coef.shape != (features.shape[1] + 1,):
        raise ConfigError(f"coef must have shape (f + 1,) for features of shape "
                          f"(n, f), got coef {coef.shape} and features "
                          f"{features.shape}")
    return _sigmoid(features @ coef[:-1] + coef[-1])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, kept in [eps, 1 - eps] so that 1 - theta*gamma > 0."""
    return np.clip(0.5 + 0.5 * np.tanh(0.5 * z), _GAMMA_EPS, 1.0 - _GAMMA_EPS)


class _PBMFit:
    """The EM map and the log-likelihood of the PBM on one log.

    Parameters travel as one vector ``[theta (K,), coef (f + 1,)]`` so that
    SQUAREM can extrapolate them together.
    """

    def __init__(self, index: np.ndarray, clicks: np.ndarray, design: np.ndarray,
                 n_ranks: int, l2: float, anchor_top: bool):
        self.index, self.clicks, self.design = index, clicks, design
        self.n_ranks, self.anchor_top = n_ranks, anchor_top
        self.counts = np.bincount(index, minlength=n_ranks)
        n, f1 = design.shape
        self.ridge = np.full(f1, l2)
        self.ridge[-1] = 0.0  # the intercept is not penalised
        # Bohning's bound: the logistic Hessian is at most X^T X / 4.
        self.bound_inv = np.linalg.inv(design.T @ design / (4.0 * n)
                                       + np.diag(self.ridge))

    def relevance(self, coef: np.ndarray) -> np.ndarray:
        return _sigmoid(self.design @ coef)

    def step(self, params: np.ndarray) -> np.ndarray:
        """One EM step: E-step posteriors, then both M-step updates."""
        theta, coef = params[:self.n_ranks], params[self.n_ranks:]
        relevance = self.relevance(coef)
        examine = theta[self.index]
        both = examine * relevance
        miss = 1.0 - both
        post_examine = np.where(self.clicks, 1.0, (examine - both) / miss)
        post_relevant = np.where(self.clicks, 1.0, (relevance - both) / miss)

        new_theta = np.bincount(self.index, weights=post_examine,
                                minlength=self.n_ranks) / self.counts
        if self.anchor_top:
            new_theta[0] = 1.0
        gradient = (self.design.T @ (post_relevant - relevance)
                    / self.design.shape[0] - self.ridge * coef)
        return np.concatenate([new_theta, coef + self.bound_inv @ gradient])

    def log_likelihood(self, params: np.ndarray) -> float:
        """Mean over impressions of log P(c | k, x), minus the ridge term."""
        theta, coef = params[:self.n_ranks], params[self.n_ranks:]
        p_click = theta[self.index] * self.relevance(coef)
        ll = np.log(np.where(self.clicks, p_click, 1.0 - p_click)).mean()
        return float(ll - 0.5 * coef @ (self.ridge * coef))


def position_bias_em(
    ranks: Any,
    clicks: Any,
    features: Any,
    n_ranks: int,
    iterations: int = 200,
    tol: float = 1e-6,
    l2: float = 1e-6,
    anchor_top: bool = True,
) -> EMResult:
    r"""Position bias by regression EM under the position-based model.

    Model: ``P(C = 1 | k, x) = theta_k * gamma(x)`` with examination ``E`` and
    relevance ``R`` independent, ``C = E * R``, and
    ``gamma(x) = sigmoid(w . x + b)`` a logistic relevance model on the
    observable features ``x`` of the pair. The relevance model sees only
    ``features``, never the true relevance. One EM step, with
    ``t = theta_k`` and ``g = gamma(x)`` at the current values:

    E-step (posteriors given the click ``c``)

    .. math::

        P(E = 1 \mid c, k, x) = c + (1 - c)\,\frac{t (1 - g)}{1 - t g},
        \qquad
        P(R = 1 \mid c, k, x) = c + (1 - c)\,\frac{(1 - t) g}{1 - t g}

    M-step: ``theta_k`` = the mean of ``P(E = 1 | ...)`` over the impressions
    shown at rank ``k`` (exact); ``(w, b)`` one ascent step on the logistic
    log-likelihood with soft labels ``P(R = 1 | ...)`` (the expected
    complete-data log-likelihood), ridge ``l2 / 2 * |w|^2`` on ``w`` only,
    using Bohning's bound ``X^T X / 4`` on the Hessian, so every step
    increases the objective (a generalised EM step; Bohning, "Multinomial
    logistic regression algorithm", Ann. Inst. Stat. Math. 1992). This is the
    regression EM of Wang, Golbandi, Bendersky, Metzler and Najork, "Position
    bias estimation for unbiased learning to rank in personal search", WSDM
    2018, with a logistic regression in place of their gradient-boosted trees
    and soft labels in place of sampled ones.

    EM crawls when much information is missing (low ranks are rarely
    examined), so the steps are accelerated by SQUAREM (Varadhan and Roland,
    Scand. J. Statist. 2008): each iteration takes two EM steps, extrapolates
    from them, stabilises with one more EM step, and falls back to the plain
    two steps whenever the extrapolation lowers the log-likelihood; the
    log-likelihood therefore never decreases.

    Scale: clicks fix ``theta`` only up to a common factor, and the logistic
    relevance model pins it only weakly (a near-flat ridge EM follows
    slowly). With ``anchor_top`` (default) ``theta_1`` is held at 1, the top
    rank being always examined, as in the simulator's ``theta_k = (1/k)^eta``;
    with ``anchor_top=False`` ``theta_1`` is estimated too (can be slower; only
    the ratios are reported either way).

    The estimate is a maximum-likelihood one: consistent when the relevance
    model is well specified (gamma is logistic in ``features``), not unbiased
    at a finite log size; a misspecified relevance model leaves a bias that
    more data does not remove. Ranks that depend on the features (a logger
    that ranks by a model) are allowed: the relevance model explains that
    dependence away, which the naive click-rate ratio cannot.

    Start: ``theta_k`` = the click-rate ratio of rank k to rank 1, capped to
    [0.01, 1]; relevance from an intercept alone, matching the mean click.

    Arguments: ``ranks`` (n,) 1-based shown ranks in 1..K, every rank present;
    ``clicks`` (n,) 0/1; ``features`` (n, f) finite, whose columns together
    with a constant are linearly independent; ``n_ranks`` K; ``iterations``
    the most SQUAREM iterations; ``tol`` the largest change of the curve
    ``theta / theta_1`` over one iteration at which to stop; ``l2`` the ridge.
    Returns an :class:`EMResult`.
    """
    n_ranks = _check_int("n_ranks", n_ranks, 2)
    iterations = _check_int("iterations", iterations, 1)
    ranks = _check_ranks("ranks", ranks, None, n_ranks)
    n = ranks.size
    clicks = _check_binary("clicks", clicks, n)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != n:
        raise ConfigError(f"features must have shape (n_impressions, f) = ({n}, f), "
                          f"got {features.shape}")
    if not np.issubdtype(features.dtype, np.number) or features.dtype == bool:
        raise ConfigError(f"features must be numeric, got dtype {features.dtype}")
    bad = ~np.isfinite(features)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ConfigError(f"features must be finite, got {features[i, j].item()!r} "
                          f"(impression {i}, feature {j})")
    for key, value in (("tol", tol), ("l2", l2)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and np.isfinite(value) and value >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")
    if not isinstance(anchor_top, bool):
        raise ConfigError(f"anchor_top must be True or False, got {anchor_top!r}")
    counts = np.bincount(ranks - 1, minlength=n_ranks)
    if (counts == 0).any():
        k = int(np.flatnonzero(counts == 0)[0]) + 1
        raise ConfigError(f"ranks must include every rank 1..{n_ranks}, got no "
                          f"impression at rank {k}")
    clicked = np.bincount(ranks - 1, weights=clicks, minlength=n_ranks)
    if clicked[0] == 0:
        raise ConfigError(f"clicks at rank 1 must include at least one click, got 0 "
                          f"over {counts[0]} impressions: the curve relative to "
                          f"rank 1 is undefined")
    design = np.column_stack([features.astype(float), np.ones(n)])
    if np.linalg.matrix_rank(design.T @ design) < design.shape[1]:
        raise ConfigError(f"features must have linearly independent columns, none "
                          f"constant (an intercept is added), got a rank-deficient "
                          f"(n, {features.shape[1]}) matrix")

    fit = _PBMFit(ranks - 1, clicks, design, n_ranks, float(l2), anchor_top)
    rate = clicked / counts
    theta = np.clip(rate / rate[0], 0.01, 1.0)
    start = np.clip(clicks.mean() / theta[ranks - 1].mean(), 1e-3, 1.0 - 1e-3)
    coef = np.zeros(design.shape[1])
    coef[-1] = np.log(start / (1.0 - start))
    params = np.concatenate([theta, coef])
    history = [fit.log_likelihood(params)]
    converged = False

    for n_iter in range(1, iterations + 1):
        once = fit.step(params)
        twice = fit.step(once)
        r = once - params
        v = twice - once - r
        alpha = -np.sqrt(r @ r / (v @ v)) if v @ v > 0 else -1.0
        alpha = min(alpha, -1.0)
        jump = params - 2.0 * alpha * r + alpha**2 * v
        jump[:n_ranks] = np.clip(jump[:n_ranks], 1e-6, 1.0)
        jump = fit.step(jump)
        ll_jump, ll_twice = fit.log_likelihood(jump), fit.log_likelihood(twice)
        new, ll_new = (jump, ll_jump) if ll_jump >= ll_twice else (twice, ll_twice)

        old_curve = params[:n_ranks] / params[0]
        params = new
        history.append(ll_new)
        if np.max(np.abs(params[:n_ranks] / params[0] - old_curve)) < tol:
            converged = True
            break

    theta, coef = params[:n_ranks], params[n_ranks:]
    return EMResult(theta / theta[0], theta, coef, fit.relevance(coef),
                    np.array(history), n_iter, converged)


# ---------------------------------------------------------------- evaluation

def propensity_error(theta_hat: Any, theta_true: Any,
                     ranks: tuple[int, ...] = tuple(range(2, 11))) -> float:
    r"""Mean relative error of an estimated examination curve, relative to rank 1.

    .. math::

        \mathrm{err} = \frac{1}{|\mathcal K|} \sum_{k \in \mathcal K}
        \frac{\big|\hat\theta_k / \hat\theta_1 - \theta_k / \theta_1\big|}
             {\theta_k / \theta_1}

    over the 1-based ``ranks`` ``K`` (default 2..10), with ``theta_hat`` and
    ``theta_true`` (K,) the estimated and true curves on any scale (both are
    divided by their rank-1 value). Refuses curves of different lengths, a
    true curve with a zero or negative entry, a negative estimate, a zero
    estimate at rank 1, and ranks outside 2..K.
    """
    theta_hat = np.asarray(theta_hat, dtype=float)
    theta_true = np.asarray(theta_true, dtype=float)
    for name, arr in (("theta_hat", theta_hat), ("theta_true", theta_true)):
        if arr.ndim != 1 or arr.size < 2:
            raise ConfigError(f"{name} must be a 1-d (K,) array with K >= 2, got "
                              f"shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{name} must be finite, got {arr[i].item()!r} "
                              f"(rank {i + 1})")
    if theta_hat.size != theta_true.size:
        raise ConfigError(f"theta_hat must have the length of theta_true "
                          f"({theta_true.size} ranks), got {theta_hat.size}")
    if (theta_true <= 0).any():
        i = int(np.flatnonzero(theta_true <= 0)[0])
        raise ConfigError(f"theta_true must be > 0 at every rank, got "
                          f"{theta_true[i].item()!r} (rank {i + 1})")
    if (theta_hat < 0).any() or theta_hat[0] == 0:
        i = int(np.flatnonzero((theta_hat < 0) | (np.arange(theta_hat.size) == 0)
                               & (theta_hat == 0))[0])
        accepted = "> 0 at rank 1" if i == 0 else ">= 0"
        raise ConfigError(f"theta_hat must be {accepted}, got "
                          f"{theta_hat[i].item()!r} (rank {i + 1})")
    chosen = np.asarray(ranks)
    n_ranks = theta_true.size
    ok = (chosen.ndim == 1 and chosen.size > 0
          and np.issubdtype(chosen.dtype, np.integer)
          and bool(((chosen >= 2) & (chosen <= n_ranks)).all())
          and np.unique(chosen).size == chosen.size)
    if not ok:
        raise ConfigError(f"ranks must be distinct integers in 2..{n_ranks} (K), "
                          f"got {tuple(np.atleast_1d(chosen).tolist())}")
    index = chosen - 1
    truth = theta_true[index] / theta_true[0]
    estimate = theta_hat[index] / theta_hat[0]
    return float(np.mean(np.abs(estimate - truth) / truth))
