"""Host-side tuning helpers: summaries, sweeps, suggestions and recording.

Nothing here runs inside a training step: these functions call
[`adaclip.replay`][adaclip.replay] (jitted and vmapped) on recorded statistics and bring
the results back to NumPy.
"""

from __future__ import annotations

import csv
import itertools
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaclip._base import ThresholdRule
from adaclip._replay import Trace, replay

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
    """See [`adaclip.summarize`][adaclip.summarize]. ``t0`` and ``window`` are static
    Python ints."""
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


def _check_statistics(statistics: Any) -> np.ndarray:
    arr = np.asarray(statistics, dtype=np.float32)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(
            "statistics must be a non-empty 1-D (steps,) or 2-D (steps, n_leaves) array, "
            f"got shape {arr.shape}."
        )
    return arr


def _check_shift(shift_at: Any, steps: int) -> int | None:
    if shift_at is None:
        return None
    if isinstance(shift_at, bool) or not isinstance(shift_at, int | np.integer):
        raise TypeError(f"shift_at must be an int or None, got {shift_at!r}.")
    if not 0 <= shift_at < steps:
        raise ValueError(f"shift_at must be in [0, {steps}), got {shift_at!r}.")
    return int(shift_at)


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
        >>> import adaclip
        >>> norms = jnp.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0])
        >>> trace = adaclip.replay(adaclip.fixed(3.0), norms)
        >>> adaclip.summarize(trace, shift_at=3, adapt_window=2)
        {'clip_rate': 0.625, 'mean_threshold': 3.0, 'max_threshold': 3.0, 'max_let_through': 3.0, 'steps_to_adapt': inf}
    """  # noqa: E501
    steps = int(np.shape(trace.finite)[0])
    shift_at = _check_shift(shift_at, steps)
    _check_adapt(adapt_window, adapt_tolerance)
    trace = jax.tree.map(jnp.asarray, trace)
    summary = _summary_jit(trace, shift_at, adapt_window, float(adapt_tolerance))
    return {k: float(summary[k]) for k in SUMMARY_NAMES if k in summary}


def _check_adapt(adapt_window: Any, adapt_tolerance: Any) -> None:
    if isinstance(adapt_window, bool) or not isinstance(adapt_window, int) or adapt_window < 1:
        raise ValueError(f"adapt_window must be an int >= 1, got {adapt_window!r}.")
    if not (isinstance(adapt_tolerance, int | float) and adapt_tolerance >= 0):
        raise ValueError(f"adapt_tolerance must be a number >= 0, got {adapt_tolerance!r}.")


def _grid_product(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty dict of name -> values, got {grid!r}.")
    names = list(grid)
    columns = []
    for name in names:
        values = grid[name]
        if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
            raise TypeError(f"grid[{name!r}] must be a sequence of values, got {values!r}.")
        values = list(np.asarray(values).reshape(-1).tolist())
        if not values:
            raise ValueError(f"grid[{name!r}] is empty.")
        columns.append(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*columns)]


def sweep(
    make_rule: Callable[..., ThresholdRule],
    statistics: Any,
    grid: Mapping[str, Sequence[Any]],
    *,
    static: Iterable[str] = (),
    shift_at: int | None = None,
    adapt_window: int = 100,
    adapt_tolerance: float = 0.05,
    chunk_size: int = 256,
) -> dict[str, np.ndarray]:
    """Replays every configuration of a grid over a trace and tabulates them.

    The grid is the Cartesian product of ``grid``'s values (the last name
    varies fastest). Configurations are replayed with [`adaclip.replay`][adaclip.replay]
    under ``jax.vmap``, ``chunk_size`` at a time, one compilation per
    combination of ``static`` values: put window sizes (which fix array
    shapes) in ``static``; names with string, boolean or None values are
    static too; every other hyper-parameter is traced.

    Each row holds the configuration and the summary of its trace, as
    [`adaclip.summarize`][adaclip.summarize] defines it: ``clip_rate``, ``mean_threshold``,
    ``max_threshold``, ``max_let_through`` and, with ``shift_at``,
    ``steps_to_adapt``.

    Args:
        make_rule: builds a rule from keyword arguments named as ``grid``'s
            keys, e.g. ``adaclip.ema`` or ``lambda multiplier:
            adaclip.ema(multiplier, 0.99, feed="raw")``.
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``.
        grid: ``{name: values}``. Integer values stay integers.
        static: names in ``grid`` passed as Python values, not traced.
        shift_at: the step of a level shift, for ``steps_to_adapt``.
        adapt_window: see [`adaclip.summarize`][adaclip.summarize].
        adapt_tolerance: see [`adaclip.summarize`][adaclip.summarize].
        chunk_size: configurations replayed at once (bounds memory).

    Returns:
        A table as a dict of equal-length NumPy columns, one row per
        configuration: ``pandas.DataFrame(table)`` makes a data frame of it.

    Raises:
        TypeError, ValueError: a bad grid, ``static`` name or ``shift_at``, or
            a rule argument the rule rejects.

    Examples:
        >>> import numpy as np
        >>> import adaclip
        >>> norms = np.r_[np.ones(50), 4 * np.ones(50)]
        >>> table = adaclip.sweep(
        ...     adaclip.moving_average,
        ...     norms,
        ...     {"multiplier": [1.5, 3.0], "window": [5, 20]},
        ...     static=["window"],
        ...     shift_at=50,
        ...     adapt_window=10,
        ... )
        >>> table["steps_to_adapt"]
        array([ 3., 12.,  1.,  3.], dtype=float32)
    """
    stats = jnp.asarray(_check_statistics(statistics))
    shift_at = _check_shift(shift_at, int(stats.shape[0]))
    _check_adapt(adapt_window, adapt_tolerance)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
    static = tuple(static)
    unknown = [s for s in static if s not in grid]
    if unknown:
        raise ValueError(f"static names {unknown} are not keys of grid {sorted(grid)}.")
    rows = _grid_product(grid)
    for name in grid:  # strings, booleans and None cannot be traced
        if name not in static and any(
            isinstance(row[name], bool) or not isinstance(row[name], int | float) for row in rows
        ):
            static += (name,)
    dynamic = [k for k in grid if k not in static]
    for row in rows:  # concrete values: the rule validates them here
        make_rule(**row)

    results: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(row[k] for k in static), []).append(i)

    for key, indices in groups.items():
        static_kwargs = dict(zip(static, key, strict=True))
        if not dynamic:
            trace = replay(make_rule(**static_kwargs), stats)
            summary = _summary(trace, shift_at, adapt_window, adapt_tolerance)
            results[indices[0]] = jax.device_get(summary)
            continue

        def one(dyn, static_kwargs=static_kwargs):
            trace = replay(make_rule(**static_kwargs, **dyn), stats)
            return _summary(trace, shift_at, adapt_window, adapt_tolerance)

        batched = jax.jit(jax.vmap(one))
        for start in range(0, len(indices), chunk_size):
            chunk = indices[start : start + chunk_size]
            dyn = {}
            for name in dynamic:
                values = np.asarray([rows[i][name] for i in chunk])
                dtype = np.int32 if values.dtype.kind in "iu" else np.float32
                dyn[name] = jnp.asarray(values.astype(dtype))
            # Pad to a full chunk so every chunk reuses one compilation.
            pad = (-len(chunk)) % chunk_size if len(indices) > chunk_size else 0
            if pad:
                dyn = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad)]) for k, v in dyn.items()}
            out = jax.device_get(batched(dyn))
            for j, i in enumerate(chunk):
                results[i] = {k: v[j] for k, v in out.items()}

    table: dict[str, np.ndarray] = {}
    for name in grid:
        table[name] = np.asarray([row[name] for row in rows])
    for name in (n for n in SUMMARY_NAMES if n in results[0]):
        table[name] = np.asarray([r[name] for r in results], dtype=np.float32)
    return table


def format_table(table: Mapping[str, Any], *, precision: int = 4) -> str:
    """Formats a table (a dict of equal-length columns) as aligned text.

    Args:
        table: e.g. the result of [`adaclip.sweep`][adaclip.sweep].
        precision: significant digits of floats.

    Returns:
        The table as a string, one line per row, with a header line.

    Examples:
        >>> import adaclip
        >>> print(adaclip.format_table({"rule": ["a", "bb"], "clip_rate": [0.5, 0.25]}))
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


