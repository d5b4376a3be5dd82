"""The world, the MNAR selection, the splits and the saved log, against closed forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.config import ConfigError, override
from sim.ratings import MarConfig, SplitConfig, load, save, simulate_ratings
from sim.selection import (
    PRESETS,
    SelectionConfig,
    max_density,
    observe_probability,
    selection_weights,
)
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world

SMALL = WorldConfig(n_users=60, n_items=50, dim=3)


def small_world(marginal=MUSIC_MARGINAL, seed=0, **changes):
    cfg = dataclasses.replace(SMALL, **changes)
    return sample_world(cfg, marginal, np.random.default_rng(seed))


def test_true_marginal_matches_config_up_to_one_cell():
    world = small_world()
    share = world.true_marginal()
    assert np.all(np.abs(share - np.array(MUSIC_MARGINAL)) <= 1.0 / world.ratings.size)
    assert world.ratings.min() == 1 and world.ratings.max() == 5


def test_ratings_increase_with_latent_score():
    world = small_world()
    flat_score, flat_r = world.score.ravel(), world.ratings.ravel()
    for star in range(1, 5):
        assert flat_score[flat_r == star].max() <= flat_score[flat_r == star + 1].min()


def test_popularity_is_zipf_and_independent_of_item_quality():
    world = sample_world(WorldConfig(n_users=20, n_items=400, dim=2), MUSIC_MARGINAL,
                         np.random.default_rng(3))
    assert world.popularity.max() == 1.0
    assert np.allclose(np.sort(world.popularity)[::-1], 1.0 / np.arange(1, 401))
    # Visibility is a random permutation: its rank correlation with the item
    # bias has sd 1/sqrt(n - 1); 4 sd is the tolerance.
    rank_pop = np.argsort(np.argsort(world.popularity))
    rank_bias = np.argsort(np.argsort(world.item_bias))
    rho = np.corrcoef(rank_pop, rank_bias)[0, 1]
    assert abs(rho) < 4 / np.sqrt(399)


def test_side_features_have_the_stated_signal_to_noise():
    world = sample_world(WorldConfig(n_users=4000, n_items=10, dim=4, feature_snr=2.0),
                         MUSIC_MARGINAL, np.random.default_rng(1))
    noise = world.user_view - world.user_factors
    ratio = world.user_factors.var() / noise.var()
    # var of a variance estimate over 16,000 normal draws: relative sd ~ 0.011 each
    assert ratio == pytest.approx(2.0, rel=4 * 0.016)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_density_is_solved_and_observed_marginal_matches_closed_form(preset):
    selection = SelectionConfig(preset=preset, alpha=0.3)
    marginal = selection.resolved_marginal()
    world = small_world(marginal)
    p, scale, n_capped = observe_probability(world, selection)
    assert p.mean() == pytest.approx(selection.resolved_density(), rel=1e-9)
    assert n_capped == 0
    # gamma = 0, no capping: P(r | observed) = P(r) s_r / sum_k P(k) s_k, with the
    # realised marginal of this finite world standing in for P(r).
    weights = selection_weights(selection)
    share = world.true_marginal()
    closed = share * weights / np.dot(share, weights)
    expected_counts = np.array([p[world.ratings == r].sum() for r in range(1, 6)])
    assert np.allclose(expected_counts / expected_counts.sum(), closed, rtol=1e-9)

    # Monte Carlo: 400 draws of the observation; the mean count per star lies
    # within 4 SE of its closed form sum p, SE from the closed-form variance.
    rng = np.random.default_rng(11)
    draws = 400
    counts = np.zeros((draws, 5))
    for d in range(draws):
        observed = rng.random(p.shape) < p
        counts[d] = np.bincount(world.ratings[observed], minlength=6)[1:]
    variance = np.array([(p * (1 - p))[world.ratings == r].sum() for r in range(1, 6)])
    se = np.sqrt(variance / draws)
    assert np.all(np.abs(counts.mean(0) - expected_counts) <= 4 * se)


def test_value_preset_weights():
    weights = selection_weights(SelectionConfig(preset="value", alpha=0.5))
    assert np.allclose(weights, [0.125, 0.25, 0.5, 1.0, 1.0])


def test_popularity_gamma_tilts_observation_toward_popular_items():
    world = small_world(popularity_exponent=1.0)
    p, _, _ = observe_probability(world, SelectionConfig(preset="uniform",
                                                         popularity_gamma=1.0,
                                                         density=0.01))
    # Under `uniform` with gamma = 1, p is proportional to popularity.
    assert np.allclose(p / p.max(), (world.popularity / world.popularity.max())[None, :]
                       .repeat(p.shape[0], 0))


def test_capped_cells_are_counted():
    world = small_world(popularity_exponent=1.5)
    cfg = SelectionConfig(preset="uniform", popularity_gamma=1.0, density=0.5)
    p, scale, n_capped = observe_probability(world, cfg)
    assert n_capped == int((scale * world.popularity[None, :].repeat(60, 0) > 1).sum())
    assert n_capped > 0 and p.max() == 1.0
    assert p.mean() == pytest.approx(0.5, rel=1e-9)


def test_simulation_is_deterministic_and_splits_partition_the_log():
    args = (SMALL, SelectionConfig(), SplitConfig(), MarConfig(items_per_user=5))
    log_a, truth_a = simulate_ratings(*args, np.random.default_rng(5))
    log_b, truth_b = simulate_ratings(*args, np.random.default_rng(5))
    assert log_a.observed.equals(log_b.observed) and log_a.mar.equals(log_b.mar)
    assert np.array_equal(truth_a.p_observe, truth_b.p_observe)
    sizes = log_a.observed["split"].value_counts(normalize=True)
    assert sizes["train"] == pytest.approx(log_a.split_fraction["train"])
    pairs = set(zip(log_a.observed["user"], log_a.observed["item"]))
    assert len(pairs) == len(log_a.observed)
    mar = log_a.mar
    assert (mar.groupby("user").size() == 5).all()
    assert mar["reserved"].sum() == round(0.05 * len(mar))
    world = truth_a.world
    assert np.array_equal(mar["rating"], world.ratings[mar["user"], mar["item"]])


def test_save_and_load_round_trip(tmp_path):
    log, truth = simulate_ratings(SMALL, SelectionConfig(preset="coat-like"),
                                  SplitConfig(), MarConfig(), np.random.default_rng(2))
    save(log, truth, tmp_path / "data", {"seed": 2})
    log2, truth2, meta = load(tmp_path / "data")
    assert meta == {"seed": 2}
    assert log2.observed.equals(log.observed) and log2.mar.equals(log.mar)
    assert log2.split_fraction == log.split_fraction
    for name in ("ratings", "score", "user_factors", "item_factors", "user_bias",
                 "item_bias", "popularity", "user_view", "item_view",
                 "user_covariates", "item_covariates"):
        a, b = getattr(truth.world, name), getattr(truth2.world, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert np.array_equal(truth.p_observe, truth2.p_observe)
    assert truth2.world.marginal == truth.world.marginal


def test_coat_like_preset_uses_its_own_marginal():
    log, truth = simulate_ratings(SMALL, SelectionConfig(preset="coat-like"),
                                  SplitConfig(), MarConfig(), np.random.default_rng(0))
    assert truth.world.marginal == PRESETS["coat-like"][2]


BAD = [
    ("marginal-sum", lambda: WorldConfig(marginal=(0.5, 0.4, 0.05, 0.03, 0.01)),
     r"world.marginal must be probabilities summing to 1 \(sum 0.99\)"),
    ("marginal-negative", lambda: WorldConfig(marginal=(0.6, -0.1, 0.3, 0.1, 0.1)),
     r"world.marginal entries must be a number >= 0.0 and <= 1.0, got -0.1"),
    ("alpha-zero", lambda: SelectionConfig(preset="value", alpha=0.0),
     r"selection.alpha must be a number > 0.0, got 0.0"),
    ("alpha-negative", lambda: SelectionConfig(alpha=-1.0),
     r"selection.alpha must be a number > 0.0, got -1.0"),
    ("density-zero", lambda: SelectionConfig(density=0.0),
     r"selection.density must be a number > 0.0 and <= 1.0, got 0.0"),
    ("density-nan", lambda: SelectionConfig(density=float("nan")),
     r"selection.density must be a number > 0.0 and <= 1.0, got nan"),
    ("preset", lambda: SelectionConfig(preset="netflix"),
     r"selection.preset must be one of uniform, value, yahoo-like, coat-like, "
     r"got 'netflix'"),
    ("users", lambda: WorldConfig(n_users=0),
     r"world.n_users must be an integer >= 1, got 0"),
    ("split", lambda: SplitConfig(train=0.8, valid=0.3),
     r"split.train \+ split.valid must be below 1"),
    ("floor", lambda: SelectionConfig(propensity_floor=1.0),
     r"selection.propensity_floor must be a number >= 0.0 and < 1.0, got 1.0"),
]


@pytest.mark.parametrize("build, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_density_above_reachable_maximum_is_refused_with_the_maximum():
    world = small_world()
    yahoo = SelectionConfig(preset="yahoo-like")
    reach = max_density(MUSIC_MARGINAL, selection_weights(yahoo))
    assert reach == pytest.approx(np.dot(MUSIC_MARGINAL, PRESETS["yahoo-like"][0])
                                  / 9.64)
    with pytest.raises(ConfigError, match=rf"selection.density must be in \(0, "
                       rf"{reach:.6g}\] for preset 'yahoo-like'.*got 0.5"):
        observe_probability(world, SelectionConfig(preset="yahoo-like", density=0.5))


def test_unknown_override_key_names_the_closest():
    cfg = dataclasses.make_dataclass("C", [("selection", SelectionConfig,
                                            dataclasses.field(
                                                default_factory=SelectionConfig))],
                                     frozen=True)()
    with pytest.raises(ConfigError, match=r"unknown config key 'selection.alhpa'; "
                       r"did you mean 'selection.alpha'\?"):
        override(cfg, {"selection.alhpa": "0.5"})
    assert override(cfg, {"selection.alpha": "0.5"}).selection.alpha == 0.5
    with pytest.raises(ConfigError, match=r"selection.alpha must be a number, "
                       r"got 'abc'"):
        override(cfg, {"selection.alpha": "abc"})
