"""Sweeps: replay every configuration of a grid over recorded statistics, vmapped."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaclip import ThresholdRule, _validation, replay
from adaclip.tuning import _checks
from adaclip.tuning._summaries import SUMMARY_NAMES, _summary

_INT32 = np.iinfo(np.int32)


def _python_value(value: Any) -> Any:
    """A grid value as a plain Python object (NumPy and 0-d JAX scalars unwrapped)."""
    if isinstance(value, np.generic) or (hasattr(value, "shape") and value.shape == ()):
        return np.asarray(value).item()
    return value


def _grid_columns(grid: Mapping[str, Any], max_configurations: int) -> list[list[Any]]:
    """Each grid name's values as a list of Python values, checked; the product's size is bounded.

    The size is checked from the lengths alone, before anything per
    configuration is built, so an oversized grid fails at once instead of
    exhausting memory.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty dict of name -> values, got {grid!r}.")
    columns = []
    for name, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
            raise TypeError(f"grid[{name!r}] must be a sequence of values, got {values!r}.")
        if isinstance(values, list | tuple):
            values = [_python_value(v) for v in values]
        else:  # an array: its elements, as Python numbers
            values = np.asarray(values).reshape(-1).tolist()
        if not values:
            raise ValueError(f"grid[{name!r}] is empty.")
        columns.append(values)
    size = math.prod(len(c) for c in columns)
    if size > max_configurations:
        sizes = " x ".join(f"{len(c)} {name}" for name, c in zip(grid, columns, strict=True))
        raise ValueError(
            f"grid has {size:,} configurations ({sizes}), more than max_configurations="
            f"{max_configurations:,}: sweep a coarser grid, or raise max_configurations "
            "if the memory and time are there."
        )
    return columns


