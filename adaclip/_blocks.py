"""Blocks: which elements of the gradient one statistic covers (a unit, a
layer of a stack), and how a clipper's metrics name them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import jax
import numpy as np

from adaclip import _validation

# An ``axis`` argument: reduced axes for every leaf, or a callable of
# ``(path, leaf)`` that returns them.
AxisLike = int | tuple[int, ...] | Callable[[tuple, Any], Any] | None
WITHIN = ("layer", "unit")


def path_name(path: tuple) -> str:
    """A key path as ``"layers/attn/kernel"``: dict keys, sequence indices
    and attribute names joined by ``/``. The attribute ``value`` that a flax
    ``nnx.Variable`` adds at the end of its leaves' paths is left out."""
    parts = []
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def unitwise_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """optax's ``unitwise_norm`` convention: the axes reduced into one unit.

    A leaf that is a scalar or a vector once its size-1 axes are squeezed is
    one unit; otherwise rank 2 and 3 reduce axis 0 (``(in, out)`` and
    multi-head ``(in, heads, out)`` kernels), rank 4 reduces ``(0, 1, 2)``
    (an HWIO convolution) and rank 5 ``(0, 1, 2, 3)`` (a DHWIO one). Like
    optax, the rank that picks the axes is the unsqueezed one.
    """
    ndim = len(shape)
    if sum(d != 1 for d in shape) <= 1:
        return tuple(range(ndim))
    if ndim in (2, 3):
        return (0,)
    if ndim == 4:
        return (0, 1, 2)
    if ndim == 5:
        return (0, 1, 2, 3)
    raise ValueError(
        f"axis=None gives units to leaves of rank at most 5 (optax's unitwise_norm), got a "
        f"leaf of shape {tuple(shape)}; pass axis (an int, a tuple of the axes to reduce, or a "
        "callable (path, leaf) -> axes) to say which axes one unit covers."
    )


def normalized_axes(axes: Any, ndim: int, where: str) -> tuple[int, ...]:
    """``axes`` (an int or a sequence of ints) as sorted non-negative axes of
    a rank-``ndim`` leaf; a ``ValueError`` naming ``axis`` otherwise."""
    items = (axes,) if isinstance(axes, int | np.integer) else axes
    try:
        items = tuple(items)
    except TypeError:
        items = None
    if items is None or any(
        isinstance(a, bool) or not isinstance(a, int | np.integer) for a in items
    ):
        raise TypeError(
            f"axis must be an int, a tuple of ints or a callable (path, leaf) -> axes, "
            f"got {axes!r}{where}."
        )
    out = []
    for a in items:
        if not -ndim <= int(a) < max(ndim, 1) or (ndim == 0 and int(a) != 0):
            raise ValueError(
                f"axis {a} is out of range for a leaf of rank {ndim}, got {axes!r}{where}."
            )
        out.append(int(a) % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"axis repeats an axis, got {axes!r}{where}.")
    return tuple(sorted(out)) if ndim else ()


def check_axis(axis: AxisLike) -> None:
    """Construction-time check of a clipper's ``axis`` argument."""
    if axis is None or callable(axis):
        return
    items = (axis,) if isinstance(axis, int | np.integer) else axis
    ok = isinstance(items, tuple | list) and all(
        isinstance(a, int | np.integer) and not isinstance(a, bool) for a in items
    )
    if not ok:
        raise TypeError(
            f"axis must be None, an int, a tuple of ints or a callable (path, leaf) -> axes, "
            f"got {axis!r}."
        )
    if len({int(a) for a in items}) != len(items):
        raise ValueError(f"axis repeats an axis, got {axis!r}.")


def reduced_axes(axis: AxisLike, path: tuple, leaf: Any) -> tuple[int, ...]:
    """The axes of ``leaf`` that one unit covers (see ``clip_by_unit_norm``)."""
    shape = tuple(np.shape(leaf))
    where = f" (for the leaf {path_name(path) or '<root>'} of shape {shape})"
    if callable(axis):
        axes = axis(path, leaf)
        if axes is None:
            return unitwise_axes(shape)
        return normalized_axes(axes, len(shape), where)
    if axis is None:
        return unitwise_axes(shape)
    return normalized_axes(axis, len(shape), where)


def _matcher(where: Any) -> Callable[[tuple, Any], bool]:
    if callable(where):
        return lambda path, leaf: bool(where(path, leaf))
    names = (where,) if isinstance(where, str) else where
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
        raise TypeError(
            "where must be a key name, a collection of key names or paths, or a "
            f"callable (path, leaf) -> bool, got {where!r}."
        )
    names = tuple(names)

    def match(path, leaf):
        del leaf
        name = path_name(path)
        keys = set(name.split("/"))
        return any(n in keys or name == n or name.startswith(n + "/") for n in names)

    return match


