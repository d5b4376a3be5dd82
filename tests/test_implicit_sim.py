"""Relevance, behaviour, the impression log and p_expose_pair against closed forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sim.behaviour import (
    ClickConfig,
    EngagementConfig,
    ExaminationConfig,
    p_examine_by_rank,
    react,
)
from sim.config import ConfigError
from sim.exposure import ExposureConfig, InterventionConfig, make_policy, swap_composed
from sim.implicit import (
    LOG_COLUMNS,
    PAIR_COLUMNS,
    TRUTH_COLUMNS,
    clicks_by_pair,
    p_expose_pair,
    simulate_implicit,
)
from sim.relevance import RelevanceConfig, relevance_probability, sample_relevance
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world


def make_world(n_users=30, n_items=40, seed=0):
    cfg = WorldConfig(n_users=n_users, n_items=n_items, dim=3)
    return sample_world(cfg, MUSIC_MARGINAL, np.random.default_rng(seed))


def assert_within_4se(observed_sum, expected_sum, variance_sum):
    """A sum of independent draws within 4 SE (from the summed variances)."""
    assert abs(observed_sum - expected_sum) <= 4 * np.sqrt(variance_sum) + 1e-12


# ------------------------------------------------------------------ relevance


def test_relevance_base_rate_is_solved_and_monotone_in_score():
    world = make_world()
    cfg = RelevanceConfig(base_rate=0.1, sharpness=3.0)
    gamma, offset = relevance_probability(world.score, cfg)
    assert gamma.mean() == pytest.approx(0.1, rel=1e-9)
    order = np.argsort(world.score.ravel())
    assert np.all(np.diff(gamma.ravel()[order]) >= 0)
    # Same world, both channels: mean gamma increases with the star rating.
    by_star = [gamma[world.ratings == r].mean() for r in range(1, 6)]
    assert np.all(np.diff(by_star) > 0)


def test_pair_relevance_is_a_bernoulli_draw_of_gamma():
    world = make_world(200, 100)
    rel = sample_relevance(world, RelevanceConfig(base_rate=0.2),
                           np.random.default_rng(1))
    g = rel.gamma
    assert_within_4se(rel.relevant.sum(), g.sum(), (g * (1 - g)).sum())


# ------------------------------------------------------------------ behaviour


def fixed_slates(n=20_000, k=5, seed=2):
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.0, 1.0, (n, k))
    relevant = rng.random((n, k)) < gamma
    return relevant, gamma


def test_pbm_click_rate_per_rank_is_theta_times_click_probability():
    relevant, gamma = fixed_slates()
    exam = ExaminationConfig(model="pbm", eta=1.5)
    click = ClickConfig(p_relevant=0.9, p_nonrelevant=0.2)
    out = react(relevant, gamma, exam, click, EngagementConfig(),
                np.random.default_rng(3))
    theta = p_examine_by_rank(exam, 5)
    assert np.allclose(theta, (1.0 / np.arange(1, 6)) ** 1.5)
    p = theta * np.where(relevant, 0.9, 0.2)
    for rank in range(5):
        col = p[:, rank]
        assert_within_4se(out.click[:, rank].sum(), col.sum(), (col * (1 - col)).sum())
    assert np.all(out.click <= out.examined)
    assert np.all(out.p_examine == theta)


def test_cascade_stops_after_the_first_click():
    relevant, gamma = fixed_slates()
    click = ClickConfig(p_relevant=0.7, p_nonrelevant=0.1)
    out = react(relevant, gamma, ExaminationConfig(model="cascade"), click,
                EngagementConfig(), np.random.default_rng(4))
    assert out.click.sum(axis=1).max() == 1
    first = np.where(out.click.any(axis=1), out.click.argmax(axis=1), 5)
    ranks = np.arange(5)[None, :]
    assert np.array_equal(out.examined, ranks <= first[:, None])
    assert np.all(out.examined[~out.click.any(axis=1)])
    for rank in range(5):
        col = out.p_examine[:, rank]
        assert_within_4se(out.examined[:, rank].sum(), col.sum(),
                          (col * (1 - col)).sum())


def test_plays_mean_is_lambda0_plus_lambda1_gamma():
    relevant, gamma = fixed_slates()
    eng = EngagementConfig(lambda0=2.0, lambda1=5.0)
    out = react(relevant, gamma, ExaminationConfig(eta=0.0), ClickConfig(), eng,
                np.random.default_rng(5))
    rate = 2.0 + 5.0 * gamma[out.click]
    assert_within_4se(out.plays[out.click].sum(), rate.sum(), rate.sum())
    assert np.all(out.plays[~out.click] == 0)


# ------------------------------------------------------------------- the log


def small_log(seed=0, world=None, **changes):
    world = make_world() if world is None else world
    kwargs = dict(exposure=ExposureConfig(policy="softmax", slate_size=4,
                                          epsilon=0.1),
                  intervention=InterventionConfig(swap_share=0.2), n_visits=3000)
    kwargs.update(changes)
    return simulate_implicit(world, np.random.default_rng(seed), **kwargs)


def test_log_columns_rows_and_logged_propensities():
    log, truth = small_log()
    frame, k = log.impressions, 4
    assert tuple(frame.columns) == LOG_COLUMNS
    assert tuple(truth.impressions.columns) == TRUTH_COLUMNS
    assert len(frame) == len(truth.impressions) == 3000 * k
    assert frame["position"].tolist()[:8] == [1, 2, 3, 4, 1, 2, 3, 4]
    table = log.policy.p_rank_table()
    users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
    pos = frame["position"].to_numpy() - 1
    plain = ~frame["swapped"].to_numpy()
    assert np.array_equal(frame["p_rank"].to_numpy()[plain],
                          table[users, items, pos][plain])
    composed = swap_composed(table)[users, items, pos]
    assert np.allclose(frame["p_rank"].to_numpy()[~plain], composed[~plain], rtol=1e-15)
    assert np.allclose(frame["p_shown"], table.sum(axis=2)[users, items], rtol=1e-15)
    shown = frame["item"].to_numpy().reshape(-1, k)
    visit_users = log.visits["user"].to_numpy()
    swapped = log.visits["swapped"].to_numpy()
    logp = log.policy.slate_logprob(visit_users[~swapped], shown[~swapped])
    assert np.allclose(frame["slate_logprob"].to_numpy()[::k][~swapped], logp)
    assert np.all(np.isfinite(frame["slate_logprob"]))
    # Swaps fall on a 0.2 share of visits, each visit wholly flagged.
    assert_within_4se(swapped.sum(), 0.2 * 3000, 3000 * 0.2 * 0.8)
    assert np.array_equal(frame["swapped"].to_numpy()[::k], swapped)
    # Truth rows line up with the log rows.
    gamma = truth.gamma[users, items]
    assert np.array_equal(truth.impressions["gamma"].to_numpy(), gamma)
    assert np.array_equal(truth.impressions["relevant"].to_numpy(),
                          truth.relevant[users, items])
    assert np.all(frame["click"] <= truth.impressions["examined"])


def test_original_position_undoes_the_randpair_swap():
    log, _ = small_log()
    k = 4
    shown = log.impressions["position"].to_numpy().reshape(-1, k)
    original = log.impressions["original_position"].to_numpy().reshape(-1, k)
    swapped = log.visits["swapped"].to_numpy()
    assert np.array_equal(original[~swapped], shown[~swapped])
    # On a swapped visit rank 1 and one rank j >= 2 exchange: the item shown
    # first was chosen for rank j, the item shown at j was chosen for rank 1.
    moved = original[swapped] != shown[swapped]
    assert np.all(moved.sum(axis=1) == 2) and np.all(moved[:, 0])
    partner = original[swapped][:, 0]
    assert np.all((partner >= 2) & (partner <= k))
    rows = np.arange(partner.size)
    assert np.all(original[swapped][rows, partner - 1] == 1)
    assert np.array_equal(np.sort(original, axis=1), np.broadcast_to(np.arange(1, k + 1),
                                                                     original.shape))


def test_same_seed_same_log_and_other_seed_other_log():
    log_a, truth_a = small_log(seed=5)
    log_b, truth_b = small_log(seed=5)
    pd.testing.assert_frame_equal(log_a.impressions, log_b.impressions)
    pd.testing.assert_frame_equal(truth_a.impressions, truth_b.impressions)
    log_c, _ = small_log(seed=6)
    assert not log_a.impressions.equals(log_c.impressions)


def test_per_impression_relevance_is_redrawn():
    log, truth = small_log(relevance=RelevanceConfig(base_rate=0.3,
                                                     per_impression=True))
    rows = truth.impressions
    users, items = log.impressions["user"], log.impressions["item"]
    pair_level = truth.relevant[users, items]
    assert (rows["relevant"].to_numpy() != pair_level).any()
    g = rows["gamma"].to_numpy()
    assert_within_4se(rows["relevant"].sum(), g.sum(), (g * (1 - g)).sum())


def test_clicks_by_pair_counts_and_leaves_out_swapped_visits():
    frame = pd.DataFrame({
        "user": [0, 0, 0, 1, 1, 1], "item": [2, 2, 3, 2, 0, 0],
        "click": [True, False, False, True, True, True],
        "plays": [3, 0, 0, 1, 2, 5],
        "swapped": [False, False, False, False, False, True],
    })
    pairs = clicks_by_pair(frame)
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert pairs.values.tolist() == [[0, 2, 1, 3, 2], [1, 0, 2, 7, 2], [1, 2, 1, 1, 1]]
    unswapped = clicks_by_pair(frame, include_swapped=False)
    assert unswapped.values.tolist() == [[0, 2, 1, 3, 2], [1, 0, 1, 2, 1],
                                         [1, 2, 1, 1, 1]]
    log, _ = small_log()
    from_log = clicks_by_pair(log)
    train = log.training()
    assert from_log["clicks"].sum() == train["click"].sum()
    assert not train["swapped"].any()


@pytest.mark.parametrize("kind, include", [("popularity", False), ("popularity", True),
                                           ("softmax", False)])
def test_p_expose_pair_matches_examined_at_least_once(kind, include):
    world = make_world(3, 8, seed=3)
    exposure = ExposureConfig(policy=kind, slate_size=3, temperature=1.0)
    intervention = InterventionConfig(swap_share=0.3, train_on_swaps=include)
    exam = ExaminationConfig(eta=0.8)
    policy = make_policy(world, exposure, np.random.default_rng(0))
    seen_sum = np.zeros((3, 8))
    p_sum, var_sum = np.zeros((3, 8)), np.zeros((3, 8))
    for rep in range(400):
        log, truth = simulate_implicit(
            world, np.random.default_rng(100 + rep), exposure=exposure,
            examination=exam, intervention=intervention, n_visits=4, policy=policy)
        p = p_expose_pair(log, truth)
        rows = log.impressions["swapped"].to_numpy() <= include
        examined = truth.impressions["examined"].to_numpy() & rows
        seen = np.zeros((3, 8), dtype=bool)
        frame = log.impressions[examined]
        seen[frame["user"], frame["item"]] = True
        seen_sum += seen
        p_sum += p
        var_sum += p * (1 - p)
    assert np.all(np.abs(seen_sum - p_sum) <= 4 * np.sqrt(var_sum) + 1e-9)
    assert var_sum.min() > 0  # every pair was uncertain in some replicates


def test_p_expose_pair_closed_form_on_uniform_slates():
    world = make_world(5, 10)
    log, truth = simulate_implicit(world, np.random.default_rng(1),
                                   exposure=ExposureConfig(policy="uniform",
                                                           slate_size=2),
                                   intervention=InterventionConfig(swap_share=0.0),
                                   n_visits=50)
    theta = np.array([1.0, 0.5])
    e = (1.0 + 0.5) / 10
    n_u = np.bincount(log.visits["user"], minlength=5)
    expected = 1 - (1 - e) ** n_u[:, None] * np.ones((1, 10))
    assert np.allclose(p_expose_pair(log, theta=theta), expected, rtol=1e-12)


def _log():
    return small_log(n_visits=10)


BAD = [
    ("eta", lambda: ExaminationConfig(eta=-0.5),
     r"examination.eta must be a number >= 0.0, got -0.5"),
    ("model", lambda: ExaminationConfig(model="dbn"),
     r"examination.model must be one of"),
    ("p-relevant", lambda: ClickConfig(p_relevant=1.2),
     r"click.p_relevant must be a number >= 0.0 and <= 1.0, got 1.2"),
    ("p-nonrelevant", lambda: ClickConfig(p_nonrelevant=-0.1),
     r"click.p_nonrelevant must be a number >= 0.0 and <= 1.0, got -0.1"),
    ("lambda0", lambda: EngagementConfig(lambda0=-1.0),
     r"engagement.lambda0 must be a number >= 0.0, got -1.0"),
    ("base-rate", lambda: RelevanceConfig(base_rate=1.0),
     r"relevance.base_rate must be a number > 0.0 and < 1.0, got 1.0"),
    ("sharpness", lambda: RelevanceConfig(sharpness=0.0),
     r"relevance.sharpness must be a number > 0.0, got 0.0"),
    ("per-impression", lambda: RelevanceConfig(per_impression=1),
     r"relevance.per_impression must be true or false, got 1"),
    ("k-above-catalogue",
     lambda: simulate_implicit(make_world(3, 5), np.random.default_rng(0),
                               exposure=ExposureConfig(slate_size=6), n_visits=5),
     r"exposure.slate_size must be an integer in \[1, 5\] \(the catalogue size\), "
     r"got 6"),
    ("zero-visits", lambda: small_log(n_visits=0),
     r"n_visits must be an integer >= 1, got 0"),
    ("swap-with-k1", lambda: small_log(exposure=ExposureConfig(slate_size=1)),
     r"intervention.swap_share must be 0 when exposure.slate_size is 1"),
    ("policy-mismatch",
     lambda: small_log(policy=make_policy(make_world(), ExposureConfig(slate_size=3),
                                          np.random.default_rng(0))),
     r"policy must be a policy over 40 items with slates of 4, got '40 items, "
     r"slates of 3'"),
    ("empty-frame", lambda: clicks_by_pair(_log()[0].impressions.iloc[:0]),
     r"log must hold at least one impression, got 0 rows"),
    ("frame-columns", lambda: clicks_by_pair(pd.DataFrame({"user": [0]})),
     r"log must be a frame with columns user, item, click, plays, swapped"),
    ("cascade-expose",
     lambda: p_expose_pair(*small_log(n_visits=10,
                                      examination=ExaminationConfig(model="cascade"))),
     r"examination.model must be 'pbm' for a per-rank p_examine"),
    ("theta-range",
     lambda: p_expose_pair(_log()[0], theta=np.array([1, 0.5, 1.5, 0.2])),
     r"theta must be in \[0, 1\], got 1.5 \(rank 3\)"),
    ("theta-shape", lambda: p_expose_pair(_log()[0], theta=np.ones(3)),
     r"theta must be shape \(4,\), got \(3,\)"),
    ("truth-and-theta", lambda: p_expose_pair(*_log(), theta=np.ones(4)),
     r"truth, theta must be exactly one given, got 'both'"),
]


@pytest.mark.parametrize("make, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_message(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_empty_log_is_refused_by_p_expose_pair():
    log, truth = _log()
    empty = dataclasses.replace(log, impressions=log.impressions.iloc[:0])
    message = "log must hold at least one impression, got 0 rows"
    with pytest.raises(ConfigError, match=message):
        p_expose_pair(empty, truth)


def test_simulation_benchmark_runs_on_a_small_problem():
    from experiments.bench_sim import bench_simulation

    res = bench_simulation(n_visits=2000, n_items=50, K=5, n_users=20,
                           loop_visits=50, softmax=True)
    assert res["rows"] == 2000 * 5
    for key in ("seconds", "loop_seconds", "speedup", "softmax_table_seconds",
                "softmax_seconds"):
        assert res[key] > 0


def test_one_world_gives_both_channels():
    from sim.ratings import MarConfig, SplitConfig, simulate_ratings
    from sim.selection import SelectionConfig

    world = make_world()
    log, truth = simulate_implicit(world, np.random.default_rng(0), n_visits=200,
                                   exposure=ExposureConfig(slate_size=4))
    ratings, rating_truth = simulate_ratings(None, SelectionConfig(), SplitConfig(),
                                             MarConfig(), np.random.default_rng(1),
                                             world=world)
    assert rating_truth.world is truth.world is world
    observed = ratings.observed
    assert np.array_equal(observed["rating"], world.ratings[observed["user"],
                                                            observed["item"]])
