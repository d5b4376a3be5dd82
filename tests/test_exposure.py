"""Slate policies: exact propensities against enumeration and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sim.config import ConfigError
from sim.exposure import (
    ExposureConfig,
    InterventionConfig,
    SlatePolicy,
    _pl_chunk,
    check_slates,
    make_policy,
    pl_rank_probabilities,
    pl_slate_logprob,
    sample_pl_slates,
    swap_composed,
)
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world


def enumerate_pl(weights, k):
    """All ordered slates of size k with their PL probabilities (exact sums)."""
    n = len(weights)
    slates, probs = [], []
    for slate in itertools.permutations(range(n), k):
        left, p = set(range(n)), 1.0
        for item in slate:
            p *= weights[item] / math.fsum(weights[j] for j in left)
            left.discard(item)
        slates.append(slate)
        probs.append(p)
    return np.array(slates), np.array(probs)


def brute_p_rank(weights, k):
    slates, probs = enumerate_pl(weights, k)
    out = np.zeros((len(weights), k))
    for slate, p in zip(slates, probs):
        out[slate, np.arange(k)] += p
    return out


def within_4se(counts, n_draws, p):
    """Frequencies counts/n_draws within 4 binomial SE of p (cells with p > 0)."""
    se = np.sqrt(p * (1 - p) / n_draws)
    return np.abs(counts / n_draws - p) <= 4 * se + 1e-12


WEIGHT_SETS = {
    "flat": np.ones(6),
    "mild": np.exp(np.random.default_rng(0).normal(0, 1, 6)),
    "skewed": np.exp(np.random.default_rng(1).normal(0, 4, 6)),
    "zipf": 1.0 / np.arange(1, 7),
    "one-zero": np.array([3.0, 1.0, 0.0, 0.5, 2.0, 1.0]),
}


ENUMERATED = [(name, k) for name in WEIGHT_SETS for k in (1, 3, 6)
              if (WEIGHT_SETS[name] > 0).sum() >= k]


@pytest.mark.parametrize("name, k", ENUMERATED,
                         ids=[f"{n}-k{k}" for n, k in ENUMERATED])
def test_pl_marginals_match_enumeration(name, k):
    weights = WEIGHT_SETS[name]
    exact = pl_rank_probabilities(weights, k)[0]
    brute = brute_p_rank(weights, k)
    assert np.abs(exact - brute).max() <= 1e-9
    positive = brute > 1e-300
    assert (np.abs(exact - brute)[positive] / brute[positive]).max() <= 1e-6
    assert np.all(exact[~positive] == 0.0)


def test_pl_marginals_on_a_seven_item_catalogue_with_k4():
    weights = np.exp(np.random.default_rng(2).normal(0, 2, 7))
    exact = pl_rank_probabilities(weights, 4)[0]
    assert np.abs(exact - brute_p_rank(weights, 4)).max() <= 1e-9


CATALOGUES = {
    "zipf-500": (1.0 / np.arange(1, 501))[None, :],
    "zipf2-300": (np.arange(1, 301) ** -2.0)[None, :],
    "softmax-rows": np.exp(np.random.default_rng(3).normal(0, 3.2, (4, 400))),
    "extreme-rows": np.exp(np.random.default_rng(4).normal(0, 10, (2, 300))),
    "flat-200": np.ones((1, 200)),
}


@pytest.mark.parametrize("name", list(CATALOGUES))
def test_pl_identities_hold(name):
    weights = CATALOGUES[name]
    k = 10
    p_rank = pl_rank_probabilities(weights, k)
    assert np.all(p_rank >= 0)
    assert np.allclose(p_rank.sum(axis=1), 1.0, rtol=0, atol=1e-8)  # each rank
    p_shown = p_rank.sum(axis=2)
    assert np.all(p_shown <= 1 + 1e-9)
    assert np.allclose(p_shown.sum(axis=1), k, rtol=0, atol=1e-7)
    assert np.allclose(p_rank[..., 0], weights / weights.sum(axis=1, keepdims=True),
                       rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["zipf-500", "softmax-rows", "extreme-rows"])
def test_division_for_light_items_matches_prefix_suffix_reference(name):
    # The reference treats every item by prefix and suffix products (no division)
    # at a finer step: agreement bounds both the division and the step error.
    weights = CATALOGUES[name]
    weights = weights / weights.max(axis=1, keepdims=True)
    fast = pl_rank_probabilities(weights, 10)
    ref = np.concatenate([_pl_chunk(weights[r:r + 1], 10, 0.1, all_heavy=True)
                          for r in range(weights.shape[0])])
    positive = ref > 1e-280
    rel = np.abs(fast - ref)[positive] / ref[positive]
    assert rel.max() <= 1e-8


def test_pl_sampler_frequencies_match_exact_marginals():
    weights = np.array([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.25, 0.1])
    k, n_draws = 3, 200_000
    slates = sample_pl_slates(weights, n_draws, k, np.random.default_rng(5))
    assert np.all(np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1])
    counts = np.zeros((len(weights), k))
    for rank in range(k):
        counts[:, rank] = np.bincount(slates[:, rank], minlength=len(weights))
    exact = pl_rank_probabilities(weights, k)[0]
    assert within_4se(counts, n_draws, exact).all()


def test_slate_frequencies_match_exact_slate_probabilities():
    weights = np.array([4.0, 2.0, 1.0, 0.5, 0.25])
    k, n_draws = 2, 100_000
    slates, probs = enumerate_pl(weights, k)
    drawn = sample_pl_slates(weights, n_draws, k, np.random.default_rng(6))
    code = drawn[:, 0] * 5 + drawn[:, 1]
    counts = np.bincount(code, minlength=25)[slates[:, 0] * 5 + slates[:, 1]]
    assert within_4se(counts, n_draws, probs).all()
    assert np.allclose(np.exp(pl_slate_logprob(weights, slates)), probs, rtol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_slate_logprobs_sum_to_one_over_all_ordered_slates(eps):
    world = sample_world(WorldConfig(n_users=3, n_items=5, dim=2), MUSIC_MARGINAL,
                         np.random.default_rng(7))
    cfg = ExposureConfig(policy="softmax", slate_size=3, epsilon=eps)
    policy = make_policy(world, cfg, np.random.default_rng(8))
    slates = np.array(list(itertools.permutations(range(5), 3)))
    for user in range(3):
        users = np.full(len(slates), user)
        total = np.exp(policy.slate_logprob(users, slates)).sum()
        assert total == pytest.approx(1.0, abs=1e-12)
        swapped = np.exp(policy.swapped_slate_logprob(users, slates)).sum()
        assert swapped == pytest.approx(1.0, abs=1e-12)
        # Marginal of the slate probabilities equals the exact p_rank table.
        probs = np.exp(policy.slate_logprob(users, slates))
        marg = np.zeros((5, 3))
        for slate, p in zip(slates, probs):
            marg[slate, np.arange(3)] += p
        assert np.abs(marg - policy.p_rank_table()[user]).max() <= 1e-9


def test_uniform_policy_has_closed_forms_and_matching_frequencies():
    world = sample_world(WorldConfig(n_users=4, n_items=7, dim=2), MUSIC_MARGINAL,
                         np.random.default_rng(9))
    policy = make_policy(world, ExposureConfig(policy="uniform", slate_size=3),
                         np.random.default_rng(0))
    assert np.all(policy.p_rank_table() == 1 / 7)
    assert np.allclose(policy.p_shown_table(), 3 / 7)
    n_draws = 70_000
    slates = policy.sample(np.zeros(n_draws, dtype=int), np.random.default_rng(10))
    counts = np.stack([np.bincount(slates[:, r], minlength=7) for r in range(3)], 1)
    assert within_4se(counts, n_draws, np.full((7, 3), 1 / 7)).all()
    logp = policy.slate_logprob(np.zeros(2, dtype=int), slates[:2])
    assert np.allclose(logp, -math.log(7 * 6 * 5))


@pytest.mark.parametrize("kind", ["popularity", "softmax"])
def test_policy_sampler_matches_its_table_with_uniform_mixture(kind):
    world = sample_world(WorldConfig(n_users=2, n_items=9, dim=2), MUSIC_MARGINAL,
                         np.random.default_rng(11))
    cfg = ExposureConfig(policy=kind, slate_size=4, epsilon=0.25, temperature=1.0)
    policy = make_policy(world, cfg, np.random.default_rng(12))
    n_draws = 60_000
    users = np.repeat([0, 1], n_draws)
    slates = policy.sample(users, np.random.default_rng(13))
    table = policy.p_rank_table()
    for user in (0, 1):
        part = slates[users == user]
        counts = np.stack([np.bincount(part[:, r], minlength=9) for r in range(4)], 1)
        row = policy.rows(np.array([user]))[0]
        assert within_4se(counts, n_draws, table[row]).all()


def test_swap_composition_matches_swapped_frequencies():
    weights = np.array([6.0, 3.0, 2.0, 1.0, 0.5, 0.5])
    k, n_draws = 3, 120_000
    rng = np.random.default_rng(14)
    slates = sample_pl_slates(weights, n_draws, k, rng)
    partner = rng.integers(1, k, size=n_draws)
    rows = np.arange(n_draws)
    shown = slates.copy()
    shown[rows, 0], shown[rows, partner] = slates[rows, partner], slates[rows, 0]
    counts = np.stack([np.bincount(shown[:, r], minlength=6) for r in range(k)], 1)
    composed = swap_composed(pl_rank_probabilities(weights, k)[0])
    assert within_4se(counts, n_draws, composed).all()
    assert np.allclose(composed.sum(axis=0), 1.0)


def test_model_policy_wraps_a_score_callable_as_softmax():
    world = sample_world(WorldConfig(n_users=3, n_items=6, dim=2), MUSIC_MARGINAL,
                         np.random.default_rng(15))
    scores = np.random.default_rng(16).normal(size=(3, 6))
    cfg = ExposureConfig(policy="model", slate_size=2, temperature=0.7)
    policy = make_policy(world, cfg, np.random.default_rng(0),
                         scores=lambda u: scores[u])
    expected = np.exp(scores / 0.7)
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(policy.p_rank_table()[:, :, 0], expected, rtol=1e-12)


def _world(n_items=5):
    return sample_world(WorldConfig(n_users=2, n_items=n_items, dim=2), MUSIC_MARGINAL,
                        np.random.default_rng(0))


BAD = [
    ("policy", lambda: ExposureConfig(policy="greedy"),
     "exposure.policy must be one of"),
    ("slate-0", lambda: ExposureConfig(slate_size=0),
     r"exposure.slate_size must be an integer >= 1, got 0"),
    ("temperature", lambda: ExposureConfig(temperature=0.0),
     r"exposure.temperature must be a number > 0.0, got 0.0"),
    ("epsilon", lambda: ExposureConfig(epsilon=1.5),
     r"exposure.epsilon must be a number >= 0.0 and <= 1.0, got 1.5"),
    ("gamma", lambda: ExposureConfig(popularity_gamma=-1.0),
     r"exposure.popularity_gamma must be a number >= 0.0, got -1.0"),
    ("noise-nan", lambda: ExposureConfig(score_noise=float("nan")),
     r"exposure.score_noise must be a number >= 0.0, got nan"),
    ("visits", lambda: ExposureConfig(visits=0),
     r"exposure.visits must be an integer >= 1, got 0"),
    ("swap-share", lambda: InterventionConfig(swap_share=1.2),
     r"intervention.swap_share must be a number >= 0.0 and <= 1.0, got 1.2"),
    ("train-on-swaps", lambda: InterventionConfig(train_on_swaps="yes"),
     r"intervention.train_on_swaps must be true or false, got 'yes'"),
    ("k-above-catalogue",
     lambda: make_policy(_world(5), ExposureConfig(slate_size=6),
                         np.random.default_rng(0)),
     r"exposure.slate_size must be an integer in \[1, 5\] \(the catalogue size\), "
     r"got 6"),
    ("model-without-scores",
     lambda: make_policy(_world(), ExposureConfig(policy="model", slate_size=2),
                         np.random.default_rng(0)),
     r"scores must be a callable"),
    ("model-bad-shape",
     lambda: make_policy(_world(), ExposureConfig(policy="model", slate_size=2),
                         np.random.default_rng(0), scores=lambda u: np.zeros((2, 3))),
     r"scores\(users\) must be an array of shape \(2, 5\), got \(2, 3\)"),
    ("underflow",
     lambda: make_policy(_world(), ExposureConfig(policy="model", slate_size=2,
                                                  temperature=1e-3),
                         np.random.default_rng(0),
                         scores=lambda u: np.tile([5.0, 0, 0, 0, 0], (2, 1))),
     r"exposure policy weights must have at least slate_size = 2 positive entries "
     r"per row, got 1 \(row 0\)"),
    ("negative-weight", lambda: pl_rank_probabilities(np.array([1.0, -1.0, 2.0]), 2),
     r"weights must be finite and >= 0, got -1.0 \(row 0, item 1\)"),
    ("nan-weight", lambda: pl_rank_probabilities(np.array([1.0, np.nan, 2.0]), 2),
     r"weights must be finite and >= 0, got nan \(row 0, item 1\)"),
    ("k-above-weights", lambda: pl_rank_probabilities(np.ones(3), 4),
     r"slate_size must be an integer in \[1, 3\] \(the catalogue size\), got 4"),
    ("too-few-positive", lambda: pl_rank_probabilities(np.array([1.0, 0, 0]), 2),
     r"weights must have at least slate_size = 2 positive entries per row, got 1"),
    ("step", lambda: pl_rank_probabilities(np.ones(3), 2, step=1.0),
     r"step must be a number > 0.0 and <= 0.5, got 1.0"),
    ("repeated-item", lambda: check_slates(np.array([[0, 1], [2, 2]]), 5),
     r"slates must hold distinct items in each row, got item 2 twice \(row 1\)"),
    ("item-out-of-range", lambda: check_slates(np.array([[0, 7]]), 5),
     r"slates must hold item ids in \[0, 4\], got 7 \(row 0, rank 2\)"),
    ("float-slates", lambda: check_slates(np.array([[0.0, 1.0]]), 5),
     r"slates must be an \(n, K\) integer array"),
    ("logprob-repeat", lambda: pl_slate_logprob(np.ones(4), np.array([[1, 1]])),
     r"slates must hold distinct items in each row, got item 1 twice \(row 0\)"),
    ("policy-logprob-repeat",
     lambda: SlatePolicy("uniform", 4, 2).slate_logprob(np.zeros(1, int),
                                                         np.array([[3, 3]])),
     r"slates must hold distinct items"),
]


@pytest.mark.parametrize("make, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_message(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
