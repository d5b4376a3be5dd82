"""Slate estimators (pbm-ips, iips) against the exact PBM value and under cascades.

A small world (40 users, 15 items, slates of K = 4) is logged R = 400 times on
the same 3,000 visits by a popularity Plackett-Luce policy with 20% uniform
slates; the target is a per-user softmax policy. Clicks are drawn per
impression with P(examine rank k) = 1/k and P(click | examined) = gamma.
Tolerances are 4 Monte Carlo standard errors (combined with the truth's own
Monte Carlo error under the cascade model).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.ope_slate import (
    SLATE_ESTIMATORS,
    SlateEstimate,
    estimate_slate_value,
    estimate_slate_values,
    iips,
    pbm_ips,
)
from sim.bandit import slate_value_cascade, slate_value_pbm
from sim.config import ConfigError
from sim.exposure import ExposureConfig, make_policy
from sim.relevance import RelevanceConfig, relevance_probability
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world

N_USERS, N_ITEMS, K, N_VISITS, REPLICATES = 40, 15, 4, 3000, 400
THETA = 1.0 / np.arange(1, K + 1)


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(2018)
    world_rng, policy_rng, user_rng = rng.spawn(3)
    world = sample_world(WorldConfig(n_users=N_USERS, n_items=N_ITEMS),
                         MUSIC_MARGINAL, world_rng)
    gamma, _ = relevance_probability(world.score, RelevanceConfig(base_rate=0.3))
    logger = make_policy(world, ExposureConfig(policy="popularity", slate_size=K,
                                               epsilon=0.2), policy_rng)
    target = make_policy(world, ExposureConfig(policy="softmax", slate_size=K,
                                               temperature=2.0), policy_rng)
    users = user_rng.integers(N_USERS, size=N_VISITS)
    return dict(gamma=gamma, logger=logger, target=target, users=users)


def pbm_clicks(gamma_shown: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    examined = rng.random(gamma_shown.shape) < THETA
    return examined & (rng.random(gamma_shown.shape) < gamma_shown)


def cascade_clicks(gamma_shown: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scan from the top, click an examined item with probability gamma, stop."""
    would = rng.random(gamma_shown.shape) < gamma_shown
    first = np.where(would.any(axis=1), would.argmax(axis=1), K)
    return would & (np.arange(K)[None, :] <= first[:, None])


def run(setting, behaviour, seed):
    logger, target, users = setting["logger"], setting["target"], setting["users"]
    values = []
    for r in range(REPLICATES):
        slate_rng, click_rng = np.random.default_rng([seed, r]).spawn(2)
        slates = logger.sample(users, slate_rng)
        clicks = behaviour(setting["gamma"][users[:, None], slates], click_rng)
        out = estimate_slate_values(SLATE_ESTIMATORS, slates, clicks, users,
                                    logger.p_rank_table(), target.p_rank_table(),
                                    THETA)
        values.append([[out[name].value, out[name].se] for name in SLATE_ESTIMATORS]
                      + [[clicks.sum(axis=1).mean(), 0.0]])
    return np.array(values)  # (R, estimators + naive, 2)


@pytest.fixture(scope="module")
def pbm_runs(setting):
    return run(setting, pbm_clicks, 1)


@pytest.fixture(scope="module")
def cascade_runs(setting):
    return run(setting, cascade_clicks, 2)


def mc_se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size))


@pytest.mark.parametrize("index, name", list(enumerate(SLATE_ESTIMATORS)))
def test_unbiased_under_pbm(setting, pbm_runs, index, name):
    truth = slate_value_pbm(setting["target"].p_rank_table(), setting["gamma"],
                            THETA, setting["users"])
    values = pbm_runs[:, index, 0]
    assert abs(values.mean() - truth) <= 4 * mc_se(values)


@pytest.mark.parametrize("index, name", list(enumerate(SLATE_ESTIMATORS)))
def test_reported_se_matches_spread_under_pbm(pbm_runs, index, name):
    values = pbm_runs[:, index, 0]
    sd = values.std(ddof=1)
    kurtosis = ((values - values.mean()) ** 4).mean() / values.var() ** 2
    se_sd = sd * math.sqrt((kurtosis - 1) / (4 * values.size))
    rms_se = math.sqrt((pbm_runs[:, index, 1] ** 2).mean())
    assert 0.15 * sd >= 4 * se_sd
    assert abs(rms_se - sd) <= 0.15 * sd


