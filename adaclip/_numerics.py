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

How the passes are laid out in the compiled program (for compile time and
speed on XLA:CPU) is described in `_measure`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def leaf_f32(x: jax.Array) -> jax.Array:
    """A gradient leaf in float32, with one ``lax`` op or none (cheaper to trace,
    once per leaf, than ``_base.as_f32``, which also takes Python numbers)."""
    return x if x.dtype == F32 else lax.convert_element_type(x, F32)


def _sumsq(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``sum((x * scale)**2)`` in float32 (``lax`` ops: cheap to trace, and
    this runs once per leaf)."""
    y = leaf_f32(x)
    y = lax.mul(y, lax.broadcast_in_dim(scale, y.shape, ()))
    return lax.reduce(lax.mul(y, y), F32(0.0), lax.add, tuple(range(y.ndim)))


def _add_all(values) -> jax.Array:
    return functools.reduce(lax.add, values, jnp.zeros([], F32))


def _maxabs(x: jax.Array) -> jax.Array:
    """``max |x|`` in float32 (0 for an empty leaf); NaN propagates."""
    if x.size == 0:
        return jnp.zeros([], F32)
    m = lax.reduce(lax.abs(x), jnp.zeros([], x.dtype), lax.max, tuple(range(x.ndim)))
    return leaf_f32(m)


def _nan_probe(x: jax.Array) -> jax.Array:
    """A scaled-down ``sum(x)``: NaN exactly when it must be (a NaN element).

    Scaled by ``2**-100`` so that huge finite values cannot overflow the sum
    into ``inf - inf``.
    """
    y = leaf_f32(x)
    y = lax.mul(y, lax.full_like(y, 2.0**-100))
    return lax.reduce(y, F32(0.0), lax.add, tuple(range(y.ndim)))


# The overflow fallback's scale: 2**-80 and back, both exact in float32.
_DOWN = 2.0**-80
_UP = 2.0**80


# Leaves up to this many elements are reduced inside the loop of `_measure`;
# larger ones in the main program.
_SMALL_LEAF = 1 << 14


def _measure(leaves, part, combine, overflowed, finish, zeros, then):
    """Measures a statistic of ``leaves`` and hands it to ``then``.

    Returns ``(stat, then(stat))``. Each leaf contributes ``part(x, scale)``
    and ``combine(parts)`` gives the sums (a total, or one per leaf). The
    first pass runs with ``scale = 1``; a second one with ``scale = 2**-80``
    only when ``overflowed(first sums)``; ``finish(first, last, rescaled)``
    gives the statistic. Then ``then(stat)``: the rule's step and the clip
    factor.

    Everything from the reductions of small leaves on runs inside one
    ``lax.while_loop`` (one trip, or two after an overflow), for compile
    time. With many small leaves XLA fuses the last stage of all their
    reductions into one large kernel; a ``lax.cond`` fallback would hold a
    second copy of it, and XLA:CPU's compile time grows faster than linearly
    with such kernels. And ``then``'s scalars, as outputs of the loop, are
    computed once rather than fused by XLA into each of the optimizer's
    per-leaf loops. Large leaves are reduced in the main program, where
    XLA:CPU splits a reduction across threads (inside a loop body it does
    not); their second pass is a ``lax.cond`` in the loop, whose reductions
    compile to the same kernels as the first.
    """
    big = [i for i, x in enumerate(leaves) if x.size > _SMALL_LEAF]
    big_first = [part(leaves[i], F32(1.0)) for i in big]

    def sums_at(trip, scale):
        parts = {i: part(x, scale) for i, x in enumerate(leaves) if x.size <= _SMALL_LEAF}
        if big:
            again = lax.cond(
                trip > 0,
                lambda s: [part(leaves[i], s) for i in big],
                lambda s: big_first,
                scale,
            )
            parts.update(zip(big, again, strict=True))
        return combine([parts[i] for i in range(len(leaves))])

    stat_zeros = finish(zeros, zeros, jnp.asarray(False))
    out_zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(then, stat_zeros)
    )

    def keep_going(carry):
        trip, first, _, _ = carry
        return (trip == 0) | ((trip == 1) & overflowed(first))

    def body(carry):
        trip, first, _, _ = carry
        sums = sums_at(trip, jnp.where(trip == 0, F32(1.0), F32(_DOWN)))
        first = jax.tree.map(lambda new, old: jnp.where(trip == 0, new, old), sums, first)
        stat = finish(first, sums, trip > 0)
        return trip + 1, first, stat, then(stat)

    init = (jnp.zeros([], jnp.int32), zeros, stat_zeros, out_zeros)
    _, _, stat, out = lax.while_loop(keep_going, body, init)
    return stat, out


def _max_all(values) -> jax.Array:
    """Element-wise max over an iterable of arrays; NaN propagates."""
    return functools.reduce(jnp.maximum, values, jnp.zeros([], F32))


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def global_norm(leaves: Sequence[jax.Array], axis_name=None, then=None):
    """The L2 norm of all leaves together, float32, overflow-safe.

    With ``axis_name`` the squared norms are summed over that mapped axis
    (``shard_map``/``pmap``), so every device gets the true global norm.
    Returns ``(norm, then(norm))`` (see `_measure`).
    """
    leaves = list(leaves)

    def finish(first, last, rescaled):
        return jnp.where(rescaled, F32(_UP) * jnp.sqrt(last), jnp.sqrt(first))

    def total(parts):
        return _psum(_add_all(parts), axis_name)

    # An infinite element stays infinite in the second pass too; a NaN sum is
    # not +inf, so it never triggers one and propagates.
    zero = jnp.zeros([], F32)
    return _measure(leaves, _sumsq, total, jnp.isposinf, finish, zero, then or _nothing)


def leaf_norms(leaves: Sequence[jax.Array], axis_name=None, then=None):
    """One L2 norm per leaf, float32 ``(n_leaves,)``, overflow-safe.

    Returns ``(norms, then(norms))`` (see `_measure`).
    """
    leaves = list(leaves)
    if not leaves:
        norms = jnp.zeros([0], F32)
        return norms, (then or _nothing)(norms)

    def per_leaf(parts):
        return _psum(jnp.stack(parts), axis_name)

    def any_overflow(sums):
        return jnp.any(jnp.isposinf(sums))

    def finish(first, last, rescaled):
        # Leaves whose sum of squares is finite keep their one-pass norm.
        return jnp.where(rescaled & jnp.isposinf(first), F32(_UP) * jnp.sqrt(last), jnp.sqrt(first))

    zeros = jnp.zeros([len(leaves)], F32)
    return _measure(leaves, _sumsq, per_leaf, any_overflow, finish, zeros, then or _nothing)


def _nothing(stat):
    del stat
    return ()


def _may_span_devices() -> bool:
    """Whether this process has more than one device, so that a reduction
    under ``jax.jit`` may be split across devices (GSPMD sharding)."""
    return jax.device_count() > 1 or jax.device_count("cpu") > 1


def global_max_abs(leaves: Sequence[jax.Array], axis_name=None, then=None):
    """``max |x|`` over all leaves, float32; non-finite if any element is NaN or infinite.

    On one device the max propagates NaN. Cross-device max reductions
    (``lax.pmax``, the all-reduce of a sharded ``jnp.max``) may drop it on
    some backends (XLA:CPU does), so:

    - with ``axis_name``, the local max is made ``inf`` when it is NaN before
      the ``pmax``;
    - under plain ``jax.jit`` in a process with more than one device, where
      XLA may split the max across devices by itself, a NaN probe (a
      scaled-down sum; a sum never drops NaN) is reduced alongside the max.
      The max and the probe each have their own producer of ``x``, so both
      fuse into reads of ``x`` and nothing gradient-sized is written out
      (checked by tests/test_hlo.py). With one device the probe is left
      out: it would double the reductions in the program, and XLA:CPU's
      compile time grows faster than linearly with their number.

    Returns ``(max, then(max))``, computed in the same kind of loop as the
    norms (see `_measure`); a max cannot overflow, so the loop makes a
    second, identical trip only on a NaN step, where it changes nothing.
    """
    leaves = list(leaves)

    def part(x, scale):
        del scale  # a max needs no rescaling
        return _maxabs(x), (_nan_probe(x) if probe else None)

    def combine(parts):
        m = _max_all(p[0] for p in parts)
        if axis_name is not None:
            return lax.pmax(jnp.where(jnp.isnan(m), F32(jnp.inf), m), axis_name)
        if not probe:
            return m
        nan_probe = _add_all(p[1] for p in parts)
        return m + jnp.where(jnp.isnan(nan_probe), jnp.nan, 0.0)

    def finish(first, last, rescaled):
        del first, rescaled
        return last

    probe = axis_name is None and _may_span_devices()
    zero = jnp.zeros([], F32)
    return _measure(leaves, part, combine, jnp.isnan, finish, zero, then or _nothing)