def suggest_fixed(statistics: Any, percentile: float = 10.0) -> float | np.ndarray:
    """A fixed threshold read off a recorded trace: a percentile of its norms.

    $$c = \\mathrm{percentile}_p(s_1, \\dots, s_T)$$

    over the finite statistics (linear interpolation, as ``np.percentile``).
    On the recorded trace a fixed threshold at the $p$-th percentile clips
    about $1 - p/100$ of the steps. AutoClip uses $p = 10$ of the history
    (so it clips most steps, normalising their size); Pascanu et al. suggest
    a threshold near the average norm; a high percentile (90 to 99) only
    cuts the outliers.

    Args:
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``
            (one threshold per leaf).
        percentile: $p$ in [0, 100].

    Returns:
        A float, or one float per leaf for 2-D statistics.

    Raises:
        ValueError: ``percentile`` is out of range or there is no finite step.

    Examples:
        >>> import numpy as np
        >>> import adaclip
        >>> adaclip.suggest_fixed(np.arange(1.0, 101.0), percentile=90)
        90.1...

    References:
        Seetharaman et al. 2020, AutoClip: Adaptive Gradient Clipping for
        Source Separation Networks (https://arxiv.org/abs/2007.14469);
        Pascanu et al. 2013, On the difficulty of training recurrent neural
        networks (https://arxiv.org/abs/1211.5063).
    """
    stats = _check_statistics(statistics).astype(np.float64)
    p = _check_percentile(percentile)
    finite = np.isfinite(stats).all(axis=tuple(range(1, stats.ndim)))
    if not finite.any():
        raise ValueError("statistics has no finite step.")
    value = np.percentile(stats[finite], p, axis=0)
    return float(value) if np.ndim(value) == 0 else value