def test_naive_click_rate_misses_the_pbm_truth(setting, pbm_runs):
    truth = slate_value_pbm(setting["target"].p_rank_table(), setting["gamma"],
                            THETA, setting["users"])
    values = pbm_runs[:, -1, 0]
    assert abs(values.mean() - truth) > 10 * mc_se(values)


@pytest.mark.parametrize("index, name", list(enumerate(SLATE_ESTIMATORS)))
def test_biased_under_cascade_clicks(setting, cascade_runs, index, name):
    """Robustness result, documented: with cascade clicks both estimators
    (built on position-independent click probabilities) miss the value."""
    truth, truth_se = slate_value_cascade(setting["target"], setting["gamma"],
                                          setting["users"], 400_000,
                                          np.random.default_rng(3))
    values = cascade_runs[:, index, 0]
    assert abs(values.mean() - truth) > 4 * math.hypot(mc_se(values), truth_se)


def test_cascade_truth_matches_on_policy_clicks(setting):
    """The cascade value of a policy equals the mean clicks of its own slates."""
    logger, users = setting["logger"], setting["users"]
    truth, truth_se = slate_value_cascade(logger, setting["gamma"], users, 200_000,
                                          np.random.default_rng(4))
    rng = np.random.default_rng(5)
    means = []
    for _ in range(50):
        slates = logger.sample(users, rng)
        clicks = cascade_clicks(setting["gamma"][users[:, None], slates], rng)
        means.append(clicks.sum(axis=1).mean())
    means = np.array(means)
    assert abs(means.mean() - truth) <= 4 * math.hypot(mc_se(means), truth_se)


def test_target_equal_to_logger_gives_the_mean_clicks(setting):
    logger, users = setting["logger"], setting["users"]
    rng = np.random.default_rng(6)
    slates = logger.sample(users, rng)
    clicks = pbm_clicks(setting["gamma"][users[:, None], slates], rng)
    table = logger.p_rank_table()
    out = estimate_slate_values(SLATE_ESTIMATORS, slates, clicks, users, table,
                                table, THETA)
    for est in out.values():
        assert est.value == pytest.approx(clicks.sum(axis=1).mean(), rel=1e-12)
        assert est.max_weight == pytest.approx(1.0) and est.support_violations == 0


def test_hand_computed_weights():
    # Two items, slates of one: the target shows item 1, the logger either.
    logging_table = np.array([[[0.5], [0.5]]])
    target_table = np.array([[[0.0], [1.0]]])
    slates = np.array([[0], [1], [1]])
    clicks = np.array([[1.0], [1.0], [0.0]])
    users = np.array([0, 0, 0])
    est = iips(slates, clicks, users, logging_table, target_table)
    assert est.value == pytest.approx((0 + 2 + 0) / 3)
    assert est.se == pytest.approx(np.std([0, 2, 0], ddof=1) / math.sqrt(3))
    assert est.ess == pytest.approx(16 / 8) and est.max_weight == 2.0
    assert est.support_violations == 0
    pooled = pbm_ips(slates, clicks, users, logging_table, target_table, [0.5])
    assert pooled.value == est.value  # one rank: the same weights


def test_support_violation_counted():
    logging_table = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # item 0 only at rank 1
    target_table = np.array([[[0.0, 1.0], [1.0, 0.0]]])   # the target swaps them
    est = iips(np.array([[0, 1]]), np.array([[0.0, 0.0]]), np.array([0]),
               logging_table, target_table)
    assert est.support_violations == 2 and est.value == 0.0
    pooled = pbm_ips(np.array([[0, 1]]), np.array([[0.0, 0.0]]), np.array([0]),
                     logging_table, target_table, [1.0, 0.5])
    assert pooled.support_violations == 0  # both items are examined either way


# --- refusals --------------------------------------------------------------------

TABLE = np.full((1, 3, 2), 1 / 3)
GOOD = dict(estimator="pbm-ips", slates=np.array([[0, 1], [2, 0]]),
            clicks=[[1, 0], [0, 0]], users=np.array([0, 1]), logging_p_rank=TABLE,
            target_p_rank=TABLE, p_examine=[1.0, 0.5])

