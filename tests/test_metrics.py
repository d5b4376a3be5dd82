"""MSE, MAE and per-cell errors against hand-computed values, and their refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimators.metrics import cell_errors, mae, mse
from sim.config import ConfigError

# Predictions 0.0 and 6.5 fall outside [1, 5] and are clipped to 1 and 5.
PRED = [0.0, 2.5, 6.5, 4.0]
TRUTH = [2.0, 2.0, 3.0, 4.0]
# clipped: [1, 2.5, 5, 4]; residuals: [-1, 0.5, 2, 0]


def test_mse_clips_both_sides_then_averages():
    assert mse(PRED, TRUTH) == pytest.approx((1 + 0.25 + 4 + 0) / 4)


def test_mae_clips_both_sides_then_averages():
    assert mae(PRED, TRUTH) == pytest.approx((1 + 0.5 + 2 + 0) / 4)


def test_no_clipping_when_clip_is_none():
    # residuals [-2, 0.5, 3.5, 0]
    assert mse(PRED, TRUTH, clip=None) == pytest.approx((4 + 0.25 + 12.25) / 4)
    assert mae(PRED, TRUTH, clip=None) == pytest.approx((2 + 0.5 + 3.5) / 4)


def test_custom_clip_range():
    # clipped into [2, 4]: [2, 2.5, 4, 4]; residuals [0, 0.5, 1, 0]
    assert mae(PRED, TRUTH, clip=(2, 4)) == pytest.approx(1.5 / 4)


def test_cell_errors_per_cell():
    np.testing.assert_allclose(cell_errors(PRED, TRUTH, "mse"), [1, 0.25, 4, 0])
    np.testing.assert_allclose(cell_errors(PRED, TRUTH, "mae"), [1, 0.5, 2, 0])


def test_returns_python_float():
    assert isinstance(mse(PRED, TRUTH), float)


REFUSALS = [
    ("empty", lambda: mse([], []),
     "predictions must be a non-empty array, got 0 cells$"),
    ("empty-mae", lambda: mae([], []), "predictions must be a non-empty array"),
    ("length", lambda: mse([1.0, 2.0], [1.0]),
     r"ratings must have the same length as predictions \(2\), got 1"),
    ("nan-pred", lambda: mse([1.0, math.nan], [1.0, 2.0]),
     r"predictions must be finite, got nan \(index 1\)"),
    ("inf-truth", lambda: mae([1.0, 2.0], [math.inf, 2.0]),
     r"ratings must be finite, got inf \(index 0\)"),
    ("rank", lambda: mse([[1.0]], [[1.0]]),
     r"predictions must be a 1-D array, got shape \(1, 1\)$"),
    ("clip-order", lambda: mse(PRED, TRUTH, clip=(5, 1)),
     r"clip must be None or a pair \(low, high\) with low < high, got \(5, 1\)"),
    ("clip-nan", lambda: mse(PRED, TRUTH, clip=(1, math.nan)),
     "clip must be None or a pair"),
    ("clip-len", lambda: mse(PRED, TRUTH, clip=(1, 3, 5)),
     "clip must be None or a pair"),
    ("loss", lambda: cell_errors(PRED, TRUTH, "rmse"),
     "loss must be one of mse, mae, got 'rmse'"),
]


@pytest.mark.parametrize("call, message", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_refusals(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
