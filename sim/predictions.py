"""Prediction matrices that make naive evaluation mislead, and user-supplied ones.

Each built-in matrix is a function ``(ratings, p_observe, rng) -> predictions``
of the true ratings (U, I) on 1..K stars and the observation propensities (U,
I) of the rating channel (`sim.selection`), returning float64 predictions
(U, I). They are built so that the average over observed cells (which favour
cells with a high p_observe) says something different from the full matrix
(Schnabel et al., ICML 2016, section 3.2 uses matrices of this kind):

- ``rare-wrong``: near perfect (r + N(0, noise^2)) except on the share
  ``share`` of cells with the lowest p_observe, where it predicts the mirror
  rating K + 1 - r: good where the log looks, bad where it does not.
- ``shifted``: r + shift everywhere; after clipping to [1, K] the error is 0
  on the top stars and ``shift`` below, so its error depends on the rating
  and thus on p_observe under value-based selection.
- ``rare-noisy``: r + N(0, sd^2) with sd rising from ``noise_low`` at the
  largest p_observe to ``noise_high`` at the smallest (linearly in p).
- ``coarsened``: each rating replaced by the middle of its bin when the stars
  1..K are cut into ``bins`` equal-width bins (for K = 5 and 2 bins, stars
  1-2 predict 1.5 and 3-5 predict 4).

``check_predictions`` validates any matrix a user brings instead.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sim.config import ConfigError, check, check_range

__all__ = [
    "PREDICTION_MATRICES",
    "check_predictions",
    "coarsened",
    "make_predictions",
    "rare_noisy",
    "rare_wrong",
    "shifted",
]


class _Plain(str):
    """A description shown as is in an error message (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _inputs(ratings: Any, p_observe: Any) -> tuple[np.ndarray, np.ndarray]:
    ratings = np.asarray(ratings, dtype=np.float64)
    check(ratings.ndim == 2 and ratings.size >= 1, "ratings",
          "a non-empty (U, I) array", _Plain(f"shape {ratings.shape}"))
    bad = ~(np.isfinite(ratings) & (ratings >= 1.0))
    if bad.any():
        u, i = (int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"ratings must be finite stars >= 1, got "
                          f"{float(ratings[u, i])!r} (user {u}, item {i})")
    p_observe = np.asarray(p_observe, dtype=np.float64)
    check(p_observe.shape == ratings.shape, "p_observe",
          f"an array of shape {ratings.shape} like ratings",
          _Plain(f"shape {p_observe.shape}"))
    bad = ~((p_observe >= 0.0) & (p_observe <= 1.0))
    if bad.any():
        u, i = (int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"p_observe must be in [0, 1], got "
                          f"{float(p_observe[u, i])!r} (user {u}, item {i})")
    return ratings, p_observe


def _levels(ratings: np.ndarray, n_levels: int | None) -> int:
    top = int(np.ceil(ratings.max()))
    if n_levels is None:
        return max(top, 2)
    ok = isinstance(n_levels, (int, np.integer)) and not isinstance(n_levels, bool)
    check(ok and n_levels >= max(top, 2), "n_levels",
          f"an integer >= the largest rating ({top}) and >= 2", n_levels)
    return int(n_levels)


def rare_wrong(ratings: Any, p_observe: Any, rng: np.random.Generator,
               share: float = 0.25, noise: float = 0.1,
               n_levels: int | None = None) -> np.ndarray:
    """r + N(0, noise^2), but K + 1 - r on the ``share`` of cells with the
    lowest p_observe (ties by position). K = ``n_levels`` (default: the
    largest rating)."""
    ratings, p_observe = _inputs(ratings, p_observe)
    check_range(share, "share", 0.0, 1.0)
    check_range(noise, "noise", 0.0)
    levels = _levels(ratings, n_levels)
    predictions = ratings + rng.normal(0.0, noise, ratings.shape)
    n_rare = int(round(share * ratings.size))
    rare = np.argsort(p_observe, axis=None, kind="stable")[:n_rare]
    flat = predictions.reshape(-1)
    flat[rare] = levels + 1.0 - ratings.reshape(-1)[rare]
    return predictions


def shifted(ratings: Any, p_observe: Any, rng: np.random.Generator,
            shift: float = 1.0) -> np.ndarray:
    """r + ``shift`` in every cell (``p_observe`` and ``rng`` unused)."""
    ratings, _ = _inputs(ratings, p_observe)
    check_range(shift, "shift")
    return ratings + shift


def rare_noisy(ratings: Any, p_observe: Any, rng: np.random.Generator,
               noise_low: float = 0.2, noise_high: float = 2.0) -> np.ndarray:
    """r + N(0, sd^2), sd = noise_low + (noise_high - noise_low) (p_max - p) /
    (p_max - p_min), so the noise is largest where ratings are rarest."""
    ratings, p_observe = _inputs(ratings, p_observe)
    check_range(noise_low, "noise_low", 0.0)
    check_range(noise_high, "noise_high", 0.0)
    low, high = float(p_observe.min()), float(p_observe.max())
    rarity = (high - p_observe) / (high - low) if high > low else np.zeros_like(
        p_observe)
    sd = noise_low + (noise_high - noise_low) * rarity
    return ratings + sd * rng.standard_normal(ratings.shape)


def coarsened(ratings: Any, p_observe: Any, rng: np.random.Generator,
              bins: int = 2, n_levels: int | None = None) -> np.ndarray:
    """Each rating replaced by the mean star of its bin, the stars 1..K cut
    into ``bins`` bins of equal width (``p_observe`` and ``rng`` unused)."""
    ratings, _ = _inputs(ratings, p_observe)
    levels = _levels(ratings, n_levels)
    ok = isinstance(bins, (int, np.integer)) and not isinstance(bins, bool)
    check(ok and 1 <= bins <= levels, "bins", f"an integer in [1, {levels}]", bins)
    stars = np.arange(1, levels + 1)
    edges = np.linspace(0.5, levels + 0.5, bins + 1)
    which = np.clip(np.searchsorted(edges, stars, side="right") - 1, 0, bins - 1)
    middle = np.array([stars[which == b].mean() for b in range(bins)])
    star_index = np.clip(np.rint(ratings).astype(np.int64), 1, levels) - 1
    return middle[which[star_index]]


PREDICTION_MATRICES: dict[str, Callable[..., np.ndarray]] = {
    "rare-wrong": rare_wrong,
    "shifted": shifted,
    "rare-noisy": rare_noisy,
    "coarsened": coarsened,
}


def make_predictions(name: str, ratings: Any, p_observe: Any,
                     rng: np.random.Generator, **options: Any) -> np.ndarray:
    """The built-in matrix ``name`` (a key of ``PREDICTION_MATRICES``);
    ``options`` are that function's keyword arguments."""
    check(name in PREDICTION_MATRICES, "predictions",
          "one of " + ", ".join(PREDICTION_MATRICES), name)
    return PREDICTION_MATRICES[name](ratings, p_observe, rng, **options)


def check_predictions(predictions: Any, shape: tuple[int, int]) -> np.ndarray:
    """A user-supplied (U, I) prediction matrix as float64, refused unless it
    has ``shape`` and finite entries."""
    predictions = np.asarray(predictions, dtype=np.float64)
    check(predictions.shape == tuple(shape), "predictions",
          f"an array of shape {tuple(shape)}", _Plain(f"shape {predictions.shape}"))
    bad = ~np.isfinite(predictions)
    if bad.any():
        u, i = (int(j) for j in np.argwhere(bad)[0])
        raise ConfigError(f"predictions must be finite, got "
                          f"{float(predictions[u, i])!r} (user {u}, item {i})")
    return predictions
