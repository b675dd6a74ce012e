"""Argument checks shared by the tuning tools, built on adaclip's own validation."""

from __future__ import annotations

from typing import Any

import numpy as np

from adaclip import _validation


def statistics_array(statistics: Any) -> np.ndarray:
    """``statistics`` as a float32 array of shape ``(steps,)`` or ``(steps, n_leaves)``."""
    arr = np.asarray(statistics, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(
            "statistics must be a non-empty 1-D (steps,) or 2-D (steps, n_leaves) array, "
            f"got shape {arr.shape}."
        )
    return arr


def shift_step(shift_at: Any, steps: int) -> int | None:
    """``shift_at`` as a Python int in ``[0, steps)``, or None."""
    if shift_at is None:
        return None
    _validation.check_int("shift_at", shift_at, low=0, static=True)
    if shift_at >= steps:
        raise ValueError(f"shift_at must be in [0, {steps}), got {shift_at!r}.")
    return int(shift_at)


def adapt_args(adapt_window: Any, adapt_tolerance: Any) -> tuple[int, float]:
    """``summarize``'s ``adapt_window`` (an int >= 1) and ``adapt_tolerance`` (>= 0)."""
    _validation.check_int("adapt_window", adapt_window, low=1, static=True)
    _validation.check_real("adapt_tolerance", adapt_tolerance, low=0.0)
    return int(adapt_window), float(adapt_tolerance)
