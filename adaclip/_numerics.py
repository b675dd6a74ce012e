"""Gradient statistics, accumulated in float32 with one read of the gradients.

The sum of squares of float32 (or bfloat16) elements above ~1e19 overflows
float32. Rather than always rescaling (a second pass over the gradients), the
plain sum of squares is computed first and, only when it came out infinite, a
rescaled pass runs. The common case is one fused read; the rare case is exact
instead of ``inf``.

The rescaled pass multiplies by the constant ``2**-80`` (exact: a power of
two) and multiplies the root back by ``2**80``. It runs only when the norm is
above ~1.8e19, where the elements that the scaling flushes to zero (below
~1e5 in magnitude) change the result by less than one part in 1e16; the
scaled sum overflows only when the true norm exceeds the float32 range
(``inf`` is then the right answer).

Both passes are the *same* computation, ``sum((x * scale)**2)`` with a
runtime ``scale``, run by a ``lax.while_loop`` that makes one trip normally
and a second one (``scale = 2**-80``) only after an overflow. Compared with a
``lax.cond`` whose branch holds a second copy of every reduction, the
compiled program has half the reductions, and XLA:CPU's compile time grows
faster than linearly with their number: on a 500-leaf tree this is the
difference between ~1.05x and ~1.4x the compile time of
``optax.clip_by_global_norm`` (benchmarks/bench.py, section ``compile``).
Multiplying by ``scale = 1`` is exact and free in a memory-bound loop.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def _sumsq(x: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """``sum((x * scale)**2)`` in float32."""
    y = x.astype(F32)
    if scale is not None:
        y = y * scale
    return jnp.sum(jnp.square(y), dtype=F32)


def _maxabs(x: jax.Array) -> jax.Array:
    """``max |x|`` in float32 (0 for an empty leaf)."""
    if x.size == 0:
        return jnp.zeros([], F32)
    return jnp.max(jnp.abs(x)).astype(F32)


def _nan_probe(x: jax.Array) -> jax.Array:
    """A scaled-down ``sum(x)``: NaN exactly when it must be (a NaN element).

    Scaled by ``2**-100`` so that huge finite values cannot overflow the sum
    into ``inf - inf``.
    """
    return jnp.sum(x.astype(F32) * F32(2.0**-100), dtype=F32)


# The overflow fallback's scale: 2**-80 and back, both exact in float32.
_DOWN = 2.0**-80
_UP = 2.0**80


def _sums_with_fallback(sums_fn, overflowed, zeros):
    """``sums_fn(scale)`` at ``scale = 1`` and, only if ``overflowed`` of that,
    again at ``scale = 2**-80``, in one ``lax.while_loop`` (one copy of the
    reductions in the program).

    ``zeros`` has the structure of ``sums_fn``'s result. Returns ``(first,
    last, rescaled)``: the first pass, the last pass (the first one again when
    there was no second) and whether a second pass ran.
    """
    def again(carry):
        trip, first, _ = carry
        return (trip == 0) | ((trip == 1) & overflowed(first))

    def body(carry):
        trip, first, _ = carry
        out = sums_fn(jnp.where(trip == 0, F32(1.0), F32(_DOWN)))
        first = jax.tree.map(lambda new, old: jnp.where(trip == 0, new, old), out, first)
        return trip + 1, first, out

    trips, first, last = lax.while_loop(again, body, (jnp.zeros([], jnp.int32), zeros, zeros))
    return first, last, trips > 1


def _max_all(values) -> jax.Array:
    """Element-wise max over an iterable of arrays; NaN propagates."""
    return functools.reduce(jnp.maximum, values, jnp.zeros([], F32))


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def _pmax(x, axis_name):
    return x if axis_name is None else lax.pmax(x, axis_name)


def global_norm(leaves: Sequence[jax.Array], axis_name=None) -> jax.Array:
    """The L2 norm of all leaves together, float32, overflow-safe.

    With ``axis_name`` the squared norms are summed over that mapped axis
    (``shard_map``/``pmap``), so every device gets the true global norm.
    """
    leaves = list(leaves)

    def total(scale):
        return _psum(sum((_sumsq(x, scale) for x in leaves), jnp.zeros([], F32)), axis_name)

    # An infinite element stays infinite in the second pass too; a NaN sum is
    # not +inf, so it never triggers one and propagates.
    first, last, rescaled = _sums_with_fallback(total, jnp.isposinf, jnp.zeros([], F32))
    return jnp.where(rescaled, F32(_UP) * jnp.sqrt(last), jnp.sqrt(first))


def leaf_norms(leaves: Sequence[jax.Array], axis_name=None) -> list[jax.Array]:
    """One float32 L2 norm per leaf, as a list of scalars; overflow-safe.

    A list rather than a stacked vector: a leaf that reads its own norm from
    a separate scalar compiles to the same kernel as every other leaf of its
    shape, whereas a slice of a shared vector at a different offset makes
    every leaf's kernel unique (XLA:CPU compiles each one separately).
    """
    leaves = list(leaves)
    if not leaves:
        return []

    def per_leaf(scale):
        return _psum(tuple(_sumsq(x, scale) for x in leaves), axis_name)

    def any_overflow(sums):
        return functools.reduce(jnp.logical_or, [jnp.isposinf(s) for s in sums])

    zeros = tuple(jnp.zeros([], F32) for _ in leaves)
    first, last, rescaled = _sums_with_fallback(per_leaf, any_overflow, zeros)
    # Leaves whose sum of squares is finite keep their one-pass norm.
    return [
        jnp.where(rescaled & jnp.isposinf(a), F32(_UP) * jnp.sqrt(b), jnp.sqrt(a))
        for a, b in zip(first, last, strict=True)
    ]


def global_max_abs(leaves: Sequence[jax.Array], axis_name=None) -> jax.Array:
    """``max |x|`` over all leaves, float32; non-finite if any element is NaN or infinite.

    Cross-device max reductions (a sharded ``jnp.max``, ``lax.pmax``) may drop
    NaN on some backends (XLA:CPU does); a sum never does. So a NaN probe (a
    scaled-down sum) is reduced alongside the max, summed across devices, and
    a NaN in it makes the statistic NaN everywhere (an infinite element
    already makes the max infinite). The max and the probe each have their
    own producer of ``x``, so both fuse into reads of ``x`` and nothing
    gradient-sized is written out (checked by tests/test_hlo.py).
    """
    leaves = list(leaves)
    m = _pmax(_max_all(_maxabs(x) for x in leaves), axis_name)
    probe = _psum(sum((_nan_probe(x) for x in leaves), jnp.zeros([], F32)), axis_name)
    return m + jnp.where(jnp.isnan(probe), jnp.nan, 0.0)
