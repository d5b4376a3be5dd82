"""Speed of the implicit-feedback simulator against a per-visit Python loop.

What it measures. Wall-clock seconds of `sim.implicit.simulate_implicit` for
``n_visits`` visits with slates of K items over ``n_items`` items: the
popularity Plackett-Luce policy with its exact p_shown and p_rank table
(quadrature, `sim.exposure`), each slate's exact log-probability, RandPair
swaps on 5% of visits, position-based examination, clicks, Poisson plays, and
the pandas log. The reference is a straightforward loop doing the same work
one visit at a time (numpy's ``Generator.choice`` over the remaining items
for each rank, table look-ups, one draw per examination, click and play, a
list of row tuples turned into a DataFrame), timed on ``loop_visits`` visits
and extrapolated linearly; the parts both share once per run (the relevance
truth and the exact table) are timed apart and added to the loop's estimate.

Per-user softmax policies are reported separately: their exact table is one
quadrature per user (U x I x K numbers), timed on its own, and their sampling
runs one vectorised block per user.

Scenario. A world of ``n_users`` x ``n_items`` (default 1,000 x 2,000) from
`sim.world` with default settings; every other setting at its default.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from sim.behaviour import ExaminationConfig, p_examine_by_rank
from sim.exposure import ExposureConfig, InterventionConfig, make_policy
from sim.implicit import simulate_implicit
from sim.relevance import RelevanceConfig, sample_relevance
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world

__all__ = ["bench_simulation", "main"]


def _loop_visits(world, policy, relevance, theta, n_visits, swap_share, rng):
    """The per-visit reference: one visit at a time in plain Python and numpy."""
    weights = policy.weights()[0]
    table = policy.p_rank_table()[0]
    shown_table = table.sum(axis=1)
    k, n_items = policy.slate_size, policy.n_items
    gamma, relevant = relevance.gamma, relevance.relevant
    rows = []
    for visit in range(n_visits):
        user = int(rng.integers(world.n_users))
        left = weights.copy()
        slate, logp = [], 0.0
        for _ in range(k):
            total = left.sum()
            item = int(rng.choice(n_items, p=left / total))
            logp += math.log(left[item] / total)
            slate.append(item)
            left[item] = 0.0
        swapped = rng.random() < swap_share
        if swapped:
            partner = int(rng.integers(1, k))
            slate[0], slate[partner] = slate[partner], slate[0]
        for rank, item in enumerate(slate):
            p_rank = table[item, rank]
            if swapped:  # displayed-position marginal of a swapped visit
                p_rank = (table[item, 1:].mean() if rank == 0 else
                          (table[item, 0] + (k - 2) * table[item, rank]) / (k - 1))
            examined = rng.random() < theta[rank]
            click = examined and bool(relevant[user, item])
            plays = int(rng.poisson(1.0 + 10.0 * gamma[user, item])) if click else 0
            rows.append((visit, user, item, rank + 1, shown_table[item], p_rank, logp,
                         swapped, click, plays))
    return pd.DataFrame(rows, columns=["visit", "user", "item", "position", "p_shown",
                                       "p_rank", "slate_logprob", "swapped", "click",
                                       "plays"])


def bench_simulation(
    n_visits: int = 1_000_000,
    n_items: int = 2000,
    K: int = 10,
    n_users: int = 1000,
    loop_visits: int = 20_000,
    softmax: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the simulator and the per-visit loop; returns a dict of figures.

    Keys: sizes; ``seconds`` and ``visits_per_s`` of the vectorised popularity
    run (table included), ``table_seconds`` (its exact table alone),
    ``setup_seconds`` (relevance truth + table, shared by both),
    ``loop_seconds_per_visit``, ``loop_seconds`` (extrapolated to n_visits,
    setup included) and ``speedup``; with ``softmax``, ``softmax_table_seconds``
    (the per-user exact table), ``softmax_seconds`` (the run given the table)
    and ``softmax_visits_per_s``.
    """
    rng = np.random.default_rng(seed)
    world_rng, run_rng, loop_rng, soft_rng = rng.spawn(4)
    world = sample_world(WorldConfig(n_users=n_users, n_items=n_items), MUSIC_MARGINAL,
                         world_rng)
    exposure = ExposureConfig(policy="popularity", slate_size=K)
    out: dict[str, Any] = {"n_visits": n_visits, "n_items": n_items, "slate_size": K,
                           "n_users": n_users, "loop_visits": loop_visits}

    start = time.perf_counter()
    log, _ = simulate_implicit(world, run_rng, exposure=exposure, n_visits=n_visits)
    out["seconds"] = time.perf_counter() - start
    out["visits_per_s"] = n_visits / out["seconds"]
    out["rows"] = len(log.impressions)
    del log

    start = time.perf_counter()
    relevance = sample_relevance(world, RelevanceConfig(), loop_rng)
    policy = make_policy(world, exposure, loop_rng)
    table_start = time.perf_counter()
    policy.p_rank_table()
    out["table_seconds"] = time.perf_counter() - table_start
    out["setup_seconds"] = time.perf_counter() - start
    theta = p_examine_by_rank(ExaminationConfig(), K)
    start = time.perf_counter()
    _loop_visits(world, policy, relevance, theta, loop_visits,
                 InterventionConfig().swap_share, loop_rng)
    per_visit = (time.perf_counter() - start) / loop_visits
    out["loop_seconds_per_visit"] = per_visit
    out["loop_seconds"] = out["setup_seconds"] + per_visit * n_visits
    out["speedup"] = out["loop_seconds"] / out["seconds"]

    if softmax:
        soft = ExposureConfig(policy="softmax", slate_size=K)
        policy_rng, visit_rng = soft_rng.spawn(2)
        soft_policy = make_policy(world, soft, policy_rng)
        start = time.perf_counter()
        soft_policy.p_rank_table()
        out["softmax_table_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        simulate_implicit(world, visit_rng, exposure=soft, n_visits=n_visits,
                          policy=soft_policy)
        out["softmax_seconds"] = time.perf_counter() - start
        out["softmax_visits_per_s"] = n_visits / out["softmax_seconds"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--slate-size", type=int, default=10)
    parser.add_argument("--loop-visits", type=int, default=20_000)
    parser.add_argument("--no-softmax", action="store_true")
    args = parser.parse_args(argv)
    res = bench_simulation(args.visits, args.items, args.slate_size, args.users,
                           args.loop_visits, softmax=not args.no_softmax)
    print(f"implicit simulator: {res['n_visits']:,} visits x K={res['slate_size']} "
          f"over {res['n_items']:,} items, {res['n_users']:,} users")
    print(f"  popularity PL + PBM + clicks + plays, exact p_shown/p_rank: "
          f"{res['seconds']:.2f} s ({res['visits_per_s']:,.0f} visits/s; "
          f"exact table {res['table_seconds']:.2f} s)")
    per_visit_us = res["loop_seconds_per_visit"] * 1e6
    print(f"  per-visit Python loop: {per_visit_us:.0f} us/visit "
          f"on {res['loop_visits']:,} visits -> {res['loop_seconds']:.0f} s "
          f"extrapolated; vectorised is {res['speedup']:.0f}x faster")
    if "softmax_seconds" in res:
        print(f"  per-user softmax PL (reported apart): exact table "
              f"{res['softmax_table_seconds']:.2f} s for {res['n_users']:,} users, "
              f"then {res['softmax_seconds']:.2f} s "
              f"({res['softmax_visits_per_s']:,.0f} visits/s)")
    return res


if __name__ == "__main__":
    main()
