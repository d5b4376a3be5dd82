"""Which ratings get logged: selection missing not at random.

Each cell (u, i) with true rating r is observed independently with

    p_observe(u, i) = min(1, c * s_r * (pop_i / max pop)^gamma),

where s_r is the per-star selection weight of the preset, gamma is
``selection.popularity_gamma`` and c is solved numerically so that the expected
density (1/N) sum p_observe equals ``selection.density``. The number of cells
where the cap at 1 binds is reported.

Presets for s_r (stars 1..5):

- ``uniform``: s_r = 1, missing completely at random.
- ``value``: s_r = 1 for r >= 4 and alpha^(4 - r) below, alpha =
  ``selection.alpha`` (Schnabel et al., ICML 2016, section 6.1).
- ``yahoo-like``: s_r = [0.60, 0.53, 1.10, 2.49, 9.64] at 2% density, the
  over-representation of each star among user-chosen ratings relative to a
  random sample in a large music-rating study (Marlin et al., 2007).
- ``coat-like``: true marginal [0.405, 0.194, 0.216, 0.138, 0.047] with
  s_r = [0.67, 1.07, 1.14, 1.33, 1.92] at 8% density (a clothing data set with a
  random test set; Schnabel et al., 2016).

Without capping and with gamma = 0 the observed marginal has the closed form
P(r | observed) = P(r) s_r / sum_k P(k) s_k, and the largest density a preset
reaches without distorting it is sum_k P(k) s_k / max_k s_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import ConfigError, check, check_range
from sim.world import MUSIC_MARGINAL, World

__all__ = [
    "PRESETS",
    "SelectionConfig",
    "Observation",
    "selection_weights",
    "max_density",
    "observe_probability",
    "observe",
]

COAT_MARGINAL = (0.405, 0.194, 0.216, 0.138, 0.047)

# name -> (s_r for stars 1..5 or None when it depends on alpha, default density,
# default true marginal)
PRESETS: dict[str, tuple[tuple[float, ...] | None, float, tuple[float, ...]]] = {
    "uniform": ((1.0, 1.0, 1.0, 1.0, 1.0), 0.05, MUSIC_MARGINAL),
    "value": (None, 0.05, MUSIC_MARGINAL),
    "yahoo-like": ((0.60, 0.53, 1.10, 2.49, 9.64), 0.02, MUSIC_MARGINAL),
    "coat-like": ((0.67, 1.07, 1.14, 1.33, 1.92), 0.08, COAT_MARGINAL),
}


@dataclass(frozen=True)
class SelectionConfig:
    """How ratings are selected for the log (keys ``selection.*``).

    ``density`` left unset (None) takes the preset's density.
    """

    preset: str = "value"
    alpha: float = 0.25  # used by the `value` preset only
    density: float | None = None
    popularity_gamma: float = 0.0
    propensity_floor: float = 1e-4

    def __post_init__(self) -> None:
        check(self.preset in PRESETS, "selection.preset",
              "one of " + ", ".join(PRESETS), self.preset)
        check_range(self.alpha, "selection.alpha", 0.0, low_open=True)
        if self.density is not None:
            check_range(self.density, "selection.density", 0.0, 1.0, low_open=True)
        check_range(self.popularity_gamma, "selection.popularity_gamma", 0.0)
        check_range(self.propensity_floor, "selection.propensity_floor", 0.0, 1.0,
                    high_open=True)

    def resolved_density(self) -> float:
        return PRESETS[self.preset][1] if self.density is None else self.density

    def resolved_marginal(self) -> tuple[float, ...]:
        return PRESETS[self.preset][2]


def selection_weights(cfg: SelectionConfig, n_levels: int = 5) -> np.ndarray:
    """Per-star selection weights s_r, (K,)."""
    weights, _, _ = PRESETS[cfg.preset]
    if weights is None:
        stars = np.arange(1, n_levels + 1)
        return cfg.alpha ** np.maximum(0, (n_levels - 1) - stars).astype(float)
    check(len(weights) == n_levels, "world.marginal",
          f"{len(weights)} stars for preset {cfg.preset!r}", n_levels)
    return np.asarray(weights, dtype=float)


def max_density(marginal: tuple[float, ...], weights: np.ndarray) -> float:
    """Largest density reachable without capping: sum_r P(r) s_r / max s_r."""
    return float(np.dot(marginal, weights) / weights.max())


def check_density(cfg: SelectionConfig, marginal: tuple[float, ...]) -> float:
    """Refuse a density the preset cannot reach; return the density."""
    density = cfg.resolved_density()
    reach = max_density(marginal, selection_weights(cfg, len(marginal)))
    if density > reach * (1 + 1e-12):
        raise ConfigError(
            f"selection.density must be in (0, {reach:.6g}] for preset "
            f"{cfg.preset!r} (sum_r P(r) s_r / max s_r), got {density!r}"
        )
    return density


@dataclass(frozen=True, eq=False)
class Observation:
    """The observation process of one world.

    p_observe (U, I) float64: P(cell logged); observed (U, I) bool: one draw;
    scale: the solved c; n_capped: cells where the cap at 1 binds.
    """

    p_observe: np.ndarray
    observed: np.ndarray
    scale: float
    n_capped: int


def observe_probability(
    world: World, cfg: SelectionConfig
) -> tuple[np.ndarray, float, int]:
    """p_observe (U, I), the solved scale c and the number of capped cells.

    c is found by bisection on the monotone map c -> mean min(1, c * base),
    to a relative error of 1e-12 in the density.
    """
    density = check_density(cfg, world.marginal)
    weights = selection_weights(cfg, world.n_levels)
    visibility = world.popularity / world.popularity.max()
    base = weights[world.ratings - 1] * (visibility ** cfg.popularity_gamma)[None, :]

    def mean_p(scale: float) -> float:
        return float(np.minimum(1.0, scale * base).mean())

    low, high = 0.0, 1.0 / base.min()
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mean_p(mid) < density:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * high:
            break
    scale = 0.5 * (low + high)
    raw = scale * base
    return np.minimum(1.0, raw), scale, int((raw > 1.0).sum())


def observe(world: World, cfg: SelectionConfig, rng: np.random.Generator) -> Observation:
    """Draw which cells are logged, each independently with p_observe."""
    p_observe, scale, n_capped = observe_probability(world, cfg)
    observed = rng.random(p_observe.shape) < p_observe
    return Observation(p_observe, observed, scale, n_capped)
