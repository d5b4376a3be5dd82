"""Logging policies that fill ranked slates, with their exact propensities.

A policy shows each visiting user a slate of K distinct items in rank order
(ranks k = 1..K, 1-based). Policies (``exposure.policy``):

- ``uniform``: K items uniformly at random without replacement, in random order.
  Closed forms: p_rank(i, k) = 1/n, p_shown(i) = K/n, P(slate) = (n-K)!/n!.
- ``popularity``: Plackett-Luce (PL) with weights w_i = pop_i^gamma, gamma =
  ``exposure.popularity_gamma``, the same for every user.
- ``softmax``: PL with per-user weights w_ui = exp(s_ui / T), where the
  production score s_ui = z_ui + e_ui adds noise e_ui ~ N(0, score_noise^2),
  drawn once per pair, to the world's latent score z_ui (`World.score`), and
  T = ``exposure.temperature``.
- ``model``: PL with w_ui = exp(m_ui / T) over any callable ``scores(users) ->
  (n, I)`` (for example a trained estimator's predicted rows), no added noise.

Plackett-Luce draws the slate one rank at a time: rank 1 is item i with
probability w_i / W, each later rank picks among the items not yet shown in
proportion to their weights. The probability of an ordered slate
(s_1, ..., s_K) is prod_k w_{s_k} / (W - sum_{l<k} w_{s_l}).

With ``exposure.epsilon`` = eps > 0 the whole slate is drawn uniformly at
random with probability eps and from the PL policy otherwise; every logged
probability (p_rank, p_shown, the slate's) is the same mixture of the two exact
ones, e.g. p_rank = eps/n + (1 - eps) p_rank_PL.

Exact PL marginals (`pl_rank_probabilities`). Give item j an exponential clock
T_j ~ Exp(w_j); sorting the clocks gives a PL ranking (the exponential race,
equivalently Gumbel-max with G_j = -log T_j). Item i is at rank k when exactly
k - 1 other clocks ring before T_i:

    p_rank(i, k) = int_0^inf w_i e^{-w_i t} [x^{k-1}] prod_{j != i} (e^{-w_j t}
                   + (1 - e^{-w_j t}) x) dt,

a one-dimensional integral of a Poisson-binomial probability, and
p_shown(i) = sum_{k <= K} p_rank(i, k). Rank 1 uses its closed form w_i / W.
For k >= 2 the integral is taken by the trapezoidal rule in s = log t, step
0.25, on [log(1e-6 / W), log(50)] after scaling the weights so that the
(K+1)-th largest is 1 (the integrand is analytic in s and decays at both ends,
where the trapezoidal rule converges geometrically); the part below the lower
end is below (1e-6)^k / k! relative, the part above the upper end below
e^-50 * 50^K / K!. The result is within 5e-9 relative of enumeration of all
ordered slates on small catalogues and of a reference at step 0.1 on
catalogues of hundreds to thousands of items (tests), against the stated
guarantee of 1e-6 relative for every entry. The leave-one-out polynomial
is formed without cancellation: by prefix and suffix products over the items
whose clocks can pass 1/2 inside the range ("heavy" items), and by dividing the
full product by the item's own factor for the others, which is stable because
their factor has e^{-w t} >= 1/2 on the whole range. All of it runs in float64
on (users x items x nodes) arrays; Monte Carlo frequencies serve only as a test
oracle.

Randomised interventions (RandPair; Joachims, Swaminathan and Schnabel, WSDM
2017, section 6; Wang et al., WSDM 2018): on a share ``intervention.swap_share``
of visits, chosen independently of everything else, the item the policy put at
rank 1 and the item at a rank k drawn uniformly from 2..K trade places. The
logged p_rank of a shown item is then the probability that it is displayed at
the position where it was actually shown, given the visit's type: for ordinary
visits the policy's p_rank, for swapped visits

    p_swap(i, 1) = mean_{k=2..K} p_rank(i, k),
    p_swap(i, j) = p_rank(i, 1) / (K-1) + (K-2)/(K-1) p_rank(i, j)   (j >= 2).

p_shown is unchanged by a swap, and the slate probability of a swapped visit is
(1/(K-1)) sum_{k=2..K} P(displayed slate with ranks 1 and k exchanged back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sim.config import ConfigError, check, check_range
from sim.world import World

__all__ = [
    "POLICIES",
    "ExposureConfig",
    "InterventionConfig",
    "SlatePolicy",
    "make_policy",
    "pl_rank_probabilities",
    "pl_slate_logprob",
    "sample_pl_slates",
    "swap_composed",
    "draw_swaps",
    "check_slates",
    "check_slate_size",
]

POLICIES = ("uniform", "popularity", "softmax", "model")

_STEP = 0.25  # trapezoid step in log t
_LOW = 1e-6  # lower end of the t range, times the total (scaled) weight
_HIGH = 50.0  # upper end, in units of 1 / (K+1)-th largest weight


@dataclass(frozen=True)
class ExposureConfig:
    """Which items a visiting user is shown (keys ``exposure.*``).

    ``visits`` is the default number of visits in a log (each visit draws its
    user uniformly at random); 100,000 gives 100 slates per user for the
    default 1,000-user world.
    """

    policy: str = "popularity"
    slate_size: int = 10  # K
    popularity_gamma: float = 1.0
    score_noise: float = 1.0  # sd of the production score's noise (softmax)
    temperature: float = 0.5  # softmax temperature T (softmax and model)
    epsilon: float = 0.0  # probability that a whole slate is uniform instead
    visits: int = 100_000

    def __post_init__(self) -> None:
        check(self.policy in POLICIES, "exposure.policy",
              "one of " + ", ".join(POLICIES), self.policy)
        for key in ("slate_size", "visits"):
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            check(ok, f"exposure.{key}", "an integer >= 1", value)
        check_range(self.popularity_gamma, "exposure.popularity_gamma", 0.0)
        check_range(self.score_noise, "exposure.score_noise", 0.0)
        check_range(self.temperature, "exposure.temperature", 0.0, low_open=True)
        check_range(self.epsilon, "exposure.epsilon", 0.0, 1.0)


@dataclass(frozen=True)
class InterventionConfig:
    """RandPair swaps (keys ``intervention.*``).

    ``train_on_swaps`` false (the default): swapped visits are kept in the log,
    flagged, for position-bias estimation, and left out of training data
    (`ImpressionLog.training`, `clicks_by_pair`, `p_expose_pair`).
    """

    swap_share: float = 0.05
    train_on_swaps: bool = False

    def __post_init__(self) -> None:
        check_range(self.swap_share, "intervention.swap_share", 0.0, 1.0)
        check(isinstance(self.train_on_swaps, bool), "intervention.train_on_swaps",
              "true or false", self.train_on_swaps)


# --------------------------------------------------------------------------- checks


def check_slate_size(slate_size: int, n_items: int, key: str = "exposure.slate_size"
                     ) -> None:
    ok = isinstance(slate_size, (int, np.integer)) and not isinstance(slate_size, bool)
    check(ok and 1 <= slate_size <= n_items, key,
          f"an integer in [1, {n_items}] (the catalogue size)", slate_size)


def _check_weights(weights: np.ndarray, slate_size: int, key: str) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[None, :]
    check(weights.ndim == 2 and weights.shape[1] >= 1, key,
          "a (rows, items) array", f"shape {weights.shape}")
    check_slate_size(slate_size, weights.shape[1], "slate_size")
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        value = float(weights[row, col])
        raise ConfigError(f"{key} must be finite and >= 0, got {value!r} "
                          f"(row {row}, item {col})")
    n_pos = (weights > 0).sum(axis=1)
    if (n_pos < slate_size).any():
        row = int(np.argmax(n_pos < slate_size))
        raise ConfigError(
            f"{key} must have at least slate_size = {slate_size} positive entries "
            f"per row, got {int(n_pos[row])} (row {row})")
    return weights


def check_slates(slates: np.ndarray, n_items: int, key: str = "slates") -> np.ndarray:
    """Refuse slates that are not (n, K) item ids in [0, n_items) without repeats."""
    slates = np.asarray(slates)
    check(slates.ndim == 2 and np.issubdtype(slates.dtype, np.integer), key,
          "an (n, K) integer array", f"{slates.dtype} array of shape {slates.shape}")
    out = (slates < 0) | (slates >= n_items)
    if out.any():
        row, col = np.argwhere(out)[0]
        raise ConfigError(f"{key} must hold item ids in [0, {n_items - 1}], got "
                          f"{int(slates[row, col])} (row {row}, rank {col + 1})")
    ordered = np.sort(slates, axis=1)
    repeat = ordered[:, 1:] == ordered[:, :-1]
    if repeat.any():
        row, col = np.argwhere(repeat)[0]
        raise ConfigError(f"{key} must hold distinct items in each row, got item "
                          f"{int(ordered[row, col])} twice (row {row})")
    return slates


# ------------------------------------------------------------ exact PL marginals


def _poly_mul(a: np.ndarray, b: np.ndarray, degree: int) -> np.ndarray:
    """Product of polynomials, coefficients on axis 0, truncated to ``degree``."""
    n_out = min(a.shape[0] + b.shape[0] - 1, degree + 1)
    out = np.zeros((n_out,) + np.broadcast_shapes(a.shape[1:], b.shape[1:]))
    for power in range(min(a.shape[0], n_out)):
        width = min(b.shape[0], n_out - power)
        out[power:power + width] += a[power] * b[:width]
    return out


def _tree_product(factors: np.ndarray, degree: int) -> np.ndarray:
    """Product over axis 2 of polynomials (d, rows, m, nodes), truncated."""
    while factors.shape[2] > 1:
        if factors.shape[2] % 2:
            unit = np.zeros(factors.shape[:2] + (1,) + factors.shape[3:])
            unit[0] = 1.0
            factors = np.concatenate([factors, unit], axis=2)
        factors = _poly_mul(factors[:, :, 0::2], factors[:, :, 1::2], degree)
    return factors[:, :, 0]


def _pl_chunk(weights: np.ndarray, slate_size: int, step: float,
              all_heavy: bool = False) -> np.ndarray:
    """p_rank (rows, I, K) for a chunk of weight rows (rows, I), validated.

    ``all_heavy`` treats every item by prefix and suffix products (a slower
    reference for tests of the division used for light items).
    """
    n_rows, n_items = weights.shape
    top = slate_size - 1  # highest power of x needed: k - 1 others before i
    order = np.argsort(-weights, axis=1, kind="stable")
    w_sorted = np.take_along_axis(weights, order, axis=1)
    n_pos = (w_sorted > 0).sum(axis=1)
    ref = w_sorted[np.arange(n_rows), np.minimum(slate_size + 1, n_pos) - 1]
    w_sorted = w_sorted / ref[:, None]
    total = w_sorted.sum(axis=1)

    p_sorted = np.zeros((n_rows, n_items, slate_size))
    p_sorted[:, :, 0] = w_sorted / total[:, None]
    if slate_size > 1:
        # Trapezoid nodes in s = log t, one grid per row, same count per chunk.
        s_low = np.log(_LOW / total)
        s_high = np.full(n_rows, math.log(_HIGH))
        n_nodes = int(np.ceil((s_high - s_low).max() / step)) + 1
        frac = np.linspace(0.0, 1.0, n_nodes)
        t = np.exp(s_low[:, None] + (s_high - s_low)[:, None] * frac[None, :])
        h = (s_high - s_low) / (n_nodes - 1)
        node_weight = h[:, None] * t  # (rows, Q): dt = t ds
        node_weight[:, [0, -1]] *= 0.5

        # Heavy items: their clock can pass 1/2 inside the range.
        heavy = int((w_sorted * _HIGH > math.log(2.0)).sum(axis=1).max())
        heavy = n_items if all_heavy else max(heavy, 1)
        rate = w_sorted[:, :heavy, None] * t[:, None, :]
        stay_h, ring_h = np.exp(-rate), -np.expm1(-rate)  # (rows, H, Q)
        if n_items > heavy:
            rate = w_sorted[:, heavy:, None] * t[:, None, :]
            stay_l, ring_l = np.exp(-rate), -np.expm1(-rate)  # (rows, L, Q)
            light_poly = _tree_product(np.stack([stay_l, ring_l]), top)
        else:
            light_poly = np.ones((1, n_rows, n_nodes))

        # Prefix products over heavy items; suffix products start from the
        # light product, so prefix[j] * suffix[j+1] leaves out heavy item j only.
        shape = (slate_size, n_rows, n_nodes)
        prefix = np.zeros((heavy + 1,) + shape)
        prefix[0, 0] = 1.0
        for j in range(heavy):
            prefix[j + 1] = prefix[j] * stay_h[:, j]
            prefix[j + 1, 1:] += prefix[j, :-1] * ring_h[:, j]
        suffix = np.zeros((heavy + 1,) + shape)
        suffix[heavy, :light_poly.shape[0]] = light_poly
        for j in range(heavy - 1, -1, -1):
            suffix[j] = suffix[j + 1] * stay_h[:, j]
            suffix[j, 1:] += suffix[j + 1, :-1] * ring_h[:, j]

        # Heavy item j at rank m + 1: sum over nodes of w e^{-wt} dt times
        # [x^m] prefix[j] suffix[j+1], one (a, m - a) pair of powers at a time.
        density = w_sorted[:, :heavy, None] * stay_h * node_weight[:, None, :]
        left = prefix[:heavy].transpose(1, 2, 0, 3) * density  # (K, rows, H, Q)
        right = suffix[1:].transpose(1, 2, 0, 3)
        for power in range(1, slate_size):
            acc = np.zeros((n_rows, heavy))
            for a in range(power + 1):
                acc += np.einsum("rhq,rhq->rh", left[a], right[power - a])
            p_sorted[:, :heavy, power] = acc

        # Light items: divide the full product by the item's own factor,
        # c_m = (a_m - ring c_{m-1}) / stay, stable because stay >= 1/2.
        if n_items > heavy:
            full = suffix[0]  # (K, rows, Q): the product over all items
            w_l = w_sorted[:, heavy:]
            coef = full[0][:, None, :] / stay_l
            for power in range(1, slate_size):
                part = full[power][:, None, :] - ring_l * coef  # = stay c_m
                p_sorted[:, heavy:, power] = np.einsum(
                    "rlq,rq->rl", part, node_weight) * w_l
                coef = part / stay_l
            np.maximum(p_sorted, 0.0, out=p_sorted)

    p_rank = np.empty_like(p_sorted)
    np.put_along_axis(p_rank, order[..., None], p_sorted, axis=1)
    return p_rank


def pl_rank_probabilities(
    weights: np.ndarray, slate_size: int, step: float = _STEP,
    max_cells: int = 1_000_000,
) -> np.ndarray:
    """Exact Plackett-Luce rank marginals p_rank[r, i, k-1] = P(item i at rank k).

    ``weights`` is (R, I) (or (I,), treated as one row): non-negative PL weights,
    at least ``slate_size`` = K of them positive per row. Returns (R, I, K)
    float64. Method and error: see the module docstring (relative error below
    1e-6; items of weight 0 get 0). Rows are processed in chunks of about
    ``max_cells`` items x nodes to bound memory.
    """
    weights = _check_weights(weights, slate_size, "weights")
    check_range(step, "step", 0.0, 0.5, low_open=True)
    n_rows, n_items = weights.shape
    # Rows with similar spread share a chunk, so that the chunk's node count and
    # heavy-item count (both maxima over its rows) waste little work.
    spread = np.sort(weights, axis=1)[:, -min(slate_size + 1, n_items)]
    spread = weights.sum(axis=1) / np.maximum(spread, np.finfo(float).tiny)
    by_spread = np.argsort(spread, kind="stable")
    chunk = max(1, max_cells // (n_items * 100))
    p_rank = np.empty((n_rows, n_items, slate_size))
    for start in range(0, n_rows, chunk):
        rows = by_spread[start:start + chunk]
        p_rank[rows] = _pl_chunk(weights[rows], slate_size, step)
    return p_rank


def pl_slate_logprob(
    weights: np.ndarray, slates: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """log P(ordered slate) under PL: sum_k [log w_{s_k} - log(W - sum_{l<k} w_{s_l})].

    ``weights`` (I,) shared, or (R, I) with ``rows`` (n,) naming each slate's
    row (default: slate r uses row r); ``slates`` (n, K) item ids without
    repeats. Returns (n,). The remaining mass is floored at the chosen item's
    own weight, which only matters when rounding makes W - sum smaller than it
    (weights spanning more than ~1e15).
    """
    weights = np.asarray(weights, dtype=np.float64)
    slates = check_slates(slates, weights.shape[-1])
    if weights.ndim == 1:
        chosen = weights[slates]
        total = np.full(slates.shape[0], weights.sum())
    else:
        if rows is None:
            check(weights.shape[0] == slates.shape[0], "weights",
                  f"one row per slate ({slates.shape[0]})", f"{weights.shape[0]} rows")
            rows = np.arange(slates.shape[0])
        rows = np.asarray(rows)
        chosen = weights[rows[:, None], slates]
        total = weights.sum(axis=1)[rows]
    before = np.cumsum(chosen, axis=1) - chosen
    remaining = np.maximum(total[:, None] - before, chosen)
    with np.errstate(divide="ignore"):
        return (np.log(chosen) - np.log(remaining)).sum(axis=1)


# ------------------------------------------------------------------- sampling


def sample_pl_slates(
    weights: np.ndarray, n_slates: int, slate_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n_slates`` PL slates (n, K) int32 from one weight row (I,).

    Exact sequential sampling by the inverse CDF over the items not yet shown:
    a uniform draw on [0, remaining mass) is moved past the intervals of the
    items already chosen (in item order), then located in the cumulative
    weights. Each rank costs O(k) vector operations plus one binary search, with
    no rejection loop; a draw that rounding sends onto a chosen item (a
    probability near 1e-16) is redrawn. Items with weight below ~1e-16 of the
    total cannot be drawn, while their exact propensity is reported.
    """
    weights = np.asarray(weights, dtype=np.float64)
    ends = np.cumsum(weights)
    starts = ends - weights
    width = ends - starts
    n_items = weights.size
    slates = np.empty((n_slates, slate_size), dtype=np.int64)
    taken = np.zeros(n_slates)
    for rank in range(slate_size):
        todo = np.arange(n_slates)
        while todo.size:
            x = rng.random(todo.size) * (ends[-1] - taken[todo])
            if rank:
                holes = np.sort(slates[todo, :rank], axis=1)
                for col in range(rank):
                    item = holes[:, col]
                    x += np.where(x >= starts[item], width[item], 0.0)
            pick = np.minimum(np.searchsorted(ends, x, side="right"), n_items - 1)
            slates[todo, rank] = pick
            bad = (weights[pick] <= 0)
            if rank:
                bad |= (slates[todo, :rank] == pick[:, None]).any(axis=1)
            todo = todo[bad]
        taken += width[slates[:, rank]]
    return slates.astype(np.int32)


