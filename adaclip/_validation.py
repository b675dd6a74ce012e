"""Construction-time argument checks.

Only concrete values are checked: a traced value (inside ``jax.jit``,
``optax.inject_hyperparams`` or ``jax.vmap``) passes through untouched, so
hyper-parameters stay injectable. Every message names the argument and echoes
the value it got.

Numbers are checked as the rules will compute with them: every float
hyper-parameter enters the computation as float32 (``_base.as_f32``), so a
value must lie in its range both as given and after rounding to float32 (a
decay of ``0.99999999`` rounds to 1, a threshold of ``1e39`` to infinity),
and every integer hyper-parameter is compared with int32 counters, so it must
fit int32. A scalar hyper-parameter is a Python or NumPy number or a 0-d
array; an array with a shape, even a size-1 one, is a TypeError.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

INT32_MAX = int(np.iinfo(np.int32).max)
# The largest window: the moving average divides by the number of statistics
# held in float32, which represents every integer only up to 2**24, and the
# percentile's integer position arithmetic needs 100 * (window - 1) < 2**31
# (adaclip._window_rules._float32_rank). The ring buffer of a scalar
# statistic is then at most 64 MiB.
MAX_WINDOW = 2**24


def is_traced(value: Any) -> bool:
    """True for a JAX tracer (a value known only at trace time)."""
    return isinstance(value, jax.core.Tracer)


def _as_scalar(name: str, value: Any, kind: str, kinds: str) -> Any:
    """``value`` as a 0-d NumPy array whose dtype kind is in ``kinds``.

    Raises TypeError for bools, strings, None, arrays with a shape (size-1
    ones included) and numbers of another kind (a float for an int, a complex
    for a real).
    """
    if isinstance(value, bool | np.bool_) or value is None or isinstance(value, str):
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if isinstance(value, numbers.Number):
        if isinstance(value, numbers.Integral):
            dtype_kind = "i"
        elif isinstance(value, numbers.Real):
            dtype_kind = "f"
        else:
            dtype_kind = "c"
        if dtype_kind not in kinds:
            raise TypeError(f"{name} must be {kind}, got {value!r}.")
        return value
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        dtype = np.dtype(value.dtype)
        if np.ndim(value) != 0:
            raise TypeError(
                f"{name} must be {kind} (a scalar or a 0-d array), got an array of "
                f"shape {np.shape(value)}: {value!r}."
            )
        # By jnp.issubdtype, so that bfloat16 and the other ml_dtypes count.
        if jnp.issubdtype(dtype, jnp.bool_):
            dtype_kind = "b"
        elif jnp.issubdtype(dtype, jnp.unsignedinteger):
            dtype_kind = "u"
        elif jnp.issubdtype(dtype, jnp.integer):
            dtype_kind = "i"
        elif jnp.issubdtype(dtype, jnp.floating):
            dtype_kind = "f"
        else:
            dtype_kind = "c" if jnp.issubdtype(dtype, jnp.complexfloating) else "?"
        if dtype_kind not in kinds:
            raise TypeError(f"{name} must be {kind}, got {value!r} of dtype {dtype}.")
        return np.asarray(value).item()
    raise TypeError(f"{name} must be {kind}, got {value!r}.")


def _to_float(name: str, value: Any, number: Any) -> float:
    try:
        return float(number)
    except OverflowError:  # a Python int beyond the float64 range
        raise ValueError(
            f"{name} must be a finite number within the float32 range, got {value!r}."
        ) from None


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
    """Checks that ``value`` is a real number in the given interval, in float32 too.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. With
    ``finite=False``, ``+inf``/``-inf`` given as such are allowed (where the
    interval allows them); a finite value that overflows float32 never is.
    """
    if is_traced(value):
        return
    x = _to_float(name, value, _as_scalar(name, value, "a real number", "iuf"))
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    lo_txt = "-inf" if low is None else f"{low:g}"
    hi_txt = "inf" if high is None else f"{high:g}"
    interval = f"{lo}{lo_txt}, {hi_txt}{hi}"

    def in_interval(v: float) -> bool:
        above = low is None or v > low or (not low_open and v == low)
        below = high is None or v < high or (not high_open and v == high)
        return above and below

    if math.isnan(x) or (finite and math.isinf(x)):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")
    if not in_interval(x):
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    with np.errstate(over="ignore", under="ignore"):
        x32 = float(np.float32(x))
    if math.isinf(x32) and not math.isinf(x):
        raise ValueError(
            f"{name} must be finite in float32 (at most {float(np.finfo(np.float32).max):g}), "
            f"got {value!r}, which rounds to {x32} in float32."
        )
    if not in_interval(x32):
        raise ValueError(
            f"{name} must be in {interval} after rounding to float32 (the precision "
            f"it is computed in), got {value!r}, which rounds to {x32!r} in float32."
        )


def check_nonnegative(name: str, value: Any) -> None:
    """A finite real number >= 0 (bounds, floors, caps)."""
    check_real(name, value, low=0.0)


def check_threshold(name: str, value: Any, *, allow_inf: bool = False) -> None:
    """A threshold >= 0; with ``allow_inf`` it may also be ``math.inf`` (measure only)."""
    check_real(name, value, low=0.0, finite=not allow_inf)


def check_positive(name: str, value: Any) -> None:
    """A finite real number > 0 (multipliers, ratios, learning rates)."""
    check_real(name, value, low=0.0, low_open=True)


def check_int(
    name: str,
    value: Any,
    *,
    low: int = 0,
    high: int = INT32_MAX,
    static: bool = False,
    reason: str = "it is compared with int32 step counters",
) -> None:
    """An integer in ``[low, high]`` (``high`` defaults to the int32 maximum).

    With ``static=True`` (window sizes, which fix array shapes) the value must
    be a concrete Python or NumPy integer, not an array; otherwise a traced
    value or a 0-d integer array passes.
    """
    if is_traced(value):
        if static:
            raise TypeError(
                f"{name} must be a concrete Python int (it fixes an array shape), "
                f"got a traced value {value!r}."
            )
        return
    if static and isinstance(value, np.ndarray | jax.Array):
        raise TypeError(
            f"{name} must be a Python int (it fixes an array shape), got an array {value!r}."
        )
    n = int(_as_scalar(name, value, "an int", "iu"))
    if n < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    if n > high:
        raise ValueError(f"{name} must be an int <= {high} ({reason}), got {value!r}.")


def check_window(name: str, value: Any, *, min_history: Any = None) -> None:
    """A window length: a static Python int in ``[1, MAX_WINDOW]``, the one
    check of every window rule.

    With ``min_history`` (the statistics a rule needs before it sets a
    bound), also checks that it is an int >= 1 that the window can reach: a
    rule that waits for more statistics than its window holds could never
    act. A traced ``min_history`` passes (it is compared at run time).
    """
    check_int(
        name,
        value,
        low=1,
        high=MAX_WINDOW,
        static=True,
        reason="2**24: window lengths enter float32 arithmetic, which represents "
        "every integer only up to 2**24",
    )
    if min_history is None:
        return
    check_int("min_history", min_history, low=1)
    if not is_traced(min_history) and int(np.asarray(min_history)) > int(value):
        raise ValueError(
            f"min_history must be <= {name} (a window of {int(value)} never holds "
            f"{int(np.asarray(min_history))} statistics, so the rule could never act), "
            f"got min_history={min_history!r} with {name}={value!r}."
        )


def check_bool(name: str, value: Any) -> None:
    """A Python (or NumPy) bool, which fixes the traced program."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r}.")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """One of a documented set of strings: TypeError if not a string, ValueError if unknown."""
    choices = tuple(choices)
    options = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {options}, got {value!r}.")
    if value not in choices:
        raise ValueError(f"{name} must be one of {options}, got {value!r}.")
