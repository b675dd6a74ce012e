"""The ``adaclip`` command line: replay and sweep threshold rules over a recorded norm trace.

Usage::

    adaclip replay NORMS.csv --rule "ema(multiplier=2.0, decay=0.99)" --rule autoclip --plot out.png
    adaclip sweep NORMS.csv --rule "ema(decay=0.99)" --grid "multiplier=[1.5, 2, 3]" \\
        --grid "decay=geomspace(0.9, 0.999, 4)" --plot sweep.png
    adaclip rules

Rule specs are parsed with `ast`, never evaluated: a spec is a rule name
from :data:`RULES`, optionally called with literal arguments (numbers,
strings, booleans, None) or nested rule specs, e.g.
``clamp(ema(2.0, 0.99), lower=0.1)``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

import adaclip
from adaclip._base import ThresholdRule
from adaclip._recipes import _adagc_rule, _autoclip_rule, _zclip_rule


class CliError(Exception):
    """A user error: reported as one line on stderr, exit status 1."""


class RuleEntry(NamedTuple):
    """A rule the command line knows: its factory and its static arguments."""

    factory: Callable[..., ThresholdRule]
    static: tuple[str, ...]  # arguments that fix array shapes (window sizes)
    help: str


# The rules the command line knows, by name. Add an entry to add a rule.
RULES: dict[str, RuleEntry] = {
    "fixed": RuleEntry(adaclip.fixed, (), "fixed(value)"),
    "decaying": RuleEntry(
        adaclip.decaying, (), "decaying(init_value, decay_rate, transition_steps=1, floor=0.0)"
    ),
    "moving_average": RuleEntry(
        adaclip.moving_average, ("window",), "moving_average(multiplier, window, feed='raw')"
    ),
    "ema": RuleEntry(adaclip.ema, (), "ema(multiplier, decay, warmup_steps=0, feed='clipped')"),
    "percentile": RuleEntry(adaclip.percentile, ("window",), "percentile(p, window)"),
    "zscore": RuleEntry(
        adaclip.zscore,
        (),
        "zscore(alpha=0.97, z_thresh=2.5, warmup_steps=25, mode='zscore', "
        "clip_option='adaptive_scaling', clip_factor=1.0, skip_update_on_spike=False)",
    ),
    "quantile": RuleEntry(adaclip.quantile, (), "quantile(target, learning_rate=0.2, initial=1.0)"),
    "clamp": RuleEntry(adaclip.clamp, (), "clamp(rule, lower=None, upper=None)"),
    "minimum": RuleEntry(adaclip.minimum, (), "minimum(*rules)"),
    "maximum": RuleEntry(adaclip.maximum, (), "maximum(*rules)"),
    "warmup": RuleEntry(adaclip.warmup, (), "warmup(rule, steps, during)"),
    "autoclip": RuleEntry(
        _autoclip_rule, ("window",), "autoclip(percentile=10.0, window=10000): AutoClip's rule"
    ),
    "zclip": RuleEntry(
        _zclip_rule,
        (),
        "zclip(alpha=0.97, z_thresh=2.5, warmup_steps=25, max_norm=1.0, ...): ZClip's rule",
    ),
    "adagc": RuleEntry(
        _adagc_rule,
        (),
        "adagc(ratio=1.04, beta=0.99, warmup_steps=100, warmup_max_norm=1.0): AdaGC's "
        "per-leaf rule",
    ),
}

# Functions allowed in --grid values.
GRID_FUNCTIONS = {"linspace": np.linspace, "geomspace": np.geomspace, "arange": np.arange}


class RuleCall(NamedTuple):
    """A parsed rule spec: a registered name with literal (or nested) arguments."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def build(self, **extra: Any) -> ThresholdRule:
        entry = RULES[self.name]
        args = [a.build() if isinstance(a, RuleCall) else a for a in self.args]
        kwargs = {k: v.build() if isinstance(v, RuleCall) else v for k, v in self.kwargs.items()}
        return entry.factory(*args, **{**kwargs, **extra})


