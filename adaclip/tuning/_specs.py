"""The command line's rule language: a registry of public rules and recipes, and its parser.

A rule spec is a registered name, optionally called with literal arguments
(numbers, strings, booleans, None) or nested rule specs, e.g.
``clamp(ema(2.0, 0.99), lower=0.1)``. Specs are parsed with `ast`, never
evaluated, and built by calling the public factory, so a spec is validated
exactly as the Python call it spells.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

import adaclip
from adaclip import ThresholdRule


class CliError(Exception):
    """A user error: reported as one line on stderr, exit status 1."""


def transformation_rule(
    transformation: optax.GradientTransformation, *, per_leaf: bool
) -> ThresholdRule:
    """The thresholds a clip transformation sets, as a rule over its statistic.

    At each step the transformation is given a gradient whose statistic is
    the recorded one, and the rule reports the transformation's ``threshold``
    metric, so a replay of this rule is the transformation's own run on those
    norms. With ``per_leaf`` (a per-leaf clipper) each entry of the statistic
    is one scalar leaf; otherwise each entry is a scalar gradient of its own,
    with its own state (a rule works element-wise on the statistic).
    """

    def leaves(statistic):
        flat = statistic.reshape(-1)
        return [flat[i] for i in range(flat.shape[0])]

    def init_fn(statistic):
        if per_leaf:
            return transformation.init(leaves(statistic))
        return jax.vmap(transformation.init)(statistic.reshape(-1))

    def update_fn(statistic, state):
        if per_leaf:
            _, state = transformation.update(leaves(statistic), state)
            threshold = adaclip.metrics(state)["threshold"]
        else:
            _, state = jax.vmap(transformation.update)(statistic.reshape(-1), state)
            threshold = jax.vmap(adaclip.metrics)(state)["threshold"]
        return threshold.reshape(statistic.shape), state

    return ThresholdRule(init_fn, update_fn)


_TRANSFORMATION_ONLY = ("nonfinite", "axis_name")  # no meaning for a replayed norm


def _recipe(recipe: Callable[..., Any], per_leaf: bool) -> Callable[..., ThresholdRule]:
    def factory(*args: Any, **kwargs: Any) -> ThresholdRule:
        for name in _TRANSFORMATION_ONLY:
            if name in kwargs:
                raise TypeError(
                    f"{recipe.__name__}() got an unexpected keyword argument {name!r} "
                    "(the command line replays the recipe's rule only)"
                )
        return transformation_rule(recipe(*args, **kwargs), per_leaf=per_leaf)

    factory.__signature__ = inspect.signature(recipe).replace(  # type: ignore[attr-defined]
        parameters=[
            p
            for p in inspect.signature(recipe).parameters.values()
            if p.name not in _TRANSFORMATION_ONLY
        ]
    )
    return factory


class RuleEntry(NamedTuple):
    """A rule the command line knows: its factory and its static arguments."""

    factory: Callable[..., ThresholdRule]
    static: tuple[str, ...]  # arguments that fix array shapes (window sizes)
    note: str = ""

    @property
    def help(self) -> str:
        """The factory's arguments as Python spells them, and the note."""
        signature = inspect.signature(self.factory)
        plain = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        return str(plain) + (f": {self.note}" if self.note else "")


# The rules the command line knows, by name: every public rule, combinator and
# recipe. Add an entry to add a rule.
RULES: dict[str, RuleEntry] = {
    "fixed": RuleEntry(adaclip.fixed, ()),
    "decaying": RuleEntry(adaclip.decaying, ()),
    "moving_average": RuleEntry(adaclip.moving_average, ("window",)),
    "ema": RuleEntry(adaclip.ema, ()),
    "percentile": RuleEntry(adaclip.percentile, ("window",)),
    "zscore": RuleEntry(adaclip.zscore, ()),
    "quantile": RuleEntry(adaclip.quantile, ()),
    "rolling_zscore": RuleEntry(adaclip.rolling_zscore, ("window",)),
    "ema_zscore": RuleEntry(adaclip.ema_zscore, ()),
    "log_space": RuleEntry(adaclip.log_space, ()),
    "clamp": RuleEntry(adaclip.clamp, ()),
    "minimum": RuleEntry(adaclip.minimum, ()),
    "maximum": RuleEntry(adaclip.maximum, ()),
    "warmup": RuleEntry(adaclip.warmup, ()),
    "autoclip": RuleEntry(
        _recipe(adaclip.autoclip, per_leaf=False), ("window",), "the adaclip.autoclip recipe"
    ),
    "zclip": RuleEntry(_recipe(adaclip.zclip, per_leaf=False), (), "the adaclip.zclip recipe"),
    "adagc": RuleEntry(
        _recipe(adaclip.adagc, per_leaf=True), (), "the adaclip.adagc recipe (per leaf)"
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
        """Calls the factory (nested specs first), with ``extra`` keyword arguments on top."""
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
    seen: set[str] = set()
    for k in keywords:  # ast.parse keeps both; Python's compiler refuses them
        if k.arg in seen:
            raise CliError(f"bad rule {spec!r}: keyword argument repeated: {k.arg}")
        seen.add(str(k.arg))
    return RuleCall(
        name,
        tuple(_literal(a, spec) for a in args),
        {str(k.arg): _literal(k.value, spec) for k in keywords},
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


def build_rule(call: RuleCall, spec: str) -> ThresholdRule:
    """Builds a parsed spec; the factory's TypeError or ValueError becomes a CliError."""
    try:
        return call.build()
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
