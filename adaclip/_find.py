"""Finding adaclip states inside any optimizer state (the one place this is done)."""

from __future__ import annotations

from typing import Any

import jax

from adaclip._clippers import ClipState


def find_states(tree: Any, cls: type) -> list[tuple[tuple, Any]]:
    """``(path, state)`` for every instance of the NamedTuple ``cls`` in ``tree``.

    The search stops at such a state (one nested inside it is not listed) and
    goes through every pytree node: ``optax.chain`` tuples,
    ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.partition``,
    ``optax.masked``, flax ``nnx`` variables, ...
    """
    is_state = lambda x: isinstance(x, cls)  # noqa: E731
    found = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_state)[0]
    return [(path, leaf) for path, leaf in found if is_state(leaf)]


def clip_states(tree: Any) -> list[ClipState]:
    """Every [`adaclip.ClipState`][adaclip.ClipState] in ``tree``, in tree order."""
    return [state for _, state in find_states(tree, ClipState)]


def is_clip_state(x: Any) -> bool:
    """True for a [`adaclip.ClipState`][adaclip.ClipState]."""
    return isinstance(x, ClipState)
