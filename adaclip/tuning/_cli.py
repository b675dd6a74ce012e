"""The ``adaclip`` command line: replay and sweep threshold rules over a recorded norm trace.

It goes through the public API only: rule specs are built by the public
factories (see ``_specs``), traces by [`adaclip.replay`][adaclip.replay], tables by
[`adaclip.tuning.summarize`][adaclip.tuning.summarize] and
[`adaclip.tuning.sweep`][adaclip.tuning.sweep], files by the tuning tools' reader and writer.
"""

from __future__ import annotations

import argparse
import pathlib
import stat
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import adaclip
from adaclip.tuning._plots import plot_sweep, plot_trace
from adaclip.tuning._records import is_norm_column, load_record, write_csv
from adaclip.tuning._specs import RULES, CliError, build_rule, parse_grid, parse_rule
from adaclip.tuning._summaries import format_table, summarize
from adaclip.tuning._sweeps import sweep

_FILE_KINDS = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a pipe (a named pipe or a process substitution): save the trace to a file"),
    (stat.S_ISSOCK, "is a socket, not a file"),
    (stat.S_ISCHR, "is a character device, not a file"),
    (stat.S_ISBLK, "is a block device, not a file"),
)


def _not_a_file(path: pathlib.Path) -> str | None:
    """What stops ``path`` being read as a record (None for a regular file), said as what it is."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return "a broken symbolic link (its target does not exist)"
        return "no such file"
    except OSError as e:  # permission denied on a parent, a loop of links, ...
        return e.strerror or str(e)
    if stat.S_ISREG(mode):
        return None
    for test, what in _FILE_KINDS:
        if test(mode):
            return what
    return "is not a regular file"


def read_record(path: str, column: str | None) -> tuple[np.ndarray, str, dict[str, np.ndarray]]:
    """Reads a norm trace from a CSV or .npy file: the statistics, their column, the record."""
    p = pathlib.Path(path)
    problem = _not_a_file(p)
    if problem:
        raise CliError(f"cannot read {path!r}: {problem}")
    try:
        data = load_record(p)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {path!r}: {e}") from None
    names = list(data)
    if column is None:
        candidates = [n for n in names if is_norm_column(n)]
        if not candidates:
            raise CliError(
                f"{path}: no column name ends in 'norm'; choose one with --column "
                f"(columns: {', '.join(names)})"
            )
        column = candidates[0]
    if column not in data:
        raise CliError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    values = data[column]
    if values.dtype.kind not in "iufb":
        raise CliError(f"{path}: column {column!r} is not numeric")
    values = values.astype(np.float32)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise CliError(f"{path}: column {column!r} is empty")
    if not np.isfinite(values).any():
        raise CliError(f"{path}: column {column!r} has no finite value")
    return values, column, data


def _describe(stats: np.ndarray, column: str, path: str) -> str:
    finite = np.isfinite(stats).reshape(len(stats), -1).all(axis=1)
    shape = "" if stats.ndim == 1 else f", {stats.shape[1]} leaves"
    return (
        f"{path}: column {column!r}, {len(stats)} steps{shape} "
        f"({int((~finite).sum())} non-finite), median {np.nanmedian(stats[finite]):.4g}"
    )


def _loss(data: dict[str, np.ndarray], column: str) -> np.ndarray | None:
    """The record's numeric 1-D ``loss`` column, if it has one (and is not the one replayed)."""
    loss = data.get("loss")
    if column == "loss" or loss is None or loss.dtype.kind not in "iuf" or loss.ndim != 1:
        return None
    return loss


def _replay_command(args: argparse.Namespace) -> int:
    stats, column, data = read_record(args.file, args.column)
    specs = args.rule or ["autoclip"]
    rules = [(spec, build_rule(parse_rule(spec), spec)) for spec in specs]
    traces = []
    table: dict[str, list[Any]] = {"rule": []}
    for spec, rule in rules:
        trace = adaclip.replay(rule, stats)
        traces.append(trace)
        summary = summarize(trace, shift_at=args.shift_at, adapt_window=args.adapt_window)
        table["rule"].append(spec)
        for k, v in summary.items():
            table.setdefault(k, []).append(v)
    print(_describe(stats, column, args.file))
    print(format_table(table))
    if args.plot:
        _save_replay_plot(args.plot, stats, rules, traces, args.leaf, _loss(data, column))
        print(f"wrote {args.plot}")
    return 0


