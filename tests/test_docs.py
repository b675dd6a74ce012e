"""The API reference lists every public name; the generated docs table is current."""

import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaclip

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", adaclip.__all__)
def test_public_name_in_api_reference(name):
    api = (DOCS / "api.md").read_text()
    assert re.search(rf"^::: adaclip\.{name}$", api, re.M), f"docs/api.md lacks ::: adaclip.{name}"


def _named_tuples(tree):
    """Every NamedTuple in ``tree`` (a state), nested ones included."""
    found = []

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            found.append(node)
        children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
        for child in children:
            if child is not node and not isinstance(child, jax.Array | np.ndarray):
                visit(child)

    visit(tree)
    return found


def test_every_state_type_users_meet_is_exported():
    # Walk the init state of every registry row (clippers, combinators,
    # recipes, the skipping wrapper, each rule alone): each NamedTuple type
    # defined in adaclip must be adaclip.<its name> (or, for the per-tree
    # ClipState subclasses, a subclass of it), listed in __all__.
    import _cases

    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(3)}
    seen = {}
    for name, case in _cases.CASES.items():
        states = [case.build().init(params)]
        rule = case.rule() if case.rule is not None else None
        if isinstance(rule, adaclip.ThresholdRule):
            states.append(rule.init(jnp.zeros(())))
        for state in states:
            for node in _named_tuples(state):
                seen.setdefault(type(node), name)
    ours = {t: row for t, row in seen.items() if t.__module__.startswith("adaclip")}
    assert {"ClampState", "WarmupState", "AdaGCState", "ClipState"} <= {t.__name__ for t in ours}
    for t, row in ours.items():
        public = getattr(adaclip, t.__name__, None)
        assert isinstance(public, type) and issubclass(t, public), (
            f"{t.__module__}.{t.__qualname__} (in the state of registry row {row!r}) "
            f"is not exported as adaclip.{t.__name__}"
        )
        assert t.__name__ in adaclip.__all__, t.__name__


def test_nonfinite_table_is_current():
    spec = importlib.util.spec_from_file_location(
        "nonfinite_table", DOCS / "scripts" / "nonfinite_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (DOCS / "nonfinite.md").read_text()
    assert module.table() in page, "run: python docs/scripts/nonfinite_table.py --write"
