"""Construction-time argument checks.

Only concrete values are checked: a traced value (inside ``jax.jit``,
``optax.inject_hyperparams`` or ``jax.vmap``) passes through untouched, so
hyper-parameters stay injectable. Every message names the argument and echoes
the value it got.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
    """True for a JAX tracer (a value known only at trace time)."""
    return isinstance(value, jax.core.Tracer)


def _concrete_scalar(name: str, value: Any, kind: str) -> float | None:
    """Returns ``value`` as a Python float, or None when it is traced.

    Raises TypeError for anything that is not a real number: bools, strings,
    None, complex numbers and arrays with more than one element.
    """
    if is_traced(value):
        return None
    if isinstance(value, bool | np.bool_) or value is None or isinstance(value, str):
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        arr = np.asarray(value)
        real = jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)
        if arr.size != 1 or not real:
            raise TypeError(f"{name} must be {kind}, got {value!r}.")
        return float(arr.reshape(()))
    raise TypeError(f"{name} must be {kind}, got {value!r}.")


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> None:
    """Checks that ``value`` is a real number in the given interval.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``.
    """
    x = _concrete_scalar(name, value, "a real number")
    if x is None:
        return
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    lo_txt = "-inf" if low is None else f"{low:g}"
    hi_txt = "inf" if high is None else f"{high:g}"
    interval = f"{lo}{lo_txt}, {hi_txt}{hi}"
    if math.isnan(x) or (finite and math.isinf(x)):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    if high is not None and (x > high or (high_open and x == high)):
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")


def check_nonnegative(name: str, value: Any) -> None:
    """A finite real number >= 0 (thresholds, bounds, floors)."""
    check_real(name, value, low=0.0)


def check_positive(name: str, value: Any) -> None:
    """A finite real number > 0 (multipliers, ratios, learning rates)."""
    check_real(name, value, low=0.0, low_open=True)


def check_int(name: str, value: Any, *, low: int = 0, static: bool = False) -> None:
    """An integer >= ``low``.

    With ``static=True`` (window sizes, which fix array shapes) the value must
    be a concrete Python or NumPy integer; otherwise a traced value passes.
    """
    if is_traced(value):
        if static:
            raise TypeError(
                f"{name} must be a concrete Python int (it fixes an array shape), "
                f"got a traced value {value!r}."
            )
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if not ok and not static and isinstance(value, np.ndarray | jax.Array):
        arr = np.asarray(value)
        ok = arr.size == 1 and arr.dtype.kind in "iu"
    if not ok:
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if int(np.asarray(value).reshape(())) < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """One of a documented set of strings."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}.")