REFUSALS = [
    ("estimator", dict(estimator="ips"),
     "estimator must be one of pbm-ips, iips, got 'ips'"),
    ("slates-float", dict(slates=np.array([[0.0, 1.0], [2.0, 0.0]])),
     r"slates must be an \(n, K\) integer array of item ids with n >= 1, got "
     r"float64 array of shape \(2, 2\)"),
    ("slates-range", dict(slates=np.array([[0, 3], [2, 0]])),
     r"slates must hold item ids in \[0, 2\], got 3 \(visit 0, rank 2\)"),
    ("clicks-shape", dict(clicks=[[1, 0]]),
     r"clicks must be an array of shape \(n, K\) = \(2, 2\) like slates, got "
     r"shape \(1, 2\)"),
    ("clicks-nan", dict(clicks=[[1, 0], [math.nan, 0]]),
     r"clicks must be finite, got nan \(visit 1, rank 1\)"),
    ("users-shape", dict(users=np.array([0])),
     r"users must be an integer array of one user id per visit \(n = 2\), got "
     r"int64 array of shape \(1,\)"),
    ("users-negative", dict(users=np.array([0, -1])),
     r"users must be >= 0, got -1 \(visit 1\)"),
    ("table-shape", dict(target_p_rank=np.full((1, 3, 3), 0.2)),
     r"target_p_rank must be an \(R, I, K\) p_rank table with K = 2 \(the "
     r"slates' columns\), got shape \(1, 3, 3\)"),
    ("table-range", dict(logging_p_rank=np.full((1, 3, 2), 1.5)),
     r"logging_p_rank must be in \[0, 1\], got 1.5 \(row 0, item 0, rank 1\)"),
    ("table-items", dict(target_p_rank=np.full((1, 4, 2), 0.25)),
     r"target_p_rank must be a table over the logging table's 3 items, got 4 items"),
    ("table-rows", dict(target_p_rank=np.full((3, 3, 2), 1 / 3),
                        users=np.array([0, 5])),
     r"target_p_rank must be one row per user \(R = 1, or R > the largest user "
     r"id 5\), got 3 rows"),
    ("theta-missing", dict(p_examine=None),
     r"p_examine must be a \(K,\) array of examination probabilities theta_k for "
     "pbm-ips, got None"),
    ("theta-shape", dict(p_examine=[1.0]),
     r"p_examine must be an array of shape \(2,\), got shape \(1,\)"),
    ("theta-range", dict(p_examine=[1.0, -0.5]),
     r"p_examine must be in \[0, 1\], got -0.5 \(rank 2\)"),
    ("theta-zero", dict(p_examine=[0.0, 0.0]),
     "p_examine must be positive at some rank, got all zeros"),
    ("logging-zero-at-shown", dict(
        estimator="iips", logging_p_rank=np.array([[[0.5, 0.5], [0.5, 0.0],
                                                    [0.5, 0.5]]])),
     r"logging p_rank of the shown item at its rank must be > 0, got 0.0 "
     r"\(visit 0, rank 2, item 1\)"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        estimate_slate_value(**{**GOOD, **changes})


def test_pbm_examination_zero_at_shown_item_refused():
    logging_table = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(ConfigError, match=r"logging examination sum_j theta_j "
                       r"p_rank of the shown item must be > 0, got 0.0 \(visit 0, "
                       r"rank 2, item 1\)"):
        pbm_ips(np.array([[0, 1]]), np.array([[0.0, 0.0]]), np.array([0]),
                logging_table, logging_table, [1.0, 0.0])


SIM_REFUSALS = [
    ("alpha-range", dict(attractiveness=np.full((2, 3), 2.0)),
     r"attractiveness must be in \[0, 1\], got 2.0 \(index \(0, 0\)\)"),
    ("table-rows", dict(target_p_rank=np.full((3, 3, 2), 0.3)),
     r"target_p_rank must be an \(R, 3, K\) array with R = 1 or 2, got shape "
     r"\(3, 3, 2\)"),
    ("theta-shape", dict(p_examine=[1.0]),
     r"p_examine must be an array of shape \(2,\), got shape \(1,\)"),
    ("users", dict(users=np.array([0, 2])),
     r"users must be in \[0, 1\], got 2 \(visit 1\)"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in SIM_REFUSALS],
                         ids=[r[0] for r in SIM_REFUSALS])
def test_slate_value_pbm_refusals(changes, message):
    args = dict(target_p_rank=np.full((1, 3, 2), 0.3),
                attractiveness=np.full((2, 3), 0.5), p_examine=[1.0, 0.5],
                users=np.array([0, 1]))
    with pytest.raises(ConfigError, match=message):
        slate_value_pbm(**{**args, **changes})


def test_estimate_fields():
    assert SlateEstimate._fields == ("value", "se", "ci_low", "ci_high", "n", "ess",
                                     "max_weight", "top_share",
                                     "support_violations")