def _save_replay_plot(path, stats, rules, traces, leaf, loss):
    plt = _pyplot()
    if stats.ndim == 2 and not 0 <= leaf < stats.shape[1]:
        raise CliError(f"--leaf must be in [0, {stats.shape[1]}), got {leaf}")
    fig, axes = plt.subplots(
        len(rules),
        1,
        figsize=(9, 2.6 * len(rules)),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, (spec, _), trace in zip(axes[:, 0], rules, traces, strict=True):
        plot_trace(
            stats, trace, ax=ax, label=spec, leaf=leaf if stats.ndim == 2 else None, loss=loss
        )
    for ax in axes[:-1, 0]:  # one step axis, at the bottom
        ax.set_xlabel("")
    _savefig(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'adaclip[plot]'") from None
    return plt


def _savefig(fig, path):
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot write the plot {path!r}: {e}") from None


def _sweep_command(args: argparse.Namespace) -> int:
    stats, column, _ = read_record(args.file, args.column)
    call = parse_rule(args.rule)
    if not args.grid:
        raise CliError("sweep needs at least one --grid NAME=VALUES")
    grid: dict[str, list[Any]] = {}
    for item in args.grid:
        name, values = parse_grid(item)
        if name in grid:
            raise CliError(f"--grid {name} is given more than once")  # no silent last-wins
        grid[name] = values
    static = [n for n in grid if n in RULES[call.name].static]
    try:  # sweep builds every configuration with its concrete values first
        table = sweep(
            lambda **kw: call.build(**kw),
            stats,
            grid,
            static=static,
            shift_at=args.shift_at,
            adapt_window=args.adapt_window,
        )
    except (TypeError, ValueError) as e:
        raise CliError(f"bad sweep of {args.rule!r}: {e}") from None
    if args.sort:
        if args.sort not in table:
            raise CliError(f"--sort: no column {args.sort!r} (columns: {', '.join(table)})")
        order = np.argsort(table[args.sort], kind="stable")
        table = {k: v[order] for k, v in table.items()}
    print(_describe(stats, column, args.file))
    print(f"rule {args.rule!r}, {len(next(iter(table.values())))} configurations")
    print(format_table(table))
    if args.out:
        try:
            write_csv(args.out, table)
        except OSError as e:
            raise CliError(f"cannot write {args.out!r}: {e}") from None
        print(f"wrote {args.out}")
    if args.plot:
        numeric = [
            n
            for n in grid
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in grid[n])
        ]
        if args.value not in table:
            raise CliError(f"--value: no column {args.value!r} (columns: {', '.join(table)})")
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        x = numeric[0] if numeric else list(grid)[0]
        y = numeric[1] if len(numeric) > 1 else None
        plot_sweep(table, x, y, value=args.value, ax=ax)
        _savefig(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _rules_command(args: argparse.Namespace) -> int:
    del args
    for name, entry in RULES.items():
        print(f"{name}{entry.help}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="adaclip",
        description="Replay gradient-clipping rules over a recorded norm trace.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_input(p):
        p.add_argument("file", help="a CSV file (with a header row) or a .npy file of norms")
        p.add_argument(
            "--column",
            help="the CSV column to read (default: the first whose name ends in 'norm')",
        )
        p.add_argument(
            "--shift-at",
            type=int,
            default=None,
            help="step of a level shift, to report steps_to_adapt",
        )
        p.add_argument(
            "--adapt-window",
            type=int,
            default=100,
            help="window (steps) for steps_to_adapt (default 100)",
        )

    p = sub.add_parser("replay", help="replay rules and compare them")
    add_input(p)
    p.add_argument(
        "--rule",
        action="append",
        help="a rule spec, e.g. 'ema(multiplier=2.0, decay=0.99)' or 'autoclip' (repeatable; "
        "default autoclip)",
    )
    p.add_argument(
        "--plot",
        help="write a plot of norm and threshold per rule, with the record's loss if it has "
        "one (PNG, PDF, SVG)",
    )
    p.add_argument("--leaf", type=int, default=0, help="leaf to plot for 2-D (per-leaf) traces")
    p.set_defaults(func=_replay_command)

    p = sub.add_parser("sweep", help="replay a grid of configurations of one rule")
    add_input(p)
    p.add_argument(
        "--rule", required=True, help="the rule with its fixed arguments, e.g. 'ema(decay=0.99)'"
    )
    p.add_argument(
        "--grid",
        action="append",
        help="NAME=VALUES, e.g. 'multiplier=1.5,2,3' or 'decay=geomspace(0.9, 0.999, 4)'",
    )
    p.add_argument("--sort", help="sort the table by this column")
    p.add_argument("--out", help="also write the table to this CSV file")
    p.add_argument("--plot", help="write a heat-map of --value over the first two grid names")
    p.add_argument("--value", default="clip_rate", help="the column to plot (default clip_rate)")
    p.set_defaults(func=_sweep_command)

    p = sub.add_parser("rules", help="list the rule names the command line knows")
    p.set_defaults(func=_rules_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``adaclip`` command line; returns its exit status.

    ``adaclip replay FILE --rule SPEC ...`` replays rules over a recorded
    norm trace (a CSV or ``.npy`` file, as
    [`adaclip.tuning.Recorder.save`][adaclip.tuning.Recorder.save] writes) and
    prints their summaries; ``adaclip sweep FILE --rule SPEC --grid
    NAME=VALUES ...`` tabulates a grid of one rule's configurations;
    ``adaclip rules`` lists the rule names and their arguments. A spec is a
    call of a public rule, combinator or recipe with literal arguments, e.g.
    ``"clamp(ema(2.0, 0.99), lower=0.1)"`` or ``"autoclip(window=1000)"``:
    it is parsed, never evaluated, and built by the public factory, which
    validates it exactly as in Python. A recipe (``autoclip``, ``zclip``,
    ``adagc``) replays the recipe itself. ``--help`` on each command lists
    its options. The console script ``adaclip`` and ``python -m adaclip``
    call this function.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr,
        never a traceback), 2 on a usage error (bad options, from argparse).

    Examples:
        >>> import adaclip.tuning
        >>> status = adaclip.tuning.main(["rules"])  # doctest: +ELLIPSIS
        fixed(value)
        ...
        >>> status
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        message = str(e)
    except (ValueError, TypeError, OSError, KeyError) as e:
        message = str(e)
    except Exception as e:  # never a traceback
        message = f"{type(e).__name__}: {e}"
    lines = message.strip().splitlines() or [""]
    print(f"adaclip: error: {lines[0]}", file=sys.stderr)
    return 1
