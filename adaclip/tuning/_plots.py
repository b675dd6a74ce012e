"""Plots of replayed traces and sweeps (matplotlib, an optional dependency)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from adaclip import Trace


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("adaclip's plots need matplotlib: pip install 'adaclip[plot]'.") from None
    return plt


def plot_trace(
    statistics: Any,
    trace: Trace,
    *,
    ax: Any = None,
    leaf: int | None = None,
    label: str | None = None,
    log: bool = True,
    loss: Any = None,
) -> Any:
    """Plots the statistic and the threshold over steps, marking clipped steps.

    The statistic is drawn in grey, the threshold as a line, and each clipped
    step as a red dot at its (unclipped) statistic; non-finite steps are
    marked with an ``x`` along the bottom of the plot. With ``loss`` (e.g.
    the recorded ``loss`` column) the loss is drawn on a second y axis.

    Where a rule imposes no bound it reports the statistic itself as the
    threshold (a warm-up, a z-score rule between spikes, see
    [`adaclip.zscore`][adaclip.zscore]): the threshold line is not drawn
    there, so it never hides the statistic; it shows only where the rule
    set a bound of its own (an isolated bounded step is a dot).

    Args:
        statistics: the statistics given to [`adaclip.replay`][adaclip.replay].
        trace: the [`adaclip.Trace`][adaclip.Trace] it returned.
        ax: a matplotlib ``Axes`` to draw on; a new figure when None.
        leaf: for per-leaf (2-D) statistics, which leaf to draw (required).
        label: a title for the axes, e.g. the rule's name.
        log: a logarithmic y axis (norms often span decades); for the loss
            too, when it is positive.
        loss: None, or one value per step to draw on a second y axis.

    Returns:
        The matplotlib ``Axes`` of the statistic (the loss axis, if any, is
        its twin: ``ax.right_ax``).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: 2-D statistics and no ``leaf``, or shapes that disagree.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> import adaclip.tuning
        >>> norms = np.abs(np.random.default_rng(0).normal(size=200)) + 1
        >>> loss = np.linspace(2.0, 0.5, 200)
        >>> trace = adaclip.replay(adaclip.ema(1.5, 0.9), norms)
        >>> ax = adaclip.tuning.plot_trace(norms, trace, loss=loss)
        >>> ax.right_ax.get_ylabel()
        'loss'
    """
    stats = np.asarray(statistics, dtype=np.float32)
    threshold = np.asarray(trace.threshold, dtype=np.float32)
    clipped = np.asarray(trace.clipped)
    finite = np.asarray(trace.finite)
    if stats.shape != threshold.shape:
        raise ValueError(
            f"statistics has shape {stats.shape} but the trace has shape {threshold.shape}."
        )
    if loss is not None:
        loss = np.asarray(loss, dtype=np.float64)
        if loss.shape != (len(stats),):
            raise ValueError(
                f"loss must have one value per step, shape ({len(stats)},), got {loss.shape}."
            )
    if stats.ndim == 2:
        if leaf is None:
            raise ValueError("per-leaf statistics (2-D): pass leaf= to choose the leaf to plot.")
        if not 0 <= leaf < stats.shape[1]:
            raise ValueError(f"leaf must be in [0, {stats.shape[1]}), got {leaf!r}.")
        stats, threshold, clipped = stats[:, leaf], threshold[:, leaf], clipped[:, leaf]
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3), layout="constrained")
    steps = np.arange(len(stats))
    shown = np.where(finite, stats, np.nan)
    # The rule reported the statistic itself: no bound of its own at that step.
    bounded = finite & (threshold != stats)
    line = np.where(bounded, threshold, np.nan)
    isolated = bounded & ~np.r_[False, bounded[:-1]] & ~np.r_[bounded[1:], False]
    ax.plot(steps, shown, color="0.6", lw=0.8, label="statistic")
    ax.plot(steps, line, color="C0", lw=1.5, label="threshold")
    if isolated.any():
        ax.plot(steps[isolated], threshold[isolated], ".", color="C0", ms=4)
    if clipped.any():
        ax.scatter(steps[clipped], stats[clipped], s=8, color="C3", zorder=3, label="clipped")
    if (~finite).any():
        ax.plot(
            steps[~finite],
            np.zeros((~finite).sum()),
            "x",
            color="k",
            transform=ax.get_xaxis_transform(),
            label="non-finite",
        )
    if log and np.nanmin(np.where(shown > 0, shown, np.nan), initial=np.inf) < np.inf:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("norm")
    handles, labels = ax.get_legend_handles_labels()
    if loss is not None:
        right = ax.twinx()
        right.plot(steps, loss, color="C2", lw=0.8, alpha=0.6, label="loss")
        # The norm, threshold and clipped steps stay in front of the loss.
        ax.set_zorder(right.get_zorder() + 1)
        ax.patch.set_visible(False)
        right.set_ylabel("loss")
        if log and np.nanmin(loss, initial=np.inf) > 0:  # a loss spike spans decades too
            right.set_yscale("log")
        ax.right_ax = right
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    rate = clipped[finite].mean() if finite.any() else float("nan")
    title = f"clip rate {rate:.1%}"
    ax.set_title(f"{label}: {title}" if label else title, fontsize=10)
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    return ax


def plot_sweep(
    table: Mapping[str, Any],
    x: str,
    y: str | None = None,
    value: str = "clip_rate",
    *,
    ax: Any = None,
) -> Any:
    """A heat-map of one column of a sweep over two of its parameters.

    With ``y=None``, a line of ``value`` against ``x`` instead.

    Args:
        table: a table from [`adaclip.tuning.sweep`][adaclip.tuning.sweep] whose grid has (at least)
            the parameters ``x`` and ``y``; with more, each cell shows the
            mean over the others (``inf`` if any of them is ``inf``).
        x: the parameter name for the horizontal axis.
        y: the parameter name for the vertical axis, or None.
        value: the column to show, e.g. ``"clip_rate"`` or ``"steps_to_adapt"``.
        ax: a matplotlib ``Axes``; a new figure when None.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        ImportError: matplotlib is not installed.
        KeyError: a name is not a column of ``table``.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> import adaclip.tuning
        >>> norms = np.abs(np.random.default_rng(0).normal(size=300)) + 1
        >>> grid = {"multiplier": [1.2, 1.5, 2.0], "decay": [0.9, 0.99]}
        >>> table = adaclip.tuning.sweep(adaclip.ema, norms, grid)
        >>> ax = adaclip.tuning.plot_sweep(table, "multiplier", "decay")
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('multiplier', 'decay')
    """
    for name in (x, y, value):
        if name is not None and name not in table:
            raise KeyError(f"{name!r} is not a column of the table: {sorted(table)}.")
    if y is None:
        return _plot_sweep_line(table, x, value, ax)
    xs, ys = np.asarray(table[x]), np.asarray(table[y])
    vals = np.asarray(table[value], dtype=np.float64)
    ux, uy = np.unique(xs), np.unique(ys)
    grid = np.full((len(uy), len(ux)), np.nan)
    for i, yv in enumerate(uy):
        for j, xv in enumerate(ux):
            sel = (xs == xv) & (ys == yv)
            if sel.any():
                cell = vals[sel]
                grid[i, j] = np.mean(cell) if np.isfinite(cell).all() else np.inf
    plt = _pyplot()
    if ax is None:
        size = (max(4.5, 2.0 + 0.8 * len(ux)), max(3.0, 1.5 + 0.5 * len(uy)))
        _, ax = plt.subplots(figsize=size, layout="constrained")
    shown = np.where(np.isfinite(grid), grid, np.nan)
    image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ux)), [f"{v:g}" for v in ux])
    ax.set_yticks(range(len(uy)), [f"{v:g}" for v in uy])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(uy)):
        for j in range(len(ux)):
            v = grid[i, j]
            text = "inf" if np.isinf(v) else ("" if np.isnan(v) else f"{v:.3g}")
            color = "w" if np.isfinite(v) and v <= mid else "k"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.figure.colorbar(image, ax=ax, label=value)
    ax.set_title(value, fontsize=10)
    return ax


def _plot_sweep_line(table: Mapping[str, Any], x: str, value: str, ax: Any) -> Any:
    xs = np.asarray(table[x])
    vals = np.asarray(table[value], dtype=np.float64)
    ux = np.unique(xs)
    means = [np.mean(vals[xs == v]) for v in ux]
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    positions = ux if ux.dtype.kind in "iuf" else np.arange(len(ux))
    ax.plot(positions, means, "o-")
    if ux.dtype.kind not in "iuf":
        ax.set_xticks(positions, [str(v) for v in ux])
    ax.set_xlabel(x)
    ax.set_ylabel(value)
    ax.set_title(value, fontsize=10)
    return ax