# ----------------------------------------------------------------- RandPair


def draw_swaps(n_visits: int, slate_size: int, share: float,
               rng: np.random.Generator) -> np.ndarray:
    """Swap partner per visit (n,) int8: 0 for no swap, else k uniform in 2..K.

    Exactly round(share * n) visits, chosen uniformly without replacement, are
    swapped (a fixed share, as an experiment would schedule it), so a log's
    training part has the same size whatever the seed."""
    partner = np.zeros(n_visits, dtype=np.int8)
    if slate_size < 2 or share == 0.0:
        return partner
    swapped = rng.permutation(n_visits)[: int(round(share * n_visits))]
    partner[swapped] = rng.integers(2, slate_size + 1, size=swapped.size)
    return partner


def swap_composed(p_rank: np.ndarray) -> np.ndarray:
    """Displayed-position marginals of a swapped visit from policy p_rank (..., K).

    p_swap[..., 0] = mean_{k>=2} p_rank[..., k-1];
    p_swap[..., j-1] = p_rank[..., 0] / (K-1) + (K-2)/(K-1) p_rank[..., j-1], j >= 2.
    """
    k = p_rank.shape[-1]
    check(k >= 2, "slate_size", "at least 2 for a swap", k)
    out = np.empty_like(p_rank)
    out[..., 0] = p_rank[..., 1:].mean(axis=-1)
    out[..., 1:] = (p_rank[..., :1] + (k - 2) * p_rank[..., 1:]) / (k - 1)
    return out


