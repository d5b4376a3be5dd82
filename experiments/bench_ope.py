"""Speed of the bandit OPE estimators against a bare numpy computation.

What it measures. Wall-clock seconds of `estimators.ope.estimate_policy_values`
for IPS, SNIPS and DR together on one log of ``n_rounds`` rounds (default
1,000,000) with ``n_actions`` actions (default 100): full validation of every
input array (probability rows, ranges, finiteness, shapes), the gathers at the
logged actions, the point estimates, their standard errors and intervals, and
the diagnostics (effective sample size, largest weight, top-1% weight share).
The reference is the same three point estimates written in bare numpy in
float64 on the same arrays in the same run, with no checks, no standard errors
and no diagnostics:

    w = pi[rows, a] / mu;  ips = mean(w r);  snips = sum(w r) / sum(w);
    dr = mean(sum(pi * qhat, axis=1) + w (r - qhat[rows, a])).

Each is timed as the best of ``repeats`` runs. No JAX is used, so there is no
compile time to report. The three point estimates must agree with the
reference within 1e-5 relative (they agree to rounding).

Scenario. pi and mu are softmax policies over random scores (mu with 10%
uniform exploration), rewards Bernoulli(q) with q uniform on [0, 0.5], qhat =
q plus noise; the arrays are drawn once and shared by both computations.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from estimators.ope import estimate_policy_values

__all__ = ["bench_ope", "main"]


def _numpy_reference(target, actions, rewards, propensity, reward_predictions):
    rows = np.arange(actions.size)
    weights = target[rows, actions] / propensity
    ips = np.mean(weights * rewards)
    snips = np.sum(weights * rewards) / np.sum(weights)
    direct = np.sum(target * reward_predictions, axis=1)
    dr = np.mean(direct + weights * (rewards - reward_predictions[rows, actions]))
    return {"ips": float(ips), "snips": float(snips), "dr": float(dr)}


def _best_of(repeats: int, call) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - start)
    return best, out


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def bench_ope(n_rounds: int = 1_000_000, n_actions: int = 100, repeats: int = 3,
              seed: int = 0) -> dict[str, Any]:
    """Time both computations on one shared log; returns the figures as a dict."""
    rng = np.random.default_rng(seed)
    target = _softmax(rng.normal(size=(n_rounds, n_actions)))
    logging = _softmax(rng.normal(size=(n_rounds, n_actions)))
    logging *= 0.9
    logging += 0.1 / n_actions
    cumulative = np.cumsum(logging, axis=1)
    draw = rng.random(n_rounds) * cumulative[:, -1]
    actions = np.minimum((cumulative <= draw[:, None]).sum(axis=1), n_actions - 1)
    del cumulative
    rows = np.arange(n_rounds)
    propensity = logging[rows, actions]
    del logging
    q = rng.uniform(0.0, 0.5, size=(n_rounds, n_actions))
    rewards = (rng.random(n_rounds) < q[rows, actions]).astype(np.float64)
    q += rng.normal(0.0, 0.05, size=q.shape)  # the reward model's predictions

    names = ("ips", "snips", "dr")
    ref_seconds, reference = _best_of(
        repeats, lambda: _numpy_reference(target, actions, rewards, propensity, q))
    ours_seconds, ours = _best_of(
        repeats, lambda: estimate_policy_values(names, target, actions, rewards,
                                                propensity, q))
    rel_error = max(abs(ours[name].value - reference[name]) / abs(reference[name])
                    for name in names)
    if rel_error > 1e-5:
        raise AssertionError(f"estimates differ from numpy by {rel_error:.2e} relative")
    return {
        "n_rounds": n_rounds,
        "n_actions": n_actions,
        "numpy_seconds": ref_seconds,
        "ope_seconds": ours_seconds,
        "ratio": ours_seconds / ref_seconds,
        "max_rel_error": rel_error,
        "estimates": {name: ours[name] for name in names},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    res = bench_ope(args.rounds, args.actions, args.repeats)
    print(f"bandit OPE: {res['n_rounds']:,} rounds x {res['n_actions']} actions, "
          f"IPS + SNIPS + DR, float64, best of {args.repeats}")
    print(f"  bare numpy point estimates: {res['numpy_seconds']:.3f} s")
    print(f"  estimators.ope with validation, SEs, intervals, diagnostics: "
          f"{res['ope_seconds']:.3f} s")
    print(f"  ratio ope / numpy: {res['ratio']:.2f} (below 1: faster than numpy)")
    print(f"  largest relative difference of the point estimates: "
          f"{res['max_rel_error']:.1e}")
    print("  compile time: none (numpy, no JAX)")
    return res


if __name__ == "__main__":
    main()