def _check_percentile(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float | np.number):
        raise TypeError(f"percentile must be a number in [0, 100], got {p!r}.")
    if not 0.0 <= float(p) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p!r}.")
    return float(p)


def suggest_for_clip_rate(
    make_rule: Callable[[Any], ThresholdRule],
    statistics: Any,
    target_clip_rate: float,
    *,
    low: float = 1.0,
    high: float = 100.0,
    num: int = 64,
    rounds: int = 3,
) -> float:
    """The smallest value of one hyper-parameter that clips at most a target rate.

    Searches $x \\in$ [``low``, ``high``] for the smallest $x$ whose replay
    of ``make_rule(x)`` over the trace clips a fraction of the finite steps
    no larger than ``target_clip_rate``. The search evaluates ``num``
    geometrically spaced values at once (one vmapped replay), narrows to the
    bracket around the target, and repeats ``rounds`` times. It assumes the
    clip rate does not grow with $x$, as for a multiplier or a percentile.

    Args:
        make_rule: builds a rule from the value, e.g. ``lambda m:
            adaclip.ema(m, 0.99)``.
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``.
        target_clip_rate: the clip rate to reach, in [0, 1].
        low: the lower end of the search interval, ``0 < low < high``.
        high: the upper end of the search interval.
        num: values tried per round (>= 2).
        rounds: refinement rounds (>= 1).

    Returns:
        The value, a float. ``low`` when ``low`` already clips no more than
        the target.

    Raises:
        ValueError: a bad argument, or even ``high`` clips more than the target.

    Examples:
        >>> import numpy as np
        >>> import adaclip
        >>> rng = np.random.default_rng(0)
        >>> norms = np.exp(rng.normal(size=2000)).astype(np.float32)
        >>> m = adaclip.suggest_for_clip_rate(lambda m: adaclip.ema(m, 0.99), norms, 0.05)
        >>> rate = adaclip.summarize(adaclip.replay(adaclip.ema(m, 0.99), norms))["clip_rate"]
        >>> print(f"multiplier {m:.2f}: clip rate {rate:.3f}")
        multiplier 3.53: clip rate 0.050
    """
    stats = jnp.asarray(_check_statistics(statistics))
    if not 0.0 <= float(target_clip_rate) <= 1.0:
        raise ValueError(f"target_clip_rate must be in [0, 1], got {target_clip_rate!r}.")
    if not (0.0 < float(low) < float(high) and math.isfinite(float(high))):
        raise ValueError(f"need 0 < low < high < inf, got low={low!r}, high={high!r}.")
    if int(num) < 2 or int(rounds) < 1:
        raise ValueError(f"need num >= 2 and rounds >= 1, got num={num!r}, rounds={rounds!r}.")

    @jax.jit
    def rates(values):
        def one(x):
            return _summary(replay(make_rule(x), stats), None)["clip_rate"]

        return jax.vmap(one)(values)

    target = np.float32(target_clip_rate)  # clip rates are float32
    lo, hi = float(low), float(high)
    first = np.asarray(rates(jnp.asarray([lo, hi], jnp.float32)))
    if first[0] <= target:
        return lo
    if first[1] > target:
        raise ValueError(
            f"even high={high!r} clips a fraction {float(first[1]):.4g} of the steps, "
            f"above target_clip_rate={target_clip_rate!r}; raise high."
        )
    for _ in range(int(rounds)):
        values = np.geomspace(lo, hi, int(num)).astype(np.float32)
        r = np.asarray(rates(jnp.asarray(values)))
        ok = np.nonzero(r <= target)[0]
        k = int(ok[0]) if ok.size else len(values) - 1
        hi = float(values[k])
        lo = float(values[k - 1]) if k > 0 else lo
    return hi


