"""Ranking metrics against the truth, and exposure metrics of top-K lists.

Every metric is defined once, here; the README glossary copies these
definitions. Shared notation:

- ``U`` users, ``I`` items, cut-off ``K = k``.
- ``scores`` (U, I): the model's scores ``s_ui``; a higher score ranks higher.
- ``candidates`` (U, I) bool: True where item ``i`` may be ranked for user
  ``u`` (an experiment passes every item except the user's training
  positives). Only candidates are ranked; the others neither take a position
  nor count as relevant.
- ``gain`` (U, I): graded gain ``g_ui >= 0`` for NDCG (the true relevance
  probability ``gamma_ui``); ``relevance`` (U, I): binary ``R_ui`` in {0, 1}
  for recall, hit rate, MRR and AUC.
- Positions ``j = 1, 2, ...`` over a user's candidates sorted by score,
  best first; discount ``d(j) = 1 / log2(j + 1)``.

Edge cases, pinned for every metric:

- **Tied scores** are broken uniformly at random, and the metric is the exact
  expectation over that random order (never a tie-break that reads the
  label). For metrics that are sums over items (DCG, recall, AUC) an item
  whose tie group occupies positions ``a..b`` receives the average of the
  per-position contribution over ``a..b``; a tie group straddling the cut-off
  ``K`` thus gets the average discount of the positions it occupies, zero past
  ``K`` included. Hit rate and MRR use the exact hypergeometric laws of the
  relevant items' positions inside the straddling or first relevant group.
  A model that scores everything equal therefore earns the random baseline,
  exactly.
- **Fewer than K candidates**: all of them are ranked and the sums run over
  the positions available (NDCG's ideal DCG likewise).
- **Users with nothing to find** (no relevant candidate; for NDCG an ideal
  DCG of zero; for AUC no relevant or no non-relevant candidate, users
  with no candidate at all included) are excluded from the average and
  counted in :attr:`MetricResult.n_excluded`. Users are averaged uniformly.
  If every user is excluded the metric is refused rather than returned as
  NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy.special import gammaln

from sim.config import ConfigError

__all__ = [
    "MetricResult",
    "ndcg_at_k",
    "recall_at_k",
    "hr_at_k",
    "mrr",
    "auc",
    "top_k",
    "gini_exposure",
    "coverage_at_k",
    "mean_popularity",
]


class MetricResult(NamedTuple):
    """A metric averaged over users, with who was counted.

    ``value`` is the uniform mean of ``per_user`` over the included users;
    ``n_users`` how many were included, ``n_excluded`` how many were left out
    (see the module docstring for the rule of each metric); ``users``
    (n_users,) int the included users' indices and ``per_user`` (n_users,)
    their values, in the same order.
    """

    value: float
    n_users: int
    n_excluded: int
    users: np.ndarray
    per_user: np.ndarray


# ---------------------------------------------------------------- validation

def _where(mask: np.ndarray) -> str:
    """Position of the first True in a (U, I) mask, as '(user u, item i)'."""
    u, i = np.argwhere(mask)[0]
    return f"(user {u}, item {i})"


def _check_k(k: Any) -> int:
    ok = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
    if not ok:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_matrix(name: str, value: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    """A finite (U, I) array, of the given shape when one is given."""
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-d (users, items) array, "
                          f"got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ConfigError(f"{name} must have the shape of scores {shape}, "
                          f"got {arr.shape}")
    if arr.size == 0:
        raise ConfigError(f"{name} must have at least one user and one item, "
                          f"got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{name} must be numeric, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ConfigError(f"{name} must be finite, got {arr[bad][0].item()!r} "
                          f"{_where(bad)}")
    return arr


def _check_inputs(scores: Any, candidates: Any, k: Any) -> tuple[np.ndarray,
                                                               np.ndarray, int]:
    k = _check_k(k)
    scores = _check_matrix("scores", scores, None).astype(float)
    candidates = np.asarray(candidates)
    if candidates.dtype != bool:
        raise ConfigError(f"candidates must be a bool array, got dtype "
                          f"{candidates.dtype}")
    _check_matrix("candidates", candidates, scores.shape)
    return scores, candidates, k


def _check_relevance(relevance: Any, shape: tuple[int, int]) -> np.ndarray:
    relevance = _check_matrix("relevance", relevance, shape)
    bad = (relevance != 0) & (relevance != 1)
    if bad.any():
        first = relevance[bad][0].item()
        raise ConfigError(f"relevance must be 0 or 1, got {first!r} {_where(bad)}")
    return relevance.astype(bool)


def _result(name: str, per_user: np.ndarray, included: np.ndarray) -> MetricResult:
    if not included.any():
        raise ConfigError(f"{name}: every one of the {included.size} users was "
                          f"excluded (nothing relevant among their candidates); "
                          f"there is nothing to average")
    users = np.flatnonzero(included)
    values = per_user[users].astype(float)
    return MetricResult(float(values.mean()), int(users.size),
                        int(included.size - users.size), users, values)


# ------------------------------------------------------------- tie machinery

class _Ranked(NamedTuple):
    """Candidates sorted by score, best first, every array (U, I) in that order.

    ``first`` and ``last`` are the 1-based positions spanned by the tie group
    of each sorted entry; non-candidates form one trailing group and have
    ``is_candidate`` False; ``n_candidates`` is (U,).
    """

    order: np.ndarray
    first: np.ndarray
    last: np.ndarray
    is_candidate: np.ndarray
    n_candidates: np.ndarray


def _rank(scores: np.ndarray, candidates: np.ndarray) -> _Ranked:
    n_items = scores.shape[1]
    masked = np.where(candidates, scores, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")
    ordered = np.take_along_axis(masked, order, axis=1)
    position = np.arange(n_items)

    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    last = np.where(ends, position, n_items - 1)[:, ::-1]
    last = np.minimum.accumulate(last, axis=1)[:, ::-1]

    is_candidate = np.take_along_axis(candidates, order, axis=1)
    return _Ranked(order, first + 1, last + 1, is_candidate, candidates.sum(axis=1))


def _mean_over_group(per_position: np.ndarray, ranked: _Ranked) -> np.ndarray:
    """Average of ``per_position[j - 1]`` over ``j = first..last``, (U, I) sorted.

    This is the expected contribution of an entry whose position is uniform
    over its tie group.
    """
    cumulative = np.concatenate([[0.0], np.cumsum(per_position)])
    total = cumulative[ranked.last] - cumulative[ranked.first - 1]
    return total / (ranked.last - ranked.first + 1)


def _discount(n_items: int, k: int) -> np.ndarray:
    """``d(j) = 1 / log2(j + 1)`` for ``j <= K``, 0 beyond, over j = 1..I."""
    j = np.arange(1, n_items + 1)
    return np.where(j <= k, 1.0 / np.log2(j + 1.0), 0.0)


def _sorted(values: np.ndarray, ranked: _Ranked) -> np.ndarray:
    """``values`` (U, I) in ranked order, zero (or False) for non-candidates."""
    ordered = np.take_along_axis(values, ranked.order, axis=1)
    if values.dtype == bool:
        return ordered & ranked.is_candidate
    return ordered * ranked.is_candidate


# ------------------------------------------------------------ ranking metrics

def ndcg_at_k(scores: Any, gain: Any, candidates: Any, k: int) -> MetricResult:
    r"""Normalised discounted cumulative gain at K, graded gain, per user.

    .. math::

        \mathrm{DCG}_u = \sum_{j=1}^{\min(K, n_u)} \frac{g_{u,\pi_u(j)}}
        {\log_2(j + 1)}, \qquad
        \mathrm{NDCG@K} = \frac{1}{|U^+|} \sum_{u \in U^+}
        \frac{\mathrm{E}_{\text{ties}}[\mathrm{DCG}_u]}{\mathrm{IDCG}_u}

    where ``pi_u`` orders user ``u``'s ``n_u`` candidates (``candidates[u]``)
    by ``scores[u]``, best first, with ties broken uniformly at random and the
    expectation over that order taken exactly; ``g_ui = gain[u, i] >= 0``;
    ``IDCG_u`` is the DCG of the same candidates sorted by gain; ``U^+`` are the
    users with ``IDCG_u > 0`` (the others are excluded and counted). Gain and
    discount as in Jarvelin and Kekalainen, "Cumulated gain-based evaluation of
    IR techniques", ACM TOIS 2002, with the ``log2(j + 1)`` discount of
    Burges et al., ICML 2005.

    Shapes: ``scores``, ``gain``, ``candidates`` (U, I); returns a
    :class:`MetricResult`, ``value`` in [0, 1].
    """
    scores, candidates, k = _check_inputs(scores, candidates, k)
    gain = _check_matrix("gain", gain, scores.shape).astype(float)
    negative = gain < 0
    if negative.any():
        raise ConfigError(f"gain must be >= 0, got {gain[negative][0].item()!r} "
                          f"{_where(negative)}")

    ranked = _rank(scores, candidates)
    discount = _discount(scores.shape[1], k)
    dcg = (_sorted(gain, ranked) * _mean_over_group(discount, ranked)).sum(axis=1)

    top = min(k, scores.shape[1])
    best = -np.where(candidates, gain, 0.0)
    if top < best.shape[1]:
        best = np.partition(best, top - 1, axis=1)[:, :top]
    best = -np.sort(best, axis=1)
    ideal = best @ discount[:top]
    included = ideal > 0
    return _result("ndcg_at_k", np.divide(dcg, ideal, out=np.zeros_like(dcg),
                                          where=included), included)


def recall_at_k(scores: Any, relevance: Any, candidates: Any, k: int) -> MetricResult:
    r"""Recall at K with the ``min(K, |R_u|)`` denominator, per user.

    .. math::

        \mathrm{Recall@K} = \frac{1}{|U^+|} \sum_{u \in U^+}
        \frac{\mathrm{E}_{\text{ties}}\,|\{\text{relevant in top } K\}|}
        {\min(K, |R_u|)}

    where ``R_u`` is the set of user ``u``'s candidates with
    ``relevance[u, i] == 1`` and ``U^+`` the users with ``R_u`` non-empty.
    The denominator is ``min(K, |R_u|)``, not ``|R_u|``, so that a perfect
    ranking scores 1 whatever the number of relevant items (the normalised
    recall of Liang, Krishnan, Hoffman and Jebara, "Variational autoencoders
    for collaborative filtering", WWW 2018). An item tied across the cut-off
    counts for the share of its group's positions that lie within ``K``.

    Shapes: ``scores``, ``relevance``, ``candidates`` (U, I); returns a
    :class:`MetricResult`, ``value`` in [0, 1].
    """
    scores, candidates, k = _check_inputs(scores, candidates, k)
    relevance = _check_relevance(relevance, scores.shape) & candidates

    ranked = _rank(scores, candidates)
    within = (np.arange(1, scores.shape[1] + 1) <= k).astype(float)
    hits = (_sorted(relevance, ranked) * _mean_over_group(within, ranked)).sum(axis=1)
    n_relevant = relevance.sum(axis=1)
    included = n_relevant > 0
    return _result("recall_at_k", hits / np.maximum(np.minimum(n_relevant, k), 1),
                   included)


def hr_at_k(scores: Any, relevance: Any, candidates: Any, k: int) -> MetricResult:
    r"""Hit rate at K: the probability that the top K holds a relevant item.

    .. math::

        \mathrm{HR@K} = \frac{1}{|U^+|} \sum_{u \in U^+}
        P_{\text{ties}}\big(|\{\text{relevant in top } K\}| \ge 1\big)

    with ``U^+`` the users having a relevant candidate (``relevance == 1``).
    If a relevant item's whole tie group lies within ``K`` the hit is certain;
    otherwise, with the group straddling the cut-off holding ``m`` candidates
    of which ``r`` are relevant and ``s`` positions left within ``K``, the hit
    probability is ``1 - C(m - r, s) / C(m, s)`` (hypergeometric). Hit rate as
    in Deshpande and Karypis, "Item-based top-N recommendation algorithms",
    ACM TOIS 2004.

    Shapes: ``scores``, ``relevance``, ``candidates`` (U, I); returns a
    :class:`MetricResult`, ``value`` in [0, 1].
    """
    scores, candidates, k = _check_inputs(scores, candidates, k)
    relevance = _check_relevance(relevance, scores.shape) & candidates

    ranked = _rank(scores, candidates)
    rel = _sorted(relevance, ranked)
    certain = (rel & (ranked.last <= k)).any(axis=1)

    straddle = ranked.is_candidate & (ranked.first <= k) & (ranked.last > k)
    size = np.where(straddle, ranked.last - ranked.first + 1, 0).max(axis=1)
    slots = np.where(straddle, k - ranked.first + 1, 0).max(axis=1)
    n_rel = (rel & straddle).sum(axis=1)
    misses = size - n_rel
    possible = misses >= slots
    log_miss = (gammaln(misses + 1.0) - gammaln(np.maximum(misses - slots, 0) + 1.0)
                - gammaln(size + 1.0) + gammaln(size - slots + 1.0))
    p_miss = np.where(possible, np.exp(np.where(possible, log_miss, 0.0)), 0.0)
    p_hit = np.where(certain, 1.0, np.where(n_rel > 0, 1.0 - p_miss, 0.0))
    return _result("hr_at_k", p_hit, relevance.any(axis=1))


def mrr(scores: Any, relevance: Any, candidates: Any) -> MetricResult:
    r"""Mean reciprocal rank of the first relevant candidate, full list.

    .. math::

        \mathrm{MRR} = \frac{1}{|U^+|} \sum_{u \in U^+}
        \mathrm{E}_{\text{ties}}\Big[\frac{1}{j_u}\Big]

    where ``j_u`` is the position of the first candidate with
    ``relevance == 1`` in user ``u``'s candidates ranked by score (no cut-off)
    and ``U^+`` the users having one. The first relevant item lies in the
    first tie group holding a relevant candidate; with that group at positions
    ``a..a+m-1`` holding ``r`` relevant candidates, the offset ``X`` of the
    first of them has ``P(X = x) = C(m - x, r - 1) / C(m, r)``, x = 1..m-r+1,
    and ``E[1/j_u] = sum_x P(X = x) / (a - 1 + x)``, computed exactly.
    Reciprocal rank as in Voorhees, "The TREC-8 question answering track
    report", TREC 1999.

    Shapes: ``scores``, ``relevance``, ``candidates`` (U, I); returns a
    :class:`MetricResult`, ``value`` in (0, 1].
    """
    scores, candidates, _ = _check_inputs(scores, candidates, 1)
    relevance = _check_relevance(relevance, scores.shape) & candidates
    included = relevance.any(axis=1)

    ranked = _rank(scores, candidates)
    rel = _sorted(relevance, ranked)
    rows = np.arange(scores.shape[0])
    head = np.argmax(rel, axis=1)  # first relevant entry in sorted order
    start = ranked.first[rows, head]
    size = ranked.last[rows, head] - start + 1
    in_group = (ranked.first == start[:, None]) & rel
    n_rel = in_group.sum(axis=1)

    reciprocal = 1.0 / start  # exact when the group holds one entry
    tied = np.flatnonzero(included & (size > 1))
    if tied.size:
        m, r, a = size[tied, None], n_rel[tied, None], start[tied, None]
        x = np.arange(1, m.max() + 1)[None, :]
        valid = x <= m - r + 1
        top = np.where(valid, m - x, 0)
        log_p = (gammaln(top + 1.0) - gammaln(r) - gammaln(np.maximum(top - r + 1, 0)
                                                           + 1.0)
                 - (gammaln(m + 1.0) - gammaln(r + 1.0) - gammaln(m - r + 1.0)))
        p = np.where(valid, np.exp(np.where(valid, log_p, 0.0)), 0.0)
        reciprocal[tied] = (p / (a - 1 + x)).sum(axis=1)
    return _result("mrr", reciprocal, included)


def auc(scores: Any, relevance: Any, candidates: Any) -> MetricResult:
    r"""Per-user area under the ROC curve, ties counting one half.

    .. math::

        \mathrm{AUC}_u = \frac{1}{|R_u|\,|N_u|} \sum_{i \in R_u} \sum_{j \in N_u}
        \big(1[s_{ui} > s_{uj}] + \tfrac12 1[s_{ui} = s_{uj}]\big)

    where ``R_u`` and ``N_u`` are user ``u``'s relevant and non-relevant
    candidates (``relevance`` 1 and 0 among ``candidates``) and
    ``s = scores``; users with both non-empty are averaged uniformly, the
    others excluded and counted. The half credit for a tie is the expectation
    under random tie-breaking. Computed from mid-ranks (Mann-Whitney U);
    per-user AUC as in Rendle et al., "BPR: Bayesian personalized ranking
    from implicit feedback", UAI 2009.

    Shapes: ``scores``, ``relevance``, ``candidates`` (U, I); returns a
    :class:`MetricResult`, ``value`` in [0, 1].
    """
    scores, candidates, _ = _check_inputs(scores, candidates, 1)
    relevance = _check_relevance(relevance, scores.shape) & candidates

    ranked = _rank(scores, candidates)
    rel = _sorted(relevance, ranked)
    n_cand = ranked.n_candidates[:, None]
    midrank = n_cand + 1 - (ranked.first + ranked.last) / 2.0  # ascending rank
    n_rel = rel.sum(axis=1)
    n_neg = ranked.n_candidates - n_rel
    included = (n_rel > 0) & (n_neg > 0)
    u_stat = (midrank * rel).sum(axis=1) - n_rel * (n_rel + 1) / 2.0
    return _result("auc", u_stat / np.maximum(n_rel * n_neg, 1), included)


# ----------------------------------------------------------- exposure metrics

def top_k(scores: Any, candidates: Any, k: int,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """Each user's K best-scored candidates, best first, (U, K) int.

    Ties are broken uniformly at random with ``rng``, or by the lower item
    index when ``rng`` is None. A user with fewer than ``K`` candidates gets
    them all, padded with -1 (the exposure metrics below skip -1).
    """
    scores, candidates, k = _check_inputs(scores, candidates, k)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator or None, "
                          f"got {type(rng).__name__}")
    masked = np.where(candidates, scores, -np.inf)
    if rng is None:
        order = np.argsort(-masked, axis=1, kind="stable")
    else:
        order = np.lexsort((rng.random(masked.shape), -masked), axis=1)
    order = order[:, :k]
    keep = np.take_along_axis(candidates, order, axis=1)
    topk = np.where(keep, order, -1)
    if k > topk.shape[1]:
        pad = np.full((topk.shape[0], k - topk.shape[1]), -1)
        topk = np.concatenate([topk, pad], axis=1)
    return topk


def _check_topk(topk: Any, n_items: Any) -> np.ndarray:
    ok = isinstance(n_items, (int, np.integer)) and not isinstance(n_items, bool)
    if not (ok and n_items >= 1):
        raise ConfigError(f"n_items must be an integer >= 1, got {n_items!r}")
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.size == 0:
        raise ConfigError(f"topk must be a non-empty 2-d (users, K) array, "
                          f"got shape {topk.shape}")
    if not np.issubdtype(topk.dtype, np.integer):
        raise ConfigError(f"topk must hold integer item ids, got dtype {topk.dtype}")
    bad = (topk < -1) | (topk >= n_items)
    if bad.any():
        raise ConfigError(f"topk item ids must be in [0, {n_items}) or -1 for "
                          f"padding, got {topk[bad][0]} {_where(bad)}")
    ordered = np.sort(topk, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        u = int(np.argwhere(repeated)[0, 0])
        raise ConfigError(f"topk must not repeat an item within a list, got item "
                          f"{ordered[:, 1:][repeated][0]} twice (user {u})")
    if not (topk >= 0).any():
        raise ConfigError("topk must recommend at least one item, got only "
                          "padding (-1)")
    return topk


def _exposure_counts(topk: np.ndarray, n_items: int) -> np.ndarray:
    return np.bincount(topk[topk >= 0], minlength=n_items)


def gini_exposure(topk: Any, n_items: int) -> float:
    r"""Gini coefficient of how often each item is recommended.

    .. math::

        G = \frac{\sum_{j=1}^{n} (2j - n - 1)\, c_{(j)}}{n \sum_{j=1}^{n} c_{(j)}}

    where ``c_(1) <= ... <= c_(n)`` are the counts of appearances of each of
    the ``n = n_items`` catalogue items over all lists in ``topk`` (U, K)
    (items never recommended count 0; padding -1 is skipped). ``G = 0`` when
    every item is recommended equally often, and reaches its maximum
    ``(n - 1) / n``, close to 1, when one item takes every slot. As a measure
    of exposure concentration see Fleder and Hosanagar, "Blockbuster culture's
    next rise or fall", Management Science 2009.
    """
    topk = _check_topk(topk, n_items)
    counts = np.sort(_exposure_counts(topk, n_items)).astype(float)
    j = np.arange(1, n_items + 1)
    return float(((2 * j - n_items - 1) @ counts) / (n_items * counts.sum()))


def coverage_at_k(topk: Any, n_items: int) -> float:
    """Catalogue coverage: share of the ``n_items`` items in at least one list.

    ``topk`` (U, K) item ids (-1 padding skipped); returns a value in (0, 1].
    Catalogue coverage as in Ge, Delgado-Battenfeld and Jannach, "Beyond
    accuracy: evaluating recommender systems by coverage and serendipity",
    RecSys 2010.
    """
    topk = _check_topk(topk, n_items)
    return float((_exposure_counts(topk, n_items) > 0).mean())


def mean_popularity(topk: Any, popularity: Any) -> float:
    r"""Average recommendation popularity (ARP).

    .. math::

        \mathrm{ARP} = \frac{1}{|U'|} \sum_{u \in U'} \frac{1}{|L_u|}
        \sum_{i \in L_u} \phi_i

    where ``L_u`` is user ``u``'s list in ``topk`` (U, K) without padding -1,
    ``U'`` the users with a non-empty list, and ``phi = popularity`` (I,),
    finite and >= 0 (whatever popularity measure the caller passes). As in
    Abdollahpouri, Burke and Mobasher, "Managing popularity bias in
    recommender systems with personalized re-ranking", FLAIRS 2019.
    """
    popularity = np.asarray(popularity, dtype=float)
    if popularity.ndim != 1 or popularity.size == 0:
        raise ConfigError(f"popularity must be a non-empty 1-d (items,) array, "
                          f"got shape {popularity.shape}")
    bad = ~np.isfinite(popularity) | (popularity < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"popularity must be finite and >= 0, got "
                          f"{popularity[i].item()!r} (item {i})")
    topk = _check_topk(topk, popularity.size)
    shown = topk >= 0
    per_slot = np.where(shown, popularity[np.maximum(topk, 0)], 0.0)
    n_shown = shown.sum(axis=1)
    users = n_shown > 0
    return float((per_slot.sum(axis=1)[users] / n_shown[users]).mean())
