"""Summaries of replayed traces: a few numbers per trace, and tables of them as text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaclip import Trace
from adaclip.tuning import _checks

SUMMARY_NAMES = (
    "clip_rate",
    "mean_threshold",
    "max_threshold",
    "max_let_through",
    "steps_to_adapt",
)


def _summary(
    trace: Trace, shift_at: int | None, adapt_window: int = 100, adapt_tolerance: float = 0.05
) -> dict[str, jax.Array]:
    """The summary of one trace, in JAX (jittable, vmappable)."""
    finite = trace.finite
    steps = finite.shape[0]
    # Per-step weights broadcast over leaves for 2-D traces.
    weight = finite.reshape((steps,) + (1,) * (trace.threshold.ndim - 1))
    weight = jnp.broadcast_to(weight, trace.threshold.shape).astype(jnp.float32)
    n = jnp.sum(weight)
    nan = jnp.float32(jnp.nan)

    def mean(x):
        return jnp.where(n > 0, jnp.sum(jnp.where(weight > 0, x, 0.0)) / jnp.maximum(n, 1), nan)

    def fmax(x):
        return jnp.where(n > 0, jnp.max(jnp.where(weight > 0, x, -jnp.inf)), nan)

    out = {
        "clip_rate": mean(trace.clipped.astype(jnp.float32)),
        "mean_threshold": mean(trace.threshold),
        "max_threshold": fmax(trace.threshold),
        "max_let_through": fmax(trace.clipped_statistic),
    }
    if shift_at is not None:
        out["steps_to_adapt"] = _steps_to_adapt(trace, shift_at, adapt_window, adapt_tolerance)
    return out


_summary_jit = jax.jit(_summary, static_argnums=(1, 2, 3))


def _steps_to_adapt(trace: Trace, t0: int, window: int, tolerance: float) -> jax.Array:
    """See [`adaclip.tuning.summarize`][adaclip.tuning.summarize]. ``t0`` and ``window``
    are static Python ints."""
    steps = trace.finite.shape[0]
    finite = trace.finite.astype(jnp.float32)
    clipped = (trace.clipped.reshape(steps, -1).any(axis=1) & trace.finite).astype(jnp.float32)
    zero = jnp.zeros((1,), jnp.float32)
    c = jnp.concatenate([zero, jnp.cumsum(clipped)])  # c[i] = clipped steps before i
    f = jnp.concatenate([zero, jnp.cumsum(finite)])
    w = min(window, steps - t0)
    lo = max(t0 - window, 0)
    baseline = (c[t0] - c[lo]) / jnp.maximum(f[t0] - f[lo], 1.0)
    starts = jnp.arange(t0, steps - w + 1)
    rate = (c[starts + w] - c[starts]) / jnp.maximum(f[starts + w] - f[starts], 1.0)
    ok = rate <= baseline + tolerance
    return jnp.where(ok.any(), jnp.argmax(ok).astype(jnp.float32), jnp.inf)


def summarize(
    trace: Trace,
    *,
    shift_at: int | None = None,
    adapt_window: int = 100,
    adapt_tolerance: float = 0.05,
) -> dict[str, float]:
    """Summarises a replayed trace in a few numbers.

    Over the finite steps (all entries, for a per-leaf trace):

    - ``clip_rate``: the fraction of (step, entry) pairs clipped;
    - ``mean_threshold`` and ``max_threshold``: the mean and largest threshold;
    - ``max_let_through``: the largest statistic let through after clipping,
      $\\max_t \\min(s_t, c_t)$: how big a step the rule allows;
    - ``steps_to_adapt`` (only with ``shift_at``): how long the rule takes
      to clip as often as it did before a level shift of the statistic at
      step $t_0$ = ``shift_at`` (a new data mix, a larger learning rate).
      With $W$ = ``adapt_window`` (at most the steps after $t_0$), let
      $r_0$ be the fraction of finite steps clipped in $[t_0 - W, t_0)$ (a
      step counts as clipped when any entry is), and $r(s)$ the same
      fraction in $[s, s + W)$. Then ``steps_to_adapt`` is the smallest
      $k \\ge 0$ with $r(t_0 + k) \\le r_0 + \\epsilon$, $\\epsilon$ =
      ``adapt_tolerance``, or ``inf`` when no window after the shift gets
      there. After an upward shift, a threshold that never catches up (a
      fixed threshold below the new level, a z-score rule locked in at the
      old level) gives ``inf``; a rule that rescales with the statistic gives
      roughly the number of steps its threshold needs to reach the new level.
      After a downward shift it is usually 0: compare thresholds instead.

    Values are NaN where there is no finite step.

    Args:
        trace: a [`adaclip.Trace`][adaclip.Trace] from [`adaclip.replay`][adaclip.replay].
        shift_at: the step of a level shift, or None.
        adapt_window: $W$, an int >= 1.
        adapt_tolerance: $\\epsilon \\ge 0$.

    Returns:
        A dict from the names above to Python floats.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip.tuning
        >>> norms = jnp.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0])
        >>> trace = adaclip.replay(adaclip.fixed(3.0), norms)
        >>> adaclip.tuning.summarize(trace, shift_at=3, adapt_window=2)
        {'clip_rate': 0.625, 'mean_threshold': 3.0, 'max_threshold': 3.0, 'max_let_through': 3.0, 'steps_to_adapt': inf}
    """  # noqa: E501
    steps = int(np.shape(trace.finite)[0])
    shift_at = _checks.shift_step(shift_at, steps)
    adapt_window, adapt_tolerance = _checks.adapt_args(adapt_window, adapt_tolerance)
    trace = jax.tree.map(jnp.asarray, trace)
    summary = _summary_jit(trace, shift_at, adapt_window, adapt_tolerance)
    return {k: float(summary[k]) for k in SUMMARY_NAMES if k in summary}


def format_table(table: Mapping[str, Any], *, precision: int = 4) -> str:
    """Formats a table (a dict of equal-length columns) as aligned text.

    Args:
        table: e.g. the result of [`adaclip.tuning.sweep`][adaclip.tuning.sweep].
        precision: significant digits of floats.

    Returns:
        The table as a string, one line per row, with a header line.

    Examples:
        >>> import adaclip.tuning
        >>> print(adaclip.tuning.format_table({"rule": ["a", "bb"], "clip_rate": [0.5, 0.25]}))
        rule  clip_rate
        a           0.5
        bb         0.25
    """
    names = list(table)
    columns = []
    for name in names:
        cells = []
        for value in np.asarray(table[name]).tolist():
            if isinstance(value, float):
                cells.append(f"{value:.{precision}g}")
            else:
                cells.append(str(value))
        columns.append(cells)
    widths = [max([len(n)] + [len(c) for c in cells]) for n, cells in zip(names, columns)]  # noqa: B905
    numeric = [np.asarray(table[n]).dtype.kind in "iufb" for n in names]

    def line(cells):
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric)  # noqa: B905
        ]
        return "  ".join(parts).rstrip()

    rows = [line(names)]
    n_rows = len(columns[0]) if columns else 0
    for r in range(n_rows):
        rows.append(line([cells[r] for cells in columns]))
    return "\n".join(rows)
