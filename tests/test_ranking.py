"""Ranking and exposure metrics on hand-computed cases, edge cases and refusals."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from estimators.ranking import (
    auc,
    coverage_at_k,
    gini_exposure,
    hr_at_k,
    mean_popularity,
    mrr,
    ndcg_at_k,
    recall_at_k,
    top_k,
)
from sim.config import ConfigError

D2, D3 = 1.0, 1.0 / np.log2(3.0)  # discounts at positions 1 and 2


def row(*values):
    return np.array([values], dtype=float)


def all_candidates(scores):
    return np.ones(np.shape(scores), dtype=bool)


# ------------------------------------------------------------------- NDCG

def test_ndcg_hand_computed():
    scores, gain = row(4, 3, 2, 1), row(0, 1, 0, 0.5)
    result = ndcg_at_k(scores, gain, all_candidates(scores), k=2)
    assert result.value == pytest.approx(D3 / (D2 + 0.5 * D3))
    assert (result.n_users, result.n_excluded) == (1, 0)


def test_ndcg_tie_across_cutoff_gets_average_discount_of_its_positions():
    # Positions 2..4 are tied; K = 2, so the relevant item's expected discount
    # is (d(2) + 0 + 0) / 3 wherever the label sits inside the group.
    for relevant in (1, 2, 3):
        gain = np.zeros((1, 5))
        gain[0, relevant] = 1.0
        result = ndcg_at_k(row(3, 2, 2, 2, 1), gain, np.ones((1, 5), bool), k=2)
        assert result.value == pytest.approx(D3 / 3)


def test_ndcg_constant_scores_earn_the_random_baseline():
    gain = row(1.0, 0.0, 0.0, 0.0)
    result = ndcg_at_k(row(0, 0, 0, 0), gain, all_candidates(gain), k=4)
    expected = np.mean(1.0 / np.log2(np.arange(2, 6)))
    assert result.value == pytest.approx(expected)


def test_ndcg_fewer_candidates_than_k_ranks_all_and_ignores_masked_items():
    # Item 1 is masked: its large gain is neither ranked nor in the ideal.
    scores, gain = row(1, 2, 3), row(1, 5, 0)
    candidates = np.array([[True, False, True]])
    result = ndcg_at_k(scores, gain, candidates, k=5)
    assert result.value == pytest.approx(D3 / D2)


def test_ndcg_excludes_and_counts_users_without_gain_or_candidates():
    scores = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    gain = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    candidates = np.array([[True, True], [True, True], [False, False]])
    result = ndcg_at_k(scores, gain, candidates, k=1)
    assert (result.n_users, result.n_excluded) == (1, 2)
    assert result.value == 1.0
    assert result.users.tolist() == [0] and result.per_user.tolist() == [1.0]


# ------------------------------------------------- recall, hit rate, MRR, AUC

def test_recall_denominator_is_min_of_k_and_relevant_count():
    scores, relevance = row(5, 4, 3, 2, 1), row(1, 0, 1, 1, 1)
    candidates = all_candidates(scores)
    assert recall_at_k(scores, relevance, candidates, 2).value == pytest.approx(1 / 2)
    assert recall_at_k(scores, relevance, candidates, 3).value == pytest.approx(2 / 3)
    assert recall_at_k(scores, relevance, candidates, 10).value == 1.0


def test_recall_and_hit_rate_with_tie_group_across_cutoff():
    scores = row(3, 2, 2, 2, 1)
    candidates = all_candidates(scores)
    one, two = row(0, 1, 0, 0, 0), row(0, 1, 1, 0, 0)
    # One slot left inside K = 2 for a group of three.
    assert recall_at_k(scores, one, candidates, 2).value == pytest.approx(1 / 3)
    assert hr_at_k(scores, one, candidates, 2).value == pytest.approx(1 / 3)
    assert recall_at_k(scores, two, candidates, 2).value == pytest.approx(1 / 3)
    assert hr_at_k(scores, two, candidates, 2).value == pytest.approx(2 / 3)
    # A relevant item strictly above the tie makes the hit certain.
    assert hr_at_k(scores, row(1, 0, 0, 0, 0), candidates, 2).value == 1.0
    assert hr_at_k(scores, row(0, 0, 0, 0, 1), candidates, 2).value == 0.0


def test_hit_rate_fewer_candidates_and_exclusion():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    relevance = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]])
    candidates = np.array([[True, False, True], [True] * 3, [False] * 3])
    result = hr_at_k(scores, relevance, candidates, 5)
    assert (result.value, result.n_users, result.n_excluded) == (1.0, 1, 2)


def test_mrr_hand_computed_with_and_without_ties():
    candidates = np.ones((1, 4), bool)
    assert mrr(row(4, 3, 2, 1), row(0, 0, 1, 1), candidates).value == 1 / 3
    # First relevant inside a tie group of three, one relevant: uniform offset.
    assert mrr(row(2, 2, 2, 1), row(0, 1, 0, 1), candidates).value == pytest.approx(
        (1 + 1 / 2 + 1 / 3) / 3)
    # Two relevant among three tied: P(first at 1) = 2/3, at 2 = 1/3.
    assert mrr(row(2, 2, 2, 1), row(1, 1, 0, 0), candidates).value == pytest.approx(
        2 / 3 + 1 / 6)
    # The group starts at position 2 after a non-relevant leader.
    assert mrr(row(9, 2, 2, 1), row(0, 1, 0, 0), candidates).value == pytest.approx(
        (1 / 2 + 1 / 3) / 2)


def test_mrr_runs_over_the_full_candidate_list_and_skips_masked_items():
    scores, relevance = row(6, 5, 4, 3, 2, 1), row(1, 0, 0, 0, 0, 1)
    candidates = np.array([[False, True, True, True, True, True]])
    assert mrr(scores, relevance, candidates).value == pytest.approx(1 / 5)


def test_auc_hand_computed_ties_count_half():
    scores, relevance = row(3, 2, 2, 1), row(1, 0, 1, 0)
    assert auc(scores, relevance, all_candidates(scores)).value == 3.5 / 4


def test_auc_needs_both_classes():
    scores = np.array([[3.0, 2.0], [3.0, 2.0], [1.0, 2.0]])
    relevance = np.array([[1, 1], [0, 0], [1, 0]])
    result = auc(scores, relevance, np.ones((3, 2), bool))
    assert (result.value, result.n_users, result.n_excluded) == (0.0, 1, 2)


def _brute_force(scores, relevance, gain, candidates, k):
    """Every metric averaged over every score-consistent order, per user."""
    out = {name: [] for name in ("ndcg", "recall", "hr", "mrr", "auc")}
    for u in range(scores.shape[0]):
        items = np.flatnonzero(candidates[u])
        orders = [p for p in itertools.permutations(items)
                  if np.all(np.diff(scores[u, list(p)]) <= 0)]
        n_rel = relevance[u, items].sum()
        ideal = sum(g / np.log2(j + 2)
                    for j, g in enumerate(sorted(gain[u, items], reverse=True)[:k]))
        per = {name: [] for name in out}
        for order in orders:
            dcg = sum(gain[u, i] / np.log2(j + 2) for j, i in enumerate(order[:k]))
            hits = sum(relevance[u, i] for i in order[:k])
            firsts = [j + 1 for j, i in enumerate(order) if relevance[u, i]]
            per["ndcg"].append(dcg / ideal if ideal > 0 else np.nan)
            per["recall"].append(hits / min(k, n_rel) if n_rel else np.nan)
            per["hr"].append(float(hits > 0) if n_rel else np.nan)
            per["mrr"].append(1 / firsts[0] if firsts else np.nan)
        rel = items[relevance[u, items] == 1]
        neg = items[relevance[u, items] == 0]
        pairs = [float(scores[u, i] > scores[u, j])
                 + 0.5 * (scores[u, i] == scores[u, j]) for i in rel for j in neg]
        for name in ("ndcg", "recall", "hr", "mrr"):
            out[name].append(np.mean(per[name]) if orders else np.nan)
        out["auc"].append(np.mean(pairs) if pairs else np.nan)
    return {name: np.array(values) for name, values in out.items()}


def test_every_metric_equals_the_average_over_all_tie_breaking_orders():
    rng = np.random.default_rng(7)
    for _ in range(15):
        scores = rng.integers(0, 3, (4, 6)).astype(float)
        relevance = (rng.random((4, 6)) < 0.4).astype(int)
        gain = rng.random((4, 6)) * relevance
        candidates = rng.random((4, 6)) < 0.85
        k = int(rng.integers(1, 6))
        expected = _brute_force(scores, relevance, gain, candidates, k)
        metrics = {
            "ndcg": lambda: ndcg_at_k(scores, gain, candidates, k),
            "recall": lambda: recall_at_k(scores, relevance, candidates, k),
            "hr": lambda: hr_at_k(scores, relevance, candidates, k),
            "mrr": lambda: mrr(scores, relevance, candidates),
            "auc": lambda: auc(scores, relevance, candidates),
        }
        for name, metric in metrics.items():
            kept = np.flatnonzero(~np.isnan(expected[name]))
            if kept.size == 0:
                with pytest.raises(ConfigError, match="every one of the 4 users"):
                    metric()
                continue
            result = metric()
            assert result.users.tolist() == kept.tolist(), name
            assert result.n_excluded == 4 - kept.size, name
            np.testing.assert_allclose(result.per_user, expected[name][kept],
                                       rtol=1e-12, err_msg=name)


def test_metrics_are_fast_at_1000_users_by_2000_items():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(1000, 2000))
    gain = rng.random((1000, 2000))
    relevance = gain < 0.05
    candidates = rng.random((1000, 2000)) < 0.95
    calls = [
        lambda: ndcg_at_k(scores, gain, candidates, 10),
        lambda: recall_at_k(scores, relevance, candidates, 10),
        lambda: hr_at_k(scores, relevance, candidates, 10),
        lambda: mrr(scores, relevance, candidates),
        lambda: auc(scores, relevance, candidates),
        lambda: top_k(scores, candidates, 10),
    ]
    for call in calls:
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        assert min(seconds) < 1.0


# ----------------------------------------------------------- exposure metrics

def test_top_k_ties_padding_and_random_tie_breaking():
    scores = np.array([[1.0, 3.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    candidates = np.array([[True] * 4, [True, False, False, False]])
    topk = top_k(scores, candidates, 3)
    assert topk.tolist() == [[1, 2, 0], [0, -1, -1]]
    firsts = {int(top_k(scores, candidates, 1, np.random.default_rng(s))[0, 0])
              for s in range(20)}
    assert firsts == {1, 2}


def test_gini_hand_computed_and_extremes():
    # Counts over 4 items: 2, 1, 1, 0; sorted 0, 1, 1, 2:
    # (-3*0 - 1*1 + 1*1 + 3*2) / (4 * 4) = 6/16.
    assert gini_exposure(np.array([[0, 1], [0, 2]]), 4) == 0.375
    assert gini_exposure(np.array([[0, 1], [2, 3]]), 4) == 0.0
    assert gini_exposure(np.array([[0], [0]]), 4) == 0.75  # (n - 1) / n
    assert gini_exposure(np.array([[0, -1], [1, -1]]), 2) == 0.0  # padding skipped


def test_coverage_and_mean_popularity_hand_computed():
    topk = np.array([[0, 1], [2, -1], [-1, -1]])
    assert coverage_at_k(topk, 4) == 0.75
    popularity = np.array([1.0, 0.5, 0.25, 0.1])
    # Users: (1 + 0.5) / 2 and 0.25 / 1; the empty list is skipped.
    assert mean_popularity(topk, popularity) == 0.5


# ------------------------------------------------------------------ refusals

S = np.array([[1.0, 2.0], [3.0, 4.0]])
C = np.ones((2, 2), bool)
G = np.array([[0.0, 1.0], [1.0, 0.0]])

BAD = [
    ("k-zero", lambda: ndcg_at_k(S, G, C, 0), r"k must be an integer >= 1, got 0"),
    ("k-float", lambda: recall_at_k(S, G, C, 2.0),
     r"k must be an integer >= 1, got 2.0"),
    ("scores-1d", lambda: ndcg_at_k(S[0], G, C, 1),
     r"scores must be a 2-d \(users, items\) array, got shape \(2,\)"),
    ("scores-nan", lambda: ndcg_at_k(np.array([[1.0, np.nan], [0, 0]]), G, C, 1),
     r"scores must be finite, got nan \(user 0, item 1\)"),
    ("scores-empty", lambda: auc(np.zeros((0, 3)), np.zeros((0, 3)),
                                 np.zeros((0, 3), bool)),
     r"scores must have at least one user and one item, got shape \(0, 3\)"),
    ("candidates-int", lambda: ndcg_at_k(S, G, C.astype(int), 1),
     r"candidates must be a bool array, got dtype int"),
    ("candidates-shape", lambda: ndcg_at_k(S, G, C[:1], 1),
     r"candidates must have the shape of scores \(2, 2\), got \(1, 2\)"),
    ("gain-shape", lambda: ndcg_at_k(S, G[:, :1], C, 1),
     r"gain must have the shape of scores \(2, 2\), got \(2, 1\)"),
    ("gain-negative", lambda: ndcg_at_k(S, -G, C, 1),
     r"gain must be >= 0, got -1.0 \(user 0, item 1\)"),
    ("gain-inf", lambda: ndcg_at_k(S, G + np.inf, C, 1),
     r"gain must be finite, got inf \(user 0, item 0\)"),
    ("relevance-graded", lambda: hr_at_k(S, G * 0.5, C, 1),
     r"relevance must be 0 or 1, got 0.5 \(user 0, item 1\)"),
    ("relevance-text", lambda: mrr(S, np.array([["a", "b"], ["c", "d"]]), C),
     r"relevance must be numeric, got dtype <U1"),
    ("all-excluded", lambda: mrr(S, np.zeros((2, 2)), C),
     r"mrr: every one of the 2 users was excluded"),
    ("all-masked", lambda: auc(S, G, ~C), r"auc: every one of the 2 users"),
    ("rng-int", lambda: top_k(S, C, 1, rng=3),
     r"rng must be a numpy.random.Generator or None, got int"),
    ("n-items-zero", lambda: gini_exposure(np.array([[0]]), 0),
     r"n_items must be an integer >= 1, got 0"),
    ("topk-1d", lambda: coverage_at_k(np.array([0, 1]), 3),
     r"topk must be a non-empty 2-d \(users, K\) array, got shape \(2,\)"),
    ("topk-float", lambda: coverage_at_k(np.array([[0.0, 1.0]]), 3),
     r"topk must hold integer item ids, got dtype float64"),
    ("topk-range", lambda: gini_exposure(np.array([[0, 3]]), 3),
     r"topk item ids must be in \[0, 3\) or -1 for padding, got 3 \(user 0, item 1\)"),
    ("topk-repeat", lambda: gini_exposure(np.array([[1, 2], [2, 2]]), 3),
     r"topk must not repeat an item within a list, got item 2 twice \(user 1\)"),
    ("topk-only-padding", lambda: coverage_at_k(np.array([[-1, -1]]), 3),
     r"topk must recommend at least one item, got only padding"),
    ("popularity-2d", lambda: mean_popularity(np.array([[0]]), np.ones((2, 2))),
     r"popularity must be a non-empty 1-d \(items,\) array, got shape \(2, 2\)"),
    ("popularity-negative", lambda: mean_popularity(np.array([[0]]),
                                                    np.array([1.0, -2.0])),
     r"popularity must be finite and >= 0, got -2.0 \(item 1\)"),
]


@pytest.mark.parametrize("call, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
