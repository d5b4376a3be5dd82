"""True relevance for implicit feedback, drawn from the same latent world.

Each pair (u, i) has a true relevance probability

    gamma_ui = sigmoid(a * (z_ui - c)),

where z_ui is the world's latent score (`World.score`), a is
``relevance.sharpness`` and the offset c is solved numerically so that the
mean of gamma over all U x I pairs equals ``relevance.base_rate``. A binary
relevance R_ui ~ Bernoulli(gamma_ui) is drawn once per pair and kept in the
truth; with ``relevance.per_impression = true`` the simulator instead redraws
R for every impression from the same gamma (the pair-level draw is still made
and kept, but clicks then follow the per-impression draws).

Because gamma is a monotone function of the same z that sets the star ratings
(`sim.world`), one world yields both channels: the items a user would rate
highly are the items the user tends to find relevant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from sim.config import check, check_range
from sim.world import World

__all__ = ["RelevanceConfig", "Relevance", "relevance_probability", "sample_relevance"]


@dataclass(frozen=True)
class RelevanceConfig:
    """How relevance follows the latent score (keys ``relevance.*``)."""

    base_rate: float = 0.05  # mean of gamma over all pairs
    sharpness: float = 2.0  # slope a of the sigmoid in the latent score
    per_impression: bool = False  # redraw R for every impression

    def __post_init__(self) -> None:
        check_range(self.base_rate, "relevance.base_rate", 0.0, 1.0, low_open=True,
                    high_open=True)
        check_range(self.sharpness, "relevance.sharpness", 0.0, low_open=True)
        check(isinstance(self.per_impression, bool), "relevance.per_impression",
              "true or false", self.per_impression)


@dataclass(frozen=True, eq=False)
class Relevance:
    """The relevance truth of one world.

    gamma (U, I) float64: P(R_ui = 1); relevant (U, I) bool: the pair-level draw
    of R; offset: the solved c; per_impression: whether clicks use fresh draws.
    """

    gamma: np.ndarray
    relevant: np.ndarray
    offset: float
    per_impression: bool


def relevance_probability(
    score: np.ndarray, cfg: RelevanceConfig
) -> tuple[np.ndarray, float]:
    """gamma = sigmoid(a (score - c)) with mean(gamma) = base_rate; returns (gamma, c).

    ``score`` is (U, I). The mean is strictly decreasing in c; c is kept in a
    bracket that starts at [min score - 40/a, max score + 40/a] (where the mean
    is within e^-40 of 1 and 0), with Newton steps that fall back to bisection
    when they leave it, until the mean is within 1e-12 of the target, relative.
    """
    score = np.asarray(score, dtype=np.float64)
    check(score.size >= 1 and bool(np.isfinite(score).all()), "score",
          "a non-empty array of finite numbers", f"array of shape {score.shape}")
    slope, target = cfg.sharpness, cfg.base_rate
    low = float(score.min()) - 40.0 / slope
    high = float(score.max()) + 40.0 / slope
    offset = 0.5 * (low + high)
    for _ in range(200):
        solved = offset
        gamma = expit(slope * (score - solved))
        rate = float(gamma.mean())
        if abs(rate - target) <= 1e-12 * target:
            break
        if rate > target:
            low = offset
        else:
            high = offset
        # Newton step on the bracket (d rate / d c = -a mean(gamma (1 - gamma))),
        # bisection when it leaves the bracket.
        derivative = slope * float((gamma * (1.0 - gamma)).mean())
        newton = offset + (rate - target) / derivative if derivative > 0 else low
        offset = newton if low < newton < high else 0.5 * (low + high)
    return gamma, solved


def sample_relevance(
    world: World, cfg: RelevanceConfig, rng: np.random.Generator
) -> Relevance:
    """Solve gamma for ``world`` and draw R_ui ~ Bernoulli(gamma_ui) once per pair."""
    gamma, offset = relevance_probability(world.score, cfg)
    relevant = rng.random(gamma.shape) < gamma
    return Relevance(gamma, relevant, offset, cfg.per_impression)