def _literal(node: ast.AST, spec: str) -> Any:
    if isinstance(node, ast.Call | ast.Name):
        return _rule_call(node, spec)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise CliError(
            f"bad rule {spec!r}: arguments must be literals (numbers, strings, True/False/None) "
            f"or rules, got {ast.unparse(node)!r}"
        ) from None


def _rule_call(node: ast.AST, spec: str) -> RuleCall:
    if isinstance(node, ast.Name):
        name, args, keywords = node.id, [], []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name, args, keywords = node.func.id, node.args, node.keywords
    else:
        raise CliError(f"bad rule {spec!r}: expected NAME or NAME(arguments)")
    if name not in RULES:
        raise CliError(f"unknown rule {name!r} in {spec!r}; known rules: {', '.join(RULES)}")
    if any(k.arg is None for k in keywords) or any(isinstance(a, ast.Starred) for a in args):
        raise CliError(f"bad rule {spec!r}: no * or ** arguments")
    return RuleCall(
        name,
        tuple(_literal(a, spec) for a in args),
        {k.arg: _literal(k.value, spec) for k in keywords},
    )


def parse_rule(spec: str) -> RuleCall:
    """Parses a rule spec such as ``"ema(multiplier=2.0, decay=0.99)"`` or ``"autoclip"``.

    Raises:
        CliError: a syntax error, an unknown name or a non-literal argument.
    """
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError:
        raise CliError(f"bad rule {spec!r}: not of the form NAME(arg, key=value, ...)") from None
    return _rule_call(tree.body, spec)


def _build(call: RuleCall, spec: str, **extra: Any) -> ThresholdRule:
    try:
        return call.build(**extra)
    except (TypeError, ValueError) as e:
        raise CliError(f"bad rule {spec!r}: {e}") from None


def parse_grid(item: str) -> tuple[str, list[Any]]:
    """Parses ``NAME=VALUES``: a literal list (``[1, 2]``, ``1,2``) or linspace/geomspace/arange."""
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise CliError(f"bad grid {item!r}: expected NAME=VALUES, e.g. multiplier=1.5,2,3")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise CliError(f"bad grid {item!r}: cannot parse the values {text!r}") from None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in GRID_FUNCTIONS
        and not node.keywords
    ):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            values = GRID_FUNCTIONS[node.func.id](*args).tolist()
        except (ValueError, TypeError) as e:
            raise CliError(f"bad grid {item!r}: {e}") from None
    else:
        try:
            values = ast.literal_eval(node)
        except ValueError:
            raise CliError(
                f"bad grid {item!r}: values must be a list of literals or "
                f"{'/'.join(GRID_FUNCTIONS)}(...)"
            ) from None
        if not isinstance(values, list | tuple):
            values = [values]
        values = list(values)
    if not values:
        raise CliError(f"bad grid {item!r}: no values")
    return name, values