def stacked(where: Any, *, stack_axis: int = 0, within: str = "layer") -> Callable:
    """The ``axis`` of [`adaclip.clip_by_unit_norm`][adaclip.clip_by_unit_norm]
    for a model whose layers are stacked along one axis of their leaves.

    ``nnx.scan``, ``nn.scan`` and ``eqx.filter_vmap`` build a model of $L$
    identical layers as leaves with a leading axis of size $L$; a per-leaf
    clipper then treats the $L$ layers as one tensor. With this ``axis``, a
    stacked leaf $g \\in \\mathbb{R}^{L \\times \\dots}$ gets one block per
    layer (``within="layer"``):

    $$s_\\ell = \\lVert g_{\\ell,\\dots} \\rVert_2, \\qquad \\ell = 1, \\dots, L$$

    so each layer has its own statistic, threshold and metric entry, with
    any rule; with ``within="unit"``, each layer's slice is split into units
    by optax's ``unitwise_norm`` convention (AGC per layer of a stack). Leaves
    that ``where`` does not select are one block each (``"layer"``) or
    optax's units (``"unit"``).

    Args:
        where: which leaves are stacked: a key name (``"layers"`` selects
            every leaf whose path has that key), a collection of key names or
            ``/``-joined path prefixes (``"decoder/layers"``), or a callable
            ``(path, leaf) -> bool`` (``path`` as ``jax.tree_util`` gives it).
        stack_axis: the axis that indexes the layers (``0`` for ``nn.scan``
            and ``nnx.scan`` with their defaults).
        within: ``"layer"`` (one block per layer) or ``"unit"`` (optax's units
            inside each layer).

    Returns:
        A callable ``(path, leaf) -> axes`` to pass as ``axis``.

    Raises:
        TypeError, ValueError: a bad ``where``, ``stack_axis`` or ``within``.

    Examples:
        Three stacked layers get one norm each; the unstacked head one norm:

        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> params = {"layers": {"w": jnp.ones((3, 2, 2))}, "head": jnp.ones(4)}
        >>> tx = adaclip.clip_by_unit_norm(1.0, axis=adaclip.stacked("layers"))
        >>> grads = {"layers": {"w": jnp.arange(12.0).reshape(3, 2, 2)}, "head": jnp.ones(4)}
        >>> _, state = tx.update(grads, tx.init(params))
        >>> m = adaclip.metrics(state, params)
        >>> m["norm/layers/w"]
        Array([ 3.7416575, 11.224972 , 19.131126 ], dtype=float32)
        >>> m["norm/head"]
        Array(2., dtype=float32)
    """
    match = _matcher(where)
    _validation.check_int(
        "stack_axis", stack_axis, low=-64, high=63, static=True, reason="it is an axis"
    )
    _validation.check_choice("within", within, WITHIN)
    stack_axis = int(stack_axis)

    def axis(path, leaf):
        ndim = np.ndim(leaf)
        if not match(path, leaf):
            return tuple(range(ndim)) if within == "layer" else unitwise_axes(np.shape(leaf))
        if not -ndim <= stack_axis < ndim:
            raise ValueError(
                f"stack_axis {stack_axis} is out of range for the stacked leaf "
                f"{path_name(path)} of shape {np.shape(leaf)}, got {stack_axis}."
            )
        s = stack_axis % ndim
        rest = [d for d in range(ndim) if d != s]
        if within == "layer":
            return tuple(rest)
        inner = unitwise_axes(tuple(np.shape(leaf)[d] for d in rest))
        return tuple(rest[d] for d in inner)

    return axis


def encode(
    names: list[str], kept: list[tuple[int, ...]], axes: list[tuple[int, ...]]
) -> dict[str, None]:
    """The blocks of a per-leaf or unit-wise clipper, as a ``dict`` whose keys
    are its whole content: ``"<leaf index>:<kept shape>:<reduced axes>:<path>"``.

    Kept in the clipper's state so that ``adaclip.metrics(state, params)``
    can name and shape each leaf's entries, and so that ``update`` reduces
    the axes that ``init`` chose from the whole parameters (inside
    ``shard_map`` a leaf's local shard may look like a vector). Held in the
    keys (the tree structure), not in arrays, so it is static under
    ``jax.jit``, costs no memory, and saves and restores with any
    checkpointer.
    """
    return {
        f"{i:06d}:{_ints(shape)}:{_ints(ax)}:{name}": None
        for i, (name, shape, ax) in enumerate(zip(names, kept, axes, strict=True))
    }


def _ints(xs: tuple[int, ...]) -> str:
    return ",".join(map(str, xs))


def _parse(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",")) if text else ()


def decode(blocks: dict[str, None]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(path, kept shape, reduced axes)`` per leaf, in leaf order (see `encode`)."""
    out = []
    for key in sorted(blocks):
        _, shape, axes, name = key.split(":", 3)
        out.append((name, _parse(shape), _parse(axes)))
    return out
