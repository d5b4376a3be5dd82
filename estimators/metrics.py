"""Exact rating metrics against the truth: per-cell errors, MSE and MAE.

For predictions rhat and true ratings r over the same n cells, with predictions
first clipped into the rating scale [low, high] = ``clip`` (default [1, 5]):

    e_j = (clip(rhat_j) - r_j)^2        (``loss="mse"``)
    e_j = |clip(rhat_j) - r_j|          (``loss="mae"``)

and MSE / MAE are the plain means (1/n) sum_j e_j. Clipping never makes a
prediction worse on a bounded scale, and it is the convention of Schnabel et al.
(ICML 2016, section 3.1), whose error-estimation setting the estimators in
``estimators.evaluation`` share. The helpers below also check the arrays for
the other modules of this package.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.config import ConfigError, check

__all__ = ["LOSSES", "cell_errors", "mse", "mae"]

LOSSES = ("mse", "mae")


class _Plain(str):
    """A description shown as is in an error message (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _as_1d(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array, refusing other ranks."""
    array = np.asarray(values, dtype=float)
    check(array.ndim == 1, name, "a 1-D array", _Plain(f"shape {array.shape}"))
    return array


def _first_bad(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.ravel())[0])


def _check_finite(array: np.ndarray, name: str) -> None:
    """Refuse NaN and infinities, naming the first offending index."""
    bad = ~np.isfinite(array)
    if bad.any():
        j = _first_bad(bad)
        value = float(array.ravel()[j])
        raise ConfigError(f"{name} must be finite, got {value} (index {j})")


def _check_same_length(array: np.ndarray, name: str, other: np.ndarray,
                       other_name: str) -> None:
    if array.shape[0] != other.shape[0]:
        raise ConfigError(
            f"{name} must have the same length as {other_name} "
            f"({other.shape[0]}), got {array.shape[0]}"
        )


def _check_clip(clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    ok = isinstance(clip, (tuple, list)) and len(clip) == 2
    ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                    for c in clip)
    ok = ok and all(math.isfinite(c) for c in clip) and clip[0] < clip[1]
    check(ok, "clip", "None or a pair (low, high) with low < high", clip)
    return float(clip[0]), float(clip[1])


def cell_errors(
    predictions: Any,
    ratings: Any,
    loss: str = "mse",
    clip: tuple[float, float] | None = (1.0, 5.0),
) -> np.ndarray:
    """Per-cell errors of predictions against true ratings.

    Args:
        predictions: (n,) predicted ratings rhat.
        ratings: (n,) true ratings r.
        loss: ``"mse"`` for e = (rhat - r)^2, ``"mae"`` for e = |rhat - r|.
        clip: (low, high) the predictions are clipped into first; None leaves
            them as they are.

    Returns:
        (n,) float array of e_j. Empty input gives an empty array (the means
        below refuse it).
    """
    check(loss in LOSSES, "loss", "one of " + ", ".join(LOSSES), loss)
    bounds = _check_clip(clip)
    predictions = _as_1d(predictions, "predictions")
    ratings = _as_1d(ratings, "ratings")
    _check_same_length(ratings, "ratings", predictions, "predictions")
    _check_finite(predictions, "predictions")
    _check_finite(ratings, "ratings")

    if bounds is not None:
        predictions = np.clip(predictions, *bounds)
    residual = predictions - ratings
    return residual**2 if loss == "mse" else np.abs(residual)


def _mean_error(predictions: Any, ratings: Any, loss: str,
                clip: tuple[float, float] | None) -> float:
    errors = cell_errors(predictions, ratings, loss, clip)
    check(errors.size > 0, "predictions", "a non-empty array", _Plain("0 cells"))
    return float(errors.mean())


def mse(
    pred: Any, truth: Any, clip: tuple[float, float] | None = (1.0, 5.0)
) -> float:
    """Mean squared error (1/n) sum_j (clip(pred_j) - truth_j)^2.

    Args:
        pred: (n,) predicted ratings, clipped into ``clip`` (None: no clipping).
        truth: (n,) true ratings.
    """
    return _mean_error(pred, truth, "mse", clip)


def mae(
    pred: Any, truth: Any, clip: tuple[float, float] | None = (1.0, 5.0)
) -> float:
    """Mean absolute error (1/n) sum_j |clip(pred_j) - truth_j|.

    Args:
        pred: (n,) predicted ratings, clipped into ``clip`` (None: no clipping).
        truth: (n,) true ratings.
    """
    return _mean_error(pred, truth, "mae", clip)