# -------------------------------------------------------------------- policies


@dataclass(frozen=True, eq=False)
class SlatePolicy:
    """A logging policy over ``n_items`` items showing slates of ``slate_size``.

    kind: one of POLICIES; epsilon: share of uniform slates; log_weights: (R, I)
    float64 PL log-weights, R = 1 when shared by all users (popularity) and
    R = U for per-user policies (softmax, model); None for uniform.
    """

    kind: str
    n_items: int
    slate_size: int
    epsilon: float = 0.0
    log_weights: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def per_user(self) -> bool:
        return self.log_weights is not None and self.log_weights.shape[0] > 1

    def weights(self) -> np.ndarray | None:
        """PL weights (R, I), each row scaled to max 1; None for uniform."""
        if self.log_weights is None:
            return None
        if "weights" not in self._cache:
            lw = self.log_weights
            self._cache["weights"] = np.exp(lw - lw.max(axis=1, keepdims=True))
        return self._cache["weights"]

    def rows(self, users: np.ndarray) -> np.ndarray:
        """Weight row of each user (n,)."""
        users = np.asarray(users)
        return users if self.per_user else np.zeros(users.shape, dtype=np.int64)

    def p_rank_table(self) -> np.ndarray:
        """Exact p_rank (R, I, K) of the policy (mixture included); cached."""
        if "p_rank" not in self._cache:
            k, n = self.slate_size, self.n_items
            uniform = np.full((1, n, k), 1.0 / n)
            if self.kind == "uniform":
                table = uniform
            else:
                table = pl_rank_probabilities(self.weights(), k)
                if self.epsilon > 0:
                    table = self.epsilon * uniform + (1 - self.epsilon) * table
            self._cache["p_rank"] = table
        return self._cache["p_rank"]

    def p_shown_table(self) -> np.ndarray:
        """Exact p_shown (R, I) = sum_k p_rank."""
        return self.p_rank_table().sum(axis=-1)

    def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One slate (n, K) int32 per entry of ``users`` (n,)."""
        users = np.asarray(users)
        n, k = users.size, self.slate_size
        uniform_rng, pl_rng = rng.spawn(2)
        if self.kind == "uniform":
            return sample_pl_slates(np.ones(self.n_items), n, k, uniform_rng)
        slates = np.empty((n, k), dtype=np.int32)
        is_uniform = uniform_rng.random(n) < self.epsilon
        if is_uniform.any():
            slates[is_uniform] = sample_pl_slates(
                np.ones(self.n_items), int(is_uniform.sum()), k, uniform_rng)
        todo = np.flatnonzero(~is_uniform)
        weights = self.weights()
        if not self.per_user:
            slates[todo] = sample_pl_slates(weights[0], todo.size, k, pl_rng)
            return slates
        order = todo[np.argsort(users[todo], kind="stable")]
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        for block in np.split(order, bounds):
            if block.size:
                slates[block] = sample_pl_slates(weights[users[block[0]]], block.size,
                                                 k, pl_rng)
        return slates

    def slate_logprob(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Exact log P(slate | user) (n,) of ordered slates (n, K), mixture included."""
        slates = check_slates(slates, self.n_items)
        n, k = slates.shape
        check(k == self.slate_size, "slates", f"{self.slate_size} columns", k)
        log_uniform = -float(np.sum(np.log(np.arange(self.n_items - k + 1,
                                                     self.n_items + 1))))
        if self.kind == "uniform":
            return np.full(n, log_uniform)
        weights = self.weights()
        if self.per_user:
            log_pl = pl_slate_logprob(weights, slates, self.rows(users))
        else:
            log_pl = pl_slate_logprob(weights[0], slates)
        if self.epsilon == 0.0:
            return log_pl
        return np.logaddexp(math.log(self.epsilon) + log_uniform,
                            math.log1p(-self.epsilon) + log_pl)

    def swapped_slate_logprob(self, users: np.ndarray, slates: np.ndarray
                              ) -> np.ndarray:
        """log P(displayed slate | user, swapped visit) (n,): the mean over k = 2..K
        of the policy's probability of the slate with ranks 1 and k exchanged."""
        slates = check_slates(slates, self.n_items)
        k = slates.shape[1]
        check(k >= 2, "slates", "at least 2 columns for a swap", k)
        parts = []
        for partner in range(1, k):
            original = slates.copy()
            original[:, [0, partner]] = slates[:, [partner, 0]]
            parts.append(self.slate_logprob(users, original))
        stacked = np.stack(parts, axis=1)
        top = stacked.max(axis=1)
        return top + np.log(np.exp(stacked - top[:, None]).mean(axis=1))