def read_statistics(path: str, column: str | None) -> tuple[np.ndarray, str]:
    """Reads a norm trace from a CSV or .npy file; returns it and the column used."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise CliError(f"cannot read {path!r}: no such file")
    try:
        data = adaclip.load_record(p)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {path!r}: {e}") from None
    names = list(data)
    if column is None:
        candidates = [n for n in names if "norm" in n.lower()]
        if not candidates:
            raise CliError(
                f"{path}: no column name contains 'norm'; choose one with --column "
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
    return values, column


def _describe(stats: np.ndarray, column: str, path: str) -> str:
    finite = np.isfinite(stats).reshape(len(stats), -1).all(axis=1)
    shape = "" if stats.ndim == 1 else f", {stats.shape[1]} leaves"
    return (
        f"{path}: column {column!r}, {len(stats)} steps{shape} "
        f"({int((~finite).sum())} non-finite), median {np.nanmedian(stats[finite]):.4g}"
    )


def _check_shift_args(args: argparse.Namespace, steps: int) -> None:
    if args.shift_at is not None and not 0 <= args.shift_at < steps:
        raise CliError(f"--shift-at must be in [0, {steps}), got {args.shift_at}")
    if args.adapt_window < 1:
        raise CliError(f"--adapt-window must be >= 1, got {args.adapt_window}")


def _replay_command(args: argparse.Namespace) -> int:
    stats, column = read_statistics(args.file, args.column)
    _check_shift_args(args, len(stats))
    specs = args.rule or ["autoclip"]
    rules = [(spec, _build(parse_rule(spec), spec)) for spec in specs]
    traces = []
    table: dict[str, list[Any]] = {"rule": []}
    for spec, rule in rules:
        trace = adaclip.replay(rule, stats)
        traces.append(trace)
        summary = adaclip.summarize(trace, shift_at=args.shift_at, adapt_window=args.adapt_window)
        table["rule"].append(spec)
        for k, v in summary.items():
            table.setdefault(k, []).append(v)
    print(_describe(stats, column, args.file))
    print(adaclip.format_table(table))
    if args.plot:
        _save_replay_plot(args.plot, stats, rules, traces, args.leaf)
        print(f"wrote {args.plot}")
    return 0


def _save_replay_plot(path, stats, rules, traces, leaf):
    plt = _pyplot()
    if stats.ndim == 2 and not 0 <= leaf < stats.shape[1]:
        raise CliError(f"--leaf must be in [0, {stats.shape[1]}), got {leaf}")
    fig, axes = plt.subplots(
        len(rules), 1, figsize=(9, 2.6 * len(rules)), sharex=True, squeeze=False
    )
    for ax, (spec, _), trace in zip(axes[:, 0], rules, traces, strict=True):
        adaclip.plot_trace(stats, trace, ax=ax, label=spec, leaf=leaf if stats.ndim == 2 else None)
    fig.tight_layout()
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
    stats, column = read_statistics(args.file, args.column)
    _check_shift_args(args, len(stats))
    call = parse_rule(args.rule)
    if not args.grid:
        raise CliError("sweep needs at least one --grid NAME=VALUES")
    grid = dict(parse_grid(g) for g in args.grid)
    static = [n for n in grid if n in RULES[call.name].static]
    # Check every configuration's arguments on the host first (clear errors).
    base = {n: values[0] for n, values in grid.items()}
    for n, values in grid.items():
        for v in values:
            _build(call, args.rule, **{**base, n: v})
    try:
        table = adaclip.sweep(
            lambda **kw: call.build(**kw),
            stats,
            grid,
            static=static,
            shift_at=args.shift_at,
            adapt_window=args.adapt_window,
        )
    except (TypeError, ValueError) as e:
        raise CliError(f"sweep of {args.rule!r} failed: {e}") from None
    if args.sort:
        if args.sort not in table:
            raise CliError(f"--sort: no column {args.sort!r} (columns: {', '.join(table)})")
        order = np.argsort(table[args.sort], kind="stable")
        table = {k: v[order] for k, v in table.items()}
    print(_describe(stats, column, args.file))
    print(f"rule {args.rule!r}, {len(next(iter(table.values())))} configurations")
    print(adaclip.format_table(table))
    if args.out:
        try:
            with open(args.out, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(list(table))
                for row in zip(*table.values(), strict=True):
                    writer.writerow([v.item() if hasattr(v, "item") else v for v in row])
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
        fig, ax = plt.subplots(figsize=(7, 4.5))
        x = numeric[0] if numeric else list(grid)[0]
        y = numeric[1] if len(numeric) > 1 else None
        adaclip.plot_sweep(table, x, y, value=args.value, ax=ax)
        fig.tight_layout()
        _savefig(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _rules_command(args: argparse.Namespace) -> int:
    del args
    for name, entry in RULES.items():
        print(f"{name:15s} {entry.help}")
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
            help="the CSV column to read (default: the first whose name contains 'norm')",
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
    p.add_argument("--plot", help="write a plot of norm and threshold per rule (PNG, PDF, SVG)")
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
    """Runs the command line; returns the exit status (0 ok, 1 user error, 2 usage)."""
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
