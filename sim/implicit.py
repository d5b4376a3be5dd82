"""The implicit-feedback log: slates shown, clicks and plays, and its truth.

`simulate_implicit` takes a sampled `World` (the same one that can produce the
explicit rating channel, `sim.ratings`) and runs ``n_visits`` visits (default
``exposure.visits`` = 100,000). Each visit draws its user uniformly at random,
the logging policy fills a slate of K items (`sim.exposure`), a share
``intervention.swap_share`` of visits gets a RandPair swap of rank 1 with a
uniform rank in 2..K, and the user examines, clicks and plays
(`sim.behaviour`) according to the true relevance (`sim.relevance`).

The log (`ImpressionLog.impressions`) has one row per impression, visit-major
and in displayed rank order within a visit:

    visit (int32), user (int32), item (int32), position (int8, 1-based rank
    at which the item was displayed), original_position (int8, the rank the
    policy chose before a RandPair swap; equal to position on other visits,
    known to the system that ran the intervention), p_shown (float64), p_rank (float64),
    slate_logprob (float64, the log-probability of the visit's displayed
    slate, repeated on its rows), swapped (bool), click (bool), plays (int32).

p_shown and p_rank are the policy's exact propensities (see `sim.exposure`
for swapped visits). The truth (`ImplicitTruth.impressions`) is aligned row by
row with the log: relevant (bool, R used for that impression), gamma (float64),
examined (bool), p_examine (float64).

Swapped visits feed training only if ``intervention.train_on_swaps`` is true
(default false): `ImpressionLog.training`, `clicks_by_pair` and
`p_expose_pair` then leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from sim.behaviour import (
    ClickConfig,
    EngagementConfig,
    ExaminationConfig,
    p_examine_by_rank,
    react,
)
from sim.config import ConfigError, check
from sim.exposure import (
    ExposureConfig,
    InterventionConfig,
    SlatePolicy,
    check_slate_size,
    draw_swaps,
    make_policy,
    swap_composed,
)
from sim.relevance import Relevance, RelevanceConfig, sample_relevance
from sim.world import World

__all__ = [
    "LOG_COLUMNS",
    "TRUTH_COLUMNS",
    "PAIR_COLUMNS",
    "ImpressionLog",
    "ImplicitTruth",
    "simulate_implicit",
    "clicks_by_pair",
    "p_expose_pair",
]

LOG_COLUMNS = ("visit", "user", "item", "position", "original_position", "p_shown",
               "p_rank", "slate_logprob", "swapped", "click", "plays")
TRUTH_COLUMNS = ("relevant", "gamma", "examined", "p_examine")
PAIR_COLUMNS = ("user", "item", "clicks", "plays", "impressions")


@dataclass(frozen=True, eq=False)
class ImpressionLog:
    """What the system records.

    impressions: DataFrame with LOG_COLUMNS, n_visits * K rows; visits:
    DataFrame (visit, user, swapped), one row per visit; policy: the logging
    `SlatePolicy` (the system knows its own policy and its exact tables);
    train_on_swaps: whether swapped visits feed training.
    """

    n_users: int
    n_items: int
    slate_size: int
    impressions: pd.DataFrame
    visits: pd.DataFrame
    policy: SlatePolicy
    train_on_swaps: bool

    def training(self) -> pd.DataFrame:
        """The impressions that feed training (all, or those of unswapped visits)."""
        if self.train_on_swaps:
            return self.impressions
        return self.impressions[~self.impressions["swapped"].to_numpy()]

    def visits_per_user(self, include_swapped: bool = True) -> np.ndarray:
        """Realised number of visits per user (U,) int64."""
        visits = self.visits
        if not include_swapped:
            visits = visits[~visits["swapped"].to_numpy()]
        return np.bincount(visits["user"].to_numpy(), minlength=self.n_users)


@dataclass(frozen=True, eq=False)
class ImplicitTruth:
    """What only the simulator knows.

    world; relevance (gamma (U, I), relevant R (U, I)); impressions: DataFrame
    with TRUTH_COLUMNS aligned row by row with the log; examination: the
    examination config; theta: p_examine per rank (K,) under the PBM, None under
    the cascade model.
    """

    world: World
    relevance: Relevance
    impressions: pd.DataFrame
    examination: ExaminationConfig
    theta: np.ndarray | None

    @property
    def gamma(self) -> np.ndarray:
        return self.relevance.gamma

    @property
    def relevant(self) -> np.ndarray:
        return self.relevance.relevant


def simulate_implicit(
    world: World,
    rng: np.random.Generator,
    *,
    relevance: RelevanceConfig = RelevanceConfig(),
    exposure: ExposureConfig = ExposureConfig(),
    examination: ExaminationConfig = ExaminationConfig(),
    click: ClickConfig = ClickConfig(),
    engagement: EngagementConfig = EngagementConfig(),
    intervention: InterventionConfig = InterventionConfig(),
    n_visits: int | None = None,
    scores: Callable[[np.ndarray], np.ndarray] | None = None,
    policy: SlatePolicy | None = None,
) -> tuple[ImpressionLog, ImplicitTruth]:
    """Run ``n_visits`` visits (default ``exposure.visits``) of ``world``.

    ``scores`` is the callable wrapped by ``exposure.policy = 'model'``.
    ``policy`` reuses an already built policy (and its cached exact tables,
    which are the costly part for per-user policies) instead of building one
    from ``exposure``; its slate size must equal ``exposure.slate_size``.
    Named child streams of ``rng`` draw relevance, the production-score noise,
    the visiting users, the slates, the swaps, per-impression relevance and the
    behaviour, in that order; the same ``rng`` seed gives the same log.
    """
    n_visits = exposure.visits if n_visits is None else n_visits
    ok = isinstance(n_visits, (int, np.integer)) and not isinstance(n_visits, bool)
    check(ok and n_visits >= 1, "n_visits", "an integer >= 1", n_visits)
    k = exposure.slate_size
    check_slate_size(k, world.n_items)
    if intervention.swap_share > 0:
        check(k >= 2, "intervention.swap_share",
              "0 when exposure.slate_size is 1 (nothing to swap)",
              intervention.swap_share)
    if policy is not None:
        check(policy.n_items == world.n_items and policy.slate_size == k, "policy",
              f"a policy over {world.n_items} items with slates of {k}",
              f"{policy.n_items} items, slates of {policy.slate_size}")
        check(not policy.per_user or policy.log_weights.shape[0] == world.n_users,
              "policy", f"one weight row per user ({world.n_users})",
              policy.log_weights.shape[0] if policy.per_user else 1)

    (rel_rng, policy_rng, visit_rng, slate_rng, swap_rng, impression_rng,
     behaviour_rng) = rng.spawn(7)
    truth_relevance = sample_relevance(world, relevance, rel_rng)
    if policy is None:
        policy = make_policy(world, exposure, policy_rng, scores)
    users = visit_rng.integers(0, world.n_users, size=n_visits)
    slates = policy.sample(users, slate_rng)

    # RandPair: exchange rank 1 with rank `partner` on the swapped visits.
    partner = draw_swaps(n_visits, k, intervention.swap_share, swap_rng)
    swapped = partner > 0
    shown = slates.copy()
    rows = np.flatnonzero(swapped)
    cols = partner[rows].astype(np.int64) - 1
    shown[rows, 0] = slates[rows, cols]
    shown[rows, cols] = slates[rows, 0]

    # Exact propensities of what was displayed, given the visit's type.
    table = policy.p_rank_table()
    row_of = policy.rows(users)[:, None]
    positions = np.broadcast_to(np.arange(k), (n_visits, k))
    p_rank = table[row_of, shown, positions]
    p_shown = table.sum(axis=-1)[row_of, shown]
    slate_logprob = np.empty(n_visits)
    slate_logprob[~swapped] = policy.slate_logprob(users[~swapped], slates[~swapped])
    if rows.size:
        composed = swap_composed(table[row_of[rows], shown[rows]])  # (n_s, K, K)
        diagonal = np.arange(k)
        p_rank[rows] = composed[np.arange(rows.size)[:, None], diagonal, diagonal]
        slate_logprob[rows] = policy.swapped_slate_logprob(users[rows], shown[rows])

    gamma = truth_relevance.gamma[users[:, None], shown]
    if relevance.per_impression:
        relevant = impression_rng.random(gamma.shape) < gamma
    else:
        relevant = truth_relevance.relevant[users[:, None], shown]
    reaction = react(relevant, gamma, examination, click, engagement, behaviour_rng)

    original = np.broadcast_to(np.arange(1, k + 1, dtype=np.int8), (n_visits, k)).copy()
    original[rows, 0] = partner[rows]
    original[rows, cols] = 1
    visit_ids = np.arange(n_visits, dtype=np.int32)
    impressions = pd.DataFrame({
        "visit": np.repeat(visit_ids, k),
        "user": np.repeat(users.astype(np.int32), k),
        "item": shown.astype(np.int32).ravel(),
        "position": np.tile(np.arange(1, k + 1, dtype=np.int8), n_visits),
        "original_position": original.ravel(),
        "p_shown": p_shown.ravel(),
        "p_rank": p_rank.ravel(),
        "slate_logprob": np.repeat(slate_logprob, k),
        "swapped": np.repeat(swapped, k),
        "click": reaction.click.ravel(),
        "plays": reaction.plays.ravel(),
    })
    visits = pd.DataFrame({"visit": visit_ids, "user": users.astype(np.int32),
                           "swapped": swapped})
    truth_rows = pd.DataFrame({
        "relevant": relevant.ravel(),
        "gamma": gamma.ravel(),
        "examined": reaction.examined.ravel(),
        "p_examine": reaction.p_examine.ravel(),
    })
    theta = p_examine_by_rank(examination, k) if examination.model == "pbm" else None
    log = ImpressionLog(world.n_users, world.n_items, k, impressions, visits, policy,
                        intervention.train_on_swaps)
    truth = ImplicitTruth(world, truth_relevance, truth_rows, examination, theta)
    return log, truth


def _check_nonempty(frame: pd.DataFrame, key: str) -> None:
    if len(frame) == 0:
        raise ConfigError(f"{key} must hold at least one impression, got 0 rows")


def clicks_by_pair(
    log: ImpressionLog | pd.DataFrame, include_swapped: bool | None = None
) -> pd.DataFrame:
    """The positive-only view: one row per (user, item) pair with >= 1 click.

    Columns PAIR_COLUMNS: user, item (int32), clicks, plays, impressions
    (int64, counted over the same rows), sorted by user then item. From an
    `ImpressionLog`, ``include_swapped`` defaults to the log's
    ``train_on_swaps``; from a bare impressions DataFrame every row is used
    unless ``include_swapped`` is false.
    """
    if isinstance(log, ImpressionLog):
        include = log.train_on_swaps if include_swapped is None else include_swapped
        frame, n_items = log.impressions, log.n_items
    else:
        check(isinstance(log, pd.DataFrame), "log", "an ImpressionLog or a DataFrame",
              type(log).__name__)
        missing = [c for c in ("user", "item", "click", "plays", "swapped")
                   if c not in log.columns]
        check(not missing, "log", "a frame with columns user, item, click, plays, "
              "swapped", f"missing {missing}")
        include = True if include_swapped is None else include_swapped
        frame = log
        n_items = int(frame["item"].max()) + 1 if len(frame) else 0
    _check_nonempty(frame, "log")
    if not include:
        frame = frame[~frame["swapped"].to_numpy()]
        _check_nonempty(frame, "log without swapped visits")
    users = frame["user"].to_numpy().astype(np.int64)
    items = frame["item"].to_numpy().astype(np.int64)
    key = users * n_items + items
    clicked = frame["click"].to_numpy()
    pairs, inverse = np.unique(key, return_inverse=True)
    clicks = np.bincount(inverse, weights=clicked, minlength=pairs.size)
    plays = np.bincount(inverse, weights=frame["plays"].to_numpy(),
                        minlength=pairs.size)
    impressions = np.bincount(inverse, minlength=pairs.size)
    keep = clicks > 0
    return pd.DataFrame({
        "user": (pairs[keep] // n_items).astype(np.int32),
        "item": (pairs[keep] % n_items).astype(np.int32),
        "clicks": clicks[keep].astype(np.int64),
        "plays": plays[keep].astype(np.int64),
        "impressions": impressions[keep].astype(np.int64),
    })


def p_expose_pair(
    log: ImpressionLog,
    truth: ImplicitTruth | None = None,
    *,
    theta: np.ndarray | None = None,
    include_swapped: bool | None = None,
) -> np.ndarray:
    """P(pair (u, i) examined at least once over the logged visits), (U, I).

    Per visit of user u the pair is examined with probability
    e_ui = sum_k p_rank(u, i, k) theta_k (PBM: examination is independent of
    what is shown), and visits are independent given the user, so over the
    user's realised n_u visits

        p_expose_pair(u, i) = 1 - (1 - e_ui)^{n_u},

    where swapped visits, when included, use the swap-composed p_rank. The
    visit counts are those of the log (which shows them); ``include_swapped``
    defaults to the log's ``train_on_swaps``, so the result matches the
    training rows. theta is the truth's (``truth``) or one passed in
    (``theta``, (K,) in [0, 1], e.g. an estimate). Under the cascade model
    examination depends on the clicks above, and the truth refuses.
    """
    check((truth is None) != (theta is None), "truth, theta", "exactly one given",
          "both" if truth is not None else "neither")
    if truth is not None:
        theta = p_examine_by_rank(truth.examination, log.slate_size)
    theta = np.asarray(theta, dtype=np.float64)
    check(theta.shape == (log.slate_size,), "theta", f"shape ({log.slate_size},)",
          theta.shape)
    bad = ~np.isfinite(theta) | (theta < 0) | (theta > 1)
    if bad.any():
        at = int(np.argmax(bad))
        raise ConfigError(f"theta must be in [0, 1], got {float(theta[at])!r} "
                          f"(rank {at + 1})")
    _check_nonempty(log.impressions, "log")
    include = log.train_on_swaps if include_swapped is None else include_swapped

    table = log.policy.p_rank_table()  # (R, I, K)

    def miss(n: np.ndarray, exposed: np.ndarray) -> np.ndarray:
        # n log(1 - e), with 0 when n = 0 (also where e = 1)
        with np.errstate(divide="ignore"):
            return np.where(n > 0, n * np.log1p(-np.minimum(exposed, 1.0)), 0.0)

    n_plain = log.visits_per_user(include_swapped=False)[:, None]
    log_miss = miss(n_plain, table @ theta)
    if include and log.slate_size >= 2:
        n_swap = log.visits_per_user(include_swapped=True)[:, None] - n_plain
        log_miss = log_miss + miss(n_swap, swap_composed(table) @ theta)
    return -np.expm1(np.broadcast_to(log_miss, (log.n_users, log.n_items)))