# --------------------------------------------------------------------- recording

_LEAF_COLUMN = re.compile(r"^(.*)\[(\d+)\]$")


class Recorder:
    """Records per-step clip metrics of a training run, to save as CSV or .npy.

    Call `record` after each step with ``adaclip.metrics(opt_state)``
    (and any other scalars, e.g. the loss). Recording keeps device arrays and
    never waits for the device; they are brought to the host when you call
    `arrays` or `save`.

    Metrics record the last *finite* norm on a non-finite step; the recorder
    writes NaN there instead (for every ``norm`` whose ``nonfinite_count``
    went up at that step, counting from 0 before the first recorded step),
    so that [`adaclip.replay`][adaclip.replay] over the recorded ``norm`` column sees
    the same sequence the rule saw in training.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
        >>> state = tx.init(jnp.zeros(2))
        >>> recorder = adaclip.Recorder()
        >>> for g in [[3.0, 4.0], [float("nan"), 0.0], [0.6, 0.8]]:
        ...     _, state = tx.update(jnp.array(g), state)
        ...     recorder.record(adaclip.metrics(state), loss=1.0)
        >>> recorder.arrays()["norm"]
        array([ 5., nan,  1.], dtype=float32)
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, metrics: Mapping[str, Any], **extra: Any) -> None:
        """Appends one step: a metrics dict plus extra named scalars or arrays.

        Raises:
            ValueError: the names differ from those of the first step.
        """
        row = {**metrics, **extra}
        if self._rows and row.keys() != self._rows[0].keys():
            raise ValueError(
                f"every step must record the same names: got {sorted(row)}, "
                f"expected {sorted(self._rows[0])}."
            )
        self._rows.append(row)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recording as NumPy arrays, one per name, steps first.

        A ``step`` column (0, 1, ...) comes first.
        """
        if not self._rows:
            return {"step": np.zeros((0,), np.int64)}
        names = list(self._rows[0])
        stacked = jax.device_get({n: [r[n] for r in self._rows] for n in names})
        out = {"step": np.arange(len(self._rows))}
        for name in names:
            out[name] = np.stack([np.asarray(v) for v in stacked[name]])
        for name in names:
            if name == "norm" or name.endswith("/norm"):
                count = out.get(name[: -len("norm")] + "nonfinite_count")
                if count is None:
                    continue
                bad = np.diff(count.astype(np.int64), prepend=0) > 0
                norm = out[name].astype(np.float32)
                norm[bad] = np.nan
                out[name] = norm
        return out

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Writes the recording to ``path``: ``.csv`` or ``.npy`` by suffix.

        CSV has one column per scalar and ``name[i]`` columns for per-leaf
        metrics; ``.npy`` holds a NumPy structured array (one field per name,
        loadable with ``np.load`` without pickle). Read either back with
        [`adaclip.load_record`][adaclip.load_record].

        Raises:
            ValueError: an unknown suffix.
        """
        path = pathlib.Path(path)
        data = self.arrays()
        if path.suffix == ".npy":
            fields = [(n, v.dtype, v.shape[1:]) for n, v in data.items()]
            arr = np.zeros(len(data["step"]), dtype=fields)
            for n, v in data.items():
                arr[n] = v
            np.save(path, arr, allow_pickle=False)
        elif path.suffix == ".csv":
            header, columns = [], []
            for n, v in data.items():
                flat = v.reshape(len(v), -1)
                if v.ndim == 1:
                    header.append(n)
                    columns.append(flat[:, 0])
                else:
                    for i in range(flat.shape[1]):
                        header.append(f"{n}[{i}]")
                        columns.append(flat[:, i])
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                for r in range(len(data["step"])):
                    writer.writerow([_cell(c[r]) for c in columns])
        else:
            raise ValueError(f"path must end in .csv or .npy, got {str(path)!r}.")
        return path


def _cell(value: Any) -> str:
    if isinstance(value, np.bool_ | bool):
        return str(int(value))
    if isinstance(value, np.floating | float):
        return repr(float(value)) if np.isfinite(value) else str(float(value))
    return str(value)


def load_record(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a recording back: a CSV file or a ``.npy`` file.

    A CSV file needs a header row. Numeric columns become float64 arrays
    (empty cells become NaN), other columns arrays of strings; ``name[0]``,
    ``name[1]``, ... columns are gathered into one 2-D array ``name`` of
    shape ``(steps, n_leaves)``. A ``.npy`` file holds either a structured
    array (as [`adaclip.Recorder.save`][adaclip.Recorder.save] writes) or a plain 1-D or 2-D
    numeric array, returned as ``{"norm": array}``.

    Args:
        path: a ``.csv`` or ``.npy`` file.

    Returns:
        A dict from column names to arrays, in file order.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a table this function understands.

    Examples:
        >>> import pathlib, tempfile
        >>> import adaclip
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.csv"
        >>> _ = path.write_text("step,grad_norm\\n0,1.5\\n1,\\n2,2.5\\n")
        >>> adaclip.load_record(path)["grad_norm"]
        array([1.5, nan, 2.5])
    """
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a NumPy array file without objects ({e}).") from None
        if arr.dtype.names:
            return {n: np.asarray(arr[n]) for n in arr.dtype.names}
        if arr.dtype.kind not in "iufb" or arr.ndim not in (1, 2):
            raise ValueError(
                f"{path}: expected a 1-D or 2-D numeric array, got shape {arr.shape} "
                f"and dtype {arr.dtype}."
            )
        return {"norm": arr}
    with open(path, newline="") as f:
        try:
            rows = list(csv.reader(f))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable CSV file ({e}).") from None
    if not rows or not rows[0]:
        raise ValueError(f"{path}: empty file, expected a header row.")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(
                f"{path}: line {i + 2} has {len(r)} fields, the header has {len(header)}."
            )
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j].strip() for r in body]
        try:
            columns[name] = np.asarray([float(c) if c else np.nan for c in cells], np.float64)
        except ValueError:
            columns[name] = np.asarray(cells, dtype=str)
    out: dict[str, np.ndarray] = {}
    leaves: dict[str, dict[int, np.ndarray]] = {}
    for name, values in columns.items():
        match = _LEAF_COLUMN.match(name)
        if match and values.dtype.kind == "f":
            leaves.setdefault(match.group(1), {})[int(match.group(2))] = values
            out.setdefault(match.group(1), None)  # keeps file order
        else:
            out[name] = values
    for name, parts in leaves.items():
        out[name] = np.stack([parts[i] for i in sorted(parts)], axis=1)
    return out
