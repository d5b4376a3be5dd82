"""Bandit off-policy estimators against the exact value and closed-form variances.

A small world (200 users, 20 actions = items, q = the relevance probability
gamma) is logged R = 500 times on the same 10,000 contexts by a logger that
favours what the target avoids (with 10% uniform exploration). The truth V and
the exact variances of IPS / capped IPS / DR given the contexts come from
`sim.bandit`. Tolerances are 4 Monte Carlo standard errors of the replicates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from estimators.ope import (
    OPE_ESTIMATORS,
    OpeEstimate,
    cross_fit_rewards,
    direct_method,
    doubly_robust,
    estimate_policy_value,
    estimate_policy_values,
    ips,
    ips_cap,
    sndr,
    snips,
    switch_dr,
)
from sim.bandit import (
    linear_moments,
    policy_value,
    simulate_bandit,
    softmax_policy,
)
from sim.config import ConfigError
from sim.relevance import RelevanceConfig, relevance_probability
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world

N_USERS, N_ACTIONS, N_ROUNDS, REPLICATES = 200, 20, 10_000, 500
CAP = 10.0
FIELDS = ("value", "se")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(4)
    world = sample_world(WorldConfig(n_users=N_USERS, n_items=N_ACTIONS),
                         MUSIC_MARGINAL, rng)
    gamma, _ = relevance_probability(world.score, RelevanceConfig(base_rate=0.2))
    target_table = softmax_policy(world.score, 1.0)
    logging_table = softmax_policy(-world.score, 2.0, 0.1)
    contexts = rng.integers(N_USERS, size=N_ROUNDS)
    return dict(q=gamma[contexts], target=target_table[contexts],
                mu=logging_table[contexts], gamma=gamma,
                logging_table=logging_table, contexts=contexts)


@pytest.fixture(scope="module")
def replicates(problem):
    """Per estimator variant, an (R, 2) array of (value, se); naive means too."""
    out: dict[str, list] = {}
    target, q = problem["target"], problem["q"]
    for r in range(REPLICATES):
        rng = np.random.default_rng([7, r])
        log_rng, fold_rng = rng.spawn(2)
        log = simulate_bandit(problem["gamma"], problem["logging_table"], 0,
                              log_rng, contexts=problem["contexts"])
        fitted = cross_fit_rewards(log.actions, log.rewards, N_ACTIONS, fold_rng)
        rows = {}
        for name, est in estimate_policy_values(
                OPE_ESTIMATORS, target, log.actions, log.rewards, log.logging,
                fitted, weight_cap=CAP).items():
            rows[name + "/fit"] = est
        for name, est in estimate_policy_values(
                ["dr", "sndr", "dm"], target, log.actions, log.rewards,
                log.propensity, q).items():
            rows[name + "/true"] = est
        for key, est in rows.items():
            out.setdefault(key, []).append([est.value, est.se])
        out.setdefault("naive", []).append([log.rewards.mean(), 0.0])
    return {key: np.array(rows) for key, rows in out.items()}


def mc_se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size))


def sd_and_its_se(values: np.ndarray) -> tuple[float, float]:
    """Sample SD and its standard error sd * sqrt((kurtosis - 1) / (4 R))."""
    sd = float(values.std(ddof=1))
    kurtosis = ((values - values.mean()) ** 4).mean() / values.var() ** 2
    return sd, sd * math.sqrt((kurtosis - 1) / (4 * values.size))


# --- bias ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ips/fit", "dr/true", "dr/fit"])
def test_unbiased_with_true_propensities(problem, replicates, key):
    truth = policy_value(problem["target"], problem["q"])
    values = replicates[key][:, 0]
    assert abs(values.mean() - truth) <= 4 * mc_se(values)


def test_dm_with_the_true_model_is_the_truth(problem, replicates):
    truth = policy_value(problem["target"], problem["q"])
    assert np.allclose(replicates["dm/true"][:, 0], truth, rtol=1e-12)


@pytest.mark.parametrize("key", ["snips/fit", "sndr/fit", "sndr/true"])
def test_self_normalised_are_consistent_at_this_size(problem, replicates, key):
    # Consistent: at n = 10^4 their O(1/n) bias is below the Monte Carlo noise.
    truth = policy_value(problem["target"], problem["q"])
    values = replicates[key][:, 0]
    assert abs(values.mean() - truth) <= 4 * mc_se(values)


def test_capped_ips_matches_its_exact_biased_mean(problem, replicates):
    mean, _ = linear_moments(problem["target"], problem["mu"], problem["q"],
                             weight_cap=CAP)
    truth = policy_value(problem["target"], problem["q"])
    values = replicates["ips-cap/fit"][:, 0]
    assert abs(values.mean() - mean) <= 4 * mc_se(values)
    assert truth - mean > 10 * mc_se(values)  # the cap binds: biased downwards


def test_naive_mean_reward_misses_the_truth(problem, replicates):
    truth = policy_value(problem["target"], problem["q"])
    values = replicates["naive"][:, 0]
    assert abs(values.mean() - truth) > 10 * mc_se(values)


# --- spread ----------------------------------------------------------------------


@pytest.mark.parametrize("key, model, cap", [
    ("ips/fit", False, math.inf),
    ("ips-cap/fit", False, CAP),
    ("dr/true", True, math.inf),
])
def test_spread_matches_closed_form(problem, replicates, key, model, cap):
    predictions = problem["q"] if model else None
    _, variance = linear_moments(problem["target"], problem["mu"], problem["q"],
                                 predictions, cap)
    exact = math.sqrt(variance)
    sd, se_sd = sd_and_its_se(replicates[key][:, 0])
    assert 0.15 * exact >= 4 * se_sd  # the 15% band is several SE wide
    assert abs(sd - exact) <= 0.15 * exact


@pytest.mark.parametrize("key", ["ips/fit", "ips-cap/fit", "dr/true", "dr/fit",
                                 "snips/fit", "sndr/fit", "sndr/true",
                                 "switch-dr/fit"])
def test_reported_se_matches_spread(replicates, key):
    # Delta-method (or i.i.d.) standard errors against the replicate spread.
    sd, se_sd = sd_and_its_se(replicates[key][:, 0])
    rms_se = math.sqrt((replicates[key][:, 1] ** 2).mean())
    assert 0.15 * sd >= 4 * se_sd
    assert abs(rms_se - sd) <= 0.15 * sd


def test_dr_with_true_model_spreads_less_than_ips(replicates):
    assert replicates["dr/true"][:, 0].std() <= replicates["ips/fit"][:, 0].std()


# --- SNIPS bias on a tiny problem, by enumeration --------------------------------

TINY_TARGET = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
TINY_MU = np.array([[0.2, 0.4, 0.4], [0.5, 0.3, 0.2]])
TINY_Q = np.array([[0.9, 0.2, 0.1], [0.3, 0.5, 0.6]])


def test_snips_is_biased_at_tiny_n_as_enumeration_shows():
    total = 0.0
    for actions in itertools.product(range(3), repeat=2):
        p_actions = TINY_MU[0, actions[0]] * TINY_MU[1, actions[1]]
        for rewards in itertools.product([0.0, 1.0], repeat=2):
            q = TINY_Q[[0, 1], list(actions)]
            p = p_actions * np.prod(np.where(rewards, q, 1 - q))
            est = snips(TINY_TARGET, np.array(actions), np.array(rewards), TINY_MU)
            total += p * est.value
    truth = policy_value(TINY_TARGET, TINY_Q)
    assert abs(total - truth) > 0.02  # biased at n = 2, exactly
    # Monte Carlo agrees with the enumeration.
    rng = np.random.default_rng(11)
    values = []
    for r in range(2000):
        actions = np.array([rng.choice(3, p=TINY_MU[i]) for i in range(2)])
        rewards = (rng.random(2) < TINY_Q[[0, 1], actions]).astype(float)
        values.append(snips(TINY_TARGET, actions, rewards, TINY_MU).value)
    values = np.array(values)
    assert abs(values.mean() - total) <= 4 * mc_se(values)


# --- closed cases and hand-computed values ----------------------------------------


def small_log():
    rng = np.random.default_rng(3)
    mu = softmax_policy(rng.normal(size=(50, 4)), 1.0, 0.1)
    target = softmax_policy(rng.normal(size=(50, 4)), 0.5)
    actions = np.array([rng.choice(4, p=row) for row in mu])
    rewards = (rng.random(50) < 0.4).astype(float)
    q_hat = rng.uniform(0.2, 0.6, size=(50, 4))
    return target, mu, actions, rewards, q_hat


def test_target_equal_to_logger_gives_unit_weights_and_the_mean():
    _, mu, actions, rewards, _ = small_log()
    out = estimate_policy_values(["ips", "snips"], mu, actions, rewards, mu)
    assert out["ips"].value == rewards.mean()
    assert out["snips"].value == rewards.mean()
    assert out["ips"].max_weight == 1.0 and out["ips"].ess == pytest.approx(50)
    assert out["ips"].top_share == pytest.approx(1 / 50)


def test_infinite_cap_is_ips():
    target, mu, actions, rewards, _ = small_log()
    capped = ips_cap(target, actions, rewards, mu, math.inf)
    plain = ips(target, actions, rewards, mu)
    assert (capped.value, capped.se, capped.n_capped) == (plain.value, plain.se, 0)


def test_switch_extremes_are_dr_and_dm():
    target, mu, actions, rewards, q_hat = small_log()
    dr = doubly_robust(target, actions, rewards, mu, q_hat)
    dm = direct_method(target, actions, rewards, q_hat, mu)
    assert switch_dr(target, actions, rewards, mu, q_hat, math.inf).value == dr.value
    at_zero = switch_dr(target, actions, rewards, mu, q_hat, 0.0)
    assert at_zero.value == pytest.approx(dm.value, rel=1e-12)
    assert at_zero.n_capped == 50


def test_switch_rule_minimises_its_stated_objective():
    target, mu, actions, rewards, q_hat = small_log()
    chosen = switch_dr(target, actions, rewards, mu, q_hat)
    weights = target[np.arange(50), actions] / mu[np.arange(50), actions]
    candidates = np.concatenate([[0.0], np.unique(weights)])
    objective = []
    for tau in candidates:
        est = switch_dr(target, actions, rewards, mu, q_hat, tau)
        bias = (weights * (weights > tau)).sum() / 50
        objective.append(est.se**2 + bias**2)
    assert chosen.threshold == candidates[int(np.argmin(objective))]


def test_hand_computed_values_and_diagnostics():
    target = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    mu = np.array([[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]])
    actions = np.array([0, 0, 0])
    rewards = np.array([1.0, 0.0, 1.0])
    q_hat = np.array([[0.5, 0.5], [0.2, 0.4], [0.0, 1.0]])
    out = estimate_policy_values(OPE_ESTIMATORS, target, actions, rewards, mu,
                                 q_hat, weight_cap=1.5)
    weights = np.array([2.0, 2.0, 0.0])
    assert out["ips"].value == pytest.approx(2 / 3)
    assert out["ips"].se == pytest.approx(np.std([2, 0, 0], ddof=1) / math.sqrt(3))
    assert out["ips-cap"].value == pytest.approx(1.5 / 3)
    assert out["ips-cap"].n_capped == 2 and out["ips-cap"].threshold == 1.5
    assert out["snips"].value == pytest.approx(0.5)
    # psi = w (r - 0.5) / mean(w) = [0.75, -0.75, 0]; se^2 = sum psi^2 / (n (n-1))
    assert out["snips"].se == pytest.approx(math.sqrt(2 * 0.75**2 / 6))
    direct = np.array([0.5, 0.2, 1.0])
    residual = rewards - np.array([0.5, 0.2, 0.0])
    assert out["dm"].value == pytest.approx(direct.mean())
    assert out["dr"].value == pytest.approx((direct + weights * residual).mean())
    ratio = (weights * residual).sum() / weights.sum()
    assert out["sndr"].value == pytest.approx(direct.mean() + ratio)
    assert out["ips"].ess == pytest.approx(16 / 8)
    assert out["ips"].max_weight == 2.0
    assert out["ips"].top_share == pytest.approx(0.5)
    assert out["ips"].support_violations == 0
    assert out["ips"].threshold is None
    for est in out.values():
        assert est.ci_low == pytest.approx(est.value - 1.959964 * est.se)
        assert est.ci_high == pytest.approx(est.value + 1.959964 * est.se)


def test_support_violations_counted_only_with_full_logging():
    target = np.array([[0.5, 0.5], [0.5, 0.5]])
    mu = np.array([[1.0, 0.0], [0.5, 0.5]])
    actions, rewards = np.array([0, 1]), np.array([1.0, 0.0])
    assert ips(target, actions, rewards, mu).support_violations == 1
    assert ips(target, actions, rewards, [1.0, 0.5]).support_violations is None


def test_dm_without_logging_has_no_weight_diagnostics():
    target, _, actions, rewards, q_hat = small_log()
    est = direct_method(target, actions, rewards, q_hat)
    assert (est.ess, est.max_weight, est.top_share) == (None, None, None)
    assert est.value == pytest.approx((target * q_hat).sum(axis=1).mean())


def test_single_round_has_infinite_se():
    est = ips(np.array([[1.0, 0.0]]), np.array([0]), np.array([1.0]), [0.5])
    assert (est.value, est.se) == (2.0, math.inf)


def test_snips_with_all_zero_weights_is_refused_not_nan():
    target = np.array([[0.0, 1.0], [0.0, 1.0]])
    message = r"target must give positive probability .* for snips"
    with pytest.raises(ConfigError, match=message):
        snips(target, np.array([0, 0]), np.array([1.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ConfigError, match="for sndr"):
        sndr(target, np.array([0, 0]), np.array([1.0, 0.0]), [0.5, 0.5],
             np.zeros((2, 2)))
    # IPS is defined (0) there.
    assert ips(target, np.array([0, 0]), np.array([1.0, 0.0]), [0.5, 0.5]).value == 0


# --- cross-fitting ------------------------------------------------------------------


def test_cross_fit_never_sees_a_rounds_own_reward():
    rng = np.random.default_rng(5)
    actions = rng.integers(3, size=40)
    rewards = rng.random(40)
    base = cross_fit_rewards(actions, rewards, 3, np.random.default_rng(1))
    changed = rewards.copy()
    changed[7] += 100.0
    moved = cross_fit_rewards(actions, changed, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(moved[7], base[7])
    assert not np.allclose(moved, base)  # the change reached the other fold


def test_cross_fit_tabular_is_the_shrunk_mean_per_action():
    actions = np.array([0, 0, 1, 1, 0, 1])
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    fitted = cross_fit_rewards(actions, rewards, 3, np.random.default_rng(2),
                               n_folds=6, l2=2.0)
    for i in range(6):
        keep = np.arange(6) != i
        m = rewards[keep].mean()
        for a in range(3):
            mask = keep & (actions == a)
            expect = (rewards[mask].sum() + 2.0 * m) / (mask.sum() + 2.0)
            assert fitted[i, a] == pytest.approx(expect)


def test_cross_fit_ridge_recovers_a_linear_reward():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(4000, 2))
    actions = rng.integers(2, size=4000)
    slope = np.array([[0.5, -0.2], [-0.3, 0.4]])
    truth = 1.0 + features @ slope.T  # (n, 2)
    rewards = truth[np.arange(4000), actions] + rng.normal(0, 0.1, 4000)
    fitted = cross_fit_rewards(actions, rewards, 2, rng, features=features,
                               l2=1e-3)
    assert np.abs(fitted - truth).max() < 0.05


# --- refusals ------------------------------------------------------------------------

T2 = [[0.5, 0.5], [0.5, 0.5]]
GOOD = dict(estimator="dr", target=T2, actions=np.array([0, 1]),
            rewards=[1.0, 0.0], logging=[0.5, 0.5],
            reward_predictions=[[0.1, 0.2], [0.3, 0.4]])

REFUSALS = [
    ("estimator", dict(estimator="naive"),
     "estimator must be one of dm, ips, snips, ips-cap, dr, sndr, switch-dr, "
     "got 'naive'"),
    ("target-1d", dict(target=[0.5, 0.5]),
     r"target must be an \(n, A\) array .*, got shape \(2,\)"),
    ("target-rows", dict(target=[[0.5, 0.4], [0.5, 0.5]]),
     r"target rows must sum to 1 \(within 1e-06\), got 0.9 \(row 0\)"),
    ("target-nan", dict(target=[[0.5, 0.5], [math.nan, 1.0]]),
     r"target rows must sum to 1 \(within 1e-06\), got nan \(row 1\)"),
    ("target-negative", dict(target=[[1.5, -0.5], [0.5, 0.5]]),
     r"target must be >= 0, got -0.5 \(row 0, action 1\)"),
    ("actions-length", dict(actions=np.array([0, 1, 1])),
     r"actions must be a 1-D array of one entry per round \(n = 2, the rows of "
     r"target\), got shape \(3,\)"),
    ("actions-float", dict(actions=np.array([0.0, 1.0])),
     "actions must be integer action ids, got dtype float64"),
    ("actions-range", dict(actions=np.array([0, 2])),
     r"actions must be in \[0, 1\], got 2 \(round 1\)"),
    ("rewards-nan", dict(rewards=[1.0, math.nan]),
     r"rewards must be finite, got nan \(round 1\)"),
    ("propensity-zero", dict(logging=[0.5, 0.0]),
     r"logging probability of the logged action must be in \(0, 1\], got 0.0 "
     r"\(round 1, action 1\)"),
    ("propensity-above-one", dict(logging=[1.5, 0.5]),
     r"logging probability of the logged action must be in \(0, 1\], got 1.5 "
     r"\(round 0, action 0\)"),
    ("full-logging-zero-at-logged", dict(logging=[[0.5, 0.5], [1.0, 0.0]]),
     r"logging probability of the logged action must be in \(0, 1\], got 0.0 "
     r"\(round 1, action 1\)"),
    ("full-logging-shape", dict(logging=[[0.5, 0.5]]),
     r"logging must be of shape \(n, A\) = \(2, 2\) like target, got shape \(1, 2\)"),
    ("full-logging-rows", dict(logging=[[0.5, 0.6], [0.5, 0.5]]),
     r"logging rows must sum to 1 \(within 1e-06\), got 1.1 \(row 0\)"),
    ("logging-missing", dict(logging=None),
     r"logging must be the logging probabilities, \(n,\) at the logged actions "
     r"or \(n, A\), got None"),
    ("predictions-missing", dict(reward_predictions=None),
     r"reward_predictions must be an \(n, A\) array of predicted rewards for this "
     r"estimator, got None"),
    ("predictions-wrong-rows", dict(reward_predictions=[[0.1, 0.2]] * 3),
     r"reward_predictions must be of shape \(n, A\) = \(2, 2\) like target, got "
     r"shape \(3, 2\)"),
    ("predictions-inf", dict(reward_predictions=[[0.1, 0.2], [math.inf, 0.4]]),
     r"reward_predictions must be finite, got inf \(row 1, action 0\)"),
    ("cap-missing", dict(estimator="ips-cap"),
     r"weight_cap must be a number > 0 \(math.inf for no cap\) for ips-cap, "
     "got None"),
    ("cap-zero", dict(estimator="ips-cap", weight_cap=0.0),
     r"weight_cap must be a number > 0 \(math.inf for no cap\) for ips-cap, "
     "got 0.0"),
    ("switch-negative", dict(estimator="switch-dr", switch_threshold=-1.0),
     r"switch_threshold must be None \(the data-driven rule\) or a number >= 0 "
     r"\(math.inf: plain DR\), got -1.0"),
    ("reward-bound", dict(estimator="switch-dr", reward_bound=0.0),
     "reward_bound must be a number > 0.0, got 0.0"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_refusals(changes, message):
    with pytest.raises(ConfigError, match=message):
        estimate_policy_value(**{**GOOD, **changes})


def test_estimators_list_refused_when_a_string():
    with pytest.raises(ConfigError, match="estimators must be a non-empty list"):
        estimate_policy_values("dr", T2, np.array([0, 1]), [1.0, 0.0], [0.5, 0.5])


CROSS_FIT_REFUSALS = [
    ("folds", dict(n_folds=1), r"n_folds must be an integer in \[2, 4\], got 1"),
    ("actions-range", dict(actions=np.array([0, 1, 3, 0])),
     r"actions must be in \[0, 2\], got 3 \(round 2\)"),
    ("features-rows", dict(features=np.ones((3, 2))),
     r"features must be an \(n, d\) array with n = 4 rows, got shape \(3, 2\)"),
    ("features-nan", dict(features=np.array([[0.0], [math.nan], [0.0], [0.0]])),
     r"features must be finite, got nan \(row 1, column 0\)"),
    ("l2", dict(l2=0.0), "l2 must be a number > 0.0, got 0.0"),
    ("rewards-nan", dict(rewards=[0.0, 1.0, math.nan, 0.0]),
     r"rewards must be finite, got nan \(round 2\)"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in CROSS_FIT_REFUSALS],
                         ids=[r[0] for r in CROSS_FIT_REFUSALS])
def test_cross_fit_refusals(changes, message):
    args = dict(actions=np.array([0, 1, 2, 0]), rewards=[0.0, 1.0, 1.0, 0.0],
                n_actions=3, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match=message):
        cross_fit_rewards(**{**args, **changes})


# --- sim.bandit ---------------------------------------------------------------------


def test_simulated_actions_follow_the_logging_policy():
    mu = np.array([[0.1, 0.0, 0.6, 0.3]])
    log = simulate_bandit(np.full((1, 4), 0.5), mu, 200_000,
                          np.random.default_rng(8))
    share = np.bincount(log.actions, minlength=4) / 200_000
    se = np.sqrt(mu[0] * (1 - mu[0]) / 200_000)
    assert (np.abs(share - mu[0]) <= 4 * se + 1e-12).all()
    assert share[1] == 0.0
    np.testing.assert_array_equal(log.propensity, mu[0, log.actions])


def test_linear_moments_equal_enumeration():
    q_hat = np.array([[0.5, 0.1, 0.3], [0.2, 0.2, 0.9]])
    for predictions, cap in [(None, math.inf), (q_hat, math.inf), (None, 2.0)]:
        mean, variance = linear_moments(TINY_TARGET, TINY_MU, TINY_Q, predictions,
                                        cap)
        qh = np.zeros((2, 3)) if predictions is None else predictions
        values, probs = [], []
        for actions in itertools.product(range(3), repeat=2):
            for rewards in itertools.product([0.0, 1.0], repeat=2):
                a = list(actions)
                q = TINY_Q[[0, 1], a]
                prob = TINY_MU[[0, 1], a].prod() * np.prod(
                    np.where(rewards, q, 1 - q))
                w = np.minimum(TINY_TARGET[[0, 1], a] / TINY_MU[[0, 1], a], cap)
                terms = (TINY_TARGET * qh).sum(1) + w * (
                    np.array(rewards) - qh[[0, 1], a])
                values.append(terms.mean())
                probs.append(prob)
        values, probs = np.array(values), np.array(probs)
        exact_mean = (probs * values).sum()
        assert mean == pytest.approx(exact_mean, rel=1e-12)
        assert variance == pytest.approx((probs * (values - exact_mean) ** 2).sum(),
                                         rel=1e-10)


BANDIT_REFUSALS = [
    ("q-range", dict(expected_reward=[[1.2, 0.5]]),
     r"expected_reward must be in \[0, 1\], got 1.2 \(index \(0, 0\)\)"),
    ("logging-shape", dict(logging=[[0.5, 0.5], [0.5, 0.5]]),
     r"logging must be an array of shape \(1, 2\), got shape \(2, 2\)"),
    ("logging-rows", dict(logging=[[0.5, 0.4]]),
     r"logging rows must sum to 1 \(within 1e-06\), got 0.9 \(row 0\)"),
    ("rounds", dict(n_rounds=0), "n_rounds must be an integer >= 1, got 0"),
    ("contexts", dict(contexts=np.array([0, 1])),
     r"contexts must be in \[0, 0\], got 1 \(round 1\)"),
]


@pytest.mark.parametrize("changes, message", [r[1:] for r in BANDIT_REFUSALS],
                         ids=[r[0] for r in BANDIT_REFUSALS])
def test_simulate_bandit_refusals(changes, message):
    args = dict(expected_reward=[[0.2, 0.5]], logging=[[0.5, 0.5]], n_rounds=10,
                rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match=message):
        simulate_bandit(**{**args, **changes})


def test_softmax_policy_refusals_and_exploration_floor():
    with pytest.raises(ConfigError, match="temperature must be a number > 0.0"):
        softmax_policy([[0.0, 1.0]], 0.0)
    with pytest.raises(ConfigError, match="epsilon must be a number >= 0.0 and"):
        softmax_policy([[0.0, 1.0]], 1.0, 1.5)
    policy = softmax_policy([[0.0, 100.0]], 0.1, 0.2)
    assert policy.min() == pytest.approx(0.1) and policy.sum() == pytest.approx(1)


def test_estimate_is_a_named_tuple_with_the_documented_fields():
    assert OpeEstimate._fields == (
        "value", "se", "ci_low", "ci_high", "n", "ess", "max_weight", "top_share",
        "n_capped", "support_violations", "threshold")