def _traced_column(name: str, values: list[Any]) -> np.ndarray:
    """One traced grid column as int32 (all ints) or float32, never silently changed."""
    if all(isinstance(v, int) for v in values):
        bad = [v for v in values if not _INT32.min <= v <= _INT32.max]
        if bad:
            raise ValueError(f"grid[{name!r}] values must fit in int32, got {bad[0]!r}.")
        return np.asarray(values, np.int32)
    column = np.asarray(values, np.float64)
    as_f32 = column.astype(np.float32)
    bad = np.isfinite(column) & ~np.isfinite(as_f32)
    if bad.any():
        raise ValueError(
            f"grid[{name!r}] values must be finite in float32, got {column[bad][0]!r}."
        )
    return as_f32


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
    max_configurations: int = 1_000_000,
) -> dict[str, np.ndarray]:
    """Replays every configuration of a grid over a trace and tabulates them.

    The grid is the Cartesian product of ``grid``'s values (the last name
    varies fastest). Configurations are replayed with [`adaclip.replay`][adaclip.replay]
    under ``jax.vmap``, ``chunk_size`` at a time, one compilation per
    combination of ``static`` values: put window sizes (which fix array
    shapes) in ``static``; names with string, boolean or None values are
    static too; every other hyper-parameter is traced.

    Each row holds the configuration and the summary of its trace, as
    [`adaclip.tuning.summarize`][adaclip.tuning.summarize] defines it:
    ``clip_rate``, ``mean_threshold``, ``max_threshold``, ``max_let_through``
    and, with ``shift_at``, ``steps_to_adapt``.

    Args:
        make_rule: builds a rule from keyword arguments named as ``grid``'s
            keys, e.g. ``adaclip.ema`` or ``lambda multiplier:
            adaclip.ema(multiplier, 0.99, feed="raw")``.
        statistics: recorded statistics, ``(steps,)`` or ``(steps, n_leaves)``.
        grid: ``{name: values}``. Integer values stay integers (int32 when
            traced: a value beyond int32 is an error, never wrapped around).
        static: names in ``grid`` passed as Python values, not traced.
        shift_at: the step of a level shift, for ``steps_to_adapt``.
        adapt_window: see [`adaclip.tuning.summarize`][adaclip.tuning.summarize].
        adapt_tolerance: see [`adaclip.tuning.summarize`][adaclip.tuning.summarize].
        chunk_size: configurations replayed at once (bounds memory).
        max_configurations: the largest grid accepted. A grid's size is
            checked before anything is built: a million configurations
            already hold some hundreds of MB of Python values and replay a
            million traces, and a 10 000 x 10 000 grid would exhaust memory.

    Returns:
        A table as a dict of equal-length NumPy columns, one row per
        configuration: ``pandas.DataFrame(table)`` makes a data frame of it.

    Raises:
        TypeError, ValueError: a bad grid (or one with more than
            ``max_configurations`` configurations), ``static`` name or ``shift_at``, or
            a rule argument the rule rejects (with the rule's own message:
            every configuration is built once with concrete values first).

    Examples:
        >>> import numpy as np
        >>> import adaclip.tuning
        >>> norms = np.r_[np.ones(50), 4 * np.ones(50)]
        >>> table = adaclip.tuning.sweep(
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
    stats = jnp.asarray(_checks.statistics_array(statistics))
    shift_at = _checks.shift_step(shift_at, int(stats.shape[0]))
    adapt_window, adapt_tolerance = _checks.adapt_args(adapt_window, adapt_tolerance)
    _validation.check_int("chunk_size", chunk_size, low=1, static=True)
    _validation.check_int("max_configurations", max_configurations, low=1, static=True)
    static = tuple(static)
    unknown = [s for s in static if s not in grid]
    if unknown:
        raise ValueError(f"static names {unknown} are not keys of grid {sorted(grid)}.")
    values = _grid_columns(grid, max_configurations)
    names = list(grid)
    rows = list(itertools.product(*values))  # tuples in grid order, the last name fastest
    for j, name in enumerate(names):  # strings, booleans and None cannot be traced
        if name not in static and any(
            isinstance(v, bool) or not isinstance(v, int | float) for v in values[j]
        ):
            static += (name,)
    static_at = [names.index(k) for k in static]
    dynamic_at = [j for j, k in enumerate(names) if k not in static]
    for row in rows:  # concrete values: the rule's factory validates them here
        make_rule(**dict(zip(names, row, strict=True)))
    columns = {names[j]: _traced_column(names[j], [row[j] for row in rows]) for j in dynamic_at}

    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(row[j] for j in static_at), []).append(i)

    results: dict[str, np.ndarray] = {}

    def store(indices: list[int], summary: Mapping[str, Any]) -> None:
        for k, v in summary.items():
            if k not in results:
                results[k] = np.full(len(rows), np.nan, np.float32)
            results[k][indices] = np.asarray(v)[: len(indices)]

    for key, indices in groups.items():
        static_kwargs = dict(zip(static, key, strict=True))
        if not dynamic_at:
            trace = replay(make_rule(**static_kwargs), stats)
            summary = jax.device_get(_summary(trace, shift_at, adapt_window, adapt_tolerance))
            store(indices, {k: np.full(len(indices), v) for k, v in summary.items()})
            continue

        def one(dyn, static_kwargs=static_kwargs):
            trace = replay(make_rule(**static_kwargs, **dyn), stats)
            return _summary(trace, shift_at, adapt_window, adapt_tolerance)

        batched = jax.jit(jax.vmap(one))
        for start in range(0, len(indices), chunk_size):
            chunk = indices[start : start + chunk_size]
            dyn = {name: jnp.asarray(column[chunk]) for name, column in columns.items()}
            # Pad to a full chunk so every chunk reuses one compilation.
            pad = (-len(chunk)) % chunk_size if len(indices) > chunk_size else 0
            if pad:
                dyn = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad)]) for k, v in dyn.items()}
            store(chunk, jax.device_get(batched(dyn)))

    table: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        table[name] = np.asarray([row[j] for row in rows])
    for name in (n for n in SUMMARY_NAMES if n in results):
        table[name] = results[name]
    return table