def make_policy(
    world: World,
    cfg: ExposureConfig,
    rng: np.random.Generator,
    scores: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SlatePolicy:
    """Build the policy ``cfg.policy`` for ``world``.

    ``rng`` draws the production-score noise (softmax only). ``scores`` is
    required for ``model``: a callable mapping user ids (n,) to scores (n, I).
    """
    n_users, n_items = world.n_users, world.n_items
    check_slate_size(cfg.slate_size, n_items)
    k, eps = cfg.slate_size, cfg.epsilon
    if cfg.policy == "uniform":
        return SlatePolicy("uniform", n_items, k, 0.0, None)
    if cfg.policy == "popularity":
        log_weights = cfg.popularity_gamma * np.log(world.popularity)[None, :]
    elif cfg.policy == "softmax":
        noise = rng.normal(0.0, cfg.score_noise, size=(n_users, n_items))
        log_weights = (world.score.astype(np.float64) + noise) / cfg.temperature
    else:
        check(callable(scores), "scores", "a callable users -> (n, I) scores for "
              "exposure.policy = 'model'", scores)
        model_scores = np.asarray(scores(np.arange(n_users)), dtype=np.float64)
        check(model_scores.shape == (n_users, n_items), "scores(users)",
              f"an array of shape ({n_users}, {n_items})", model_scores.shape)
        check(bool(np.isfinite(model_scores).all()), "scores(users)",
              "finite", "an array with NaN or inf")
        log_weights = model_scores / cfg.temperature
    policy = SlatePolicy(cfg.policy, n_items, k, eps, log_weights.astype(np.float64))
    _check_weights(policy.weights(), k, "exposure policy weights")
    return policy
