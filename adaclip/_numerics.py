"""Gradient statistics, accumulated in float32 with one read of the gradients.

The sum of squares of float32 (or bfloat16) elements above ~1e19 overflows
float32. Rather than always rescaling (a second pass over the gradients), the
plain sum of squares is computed first and, only when it came out infinite, a
rescaled pass runs under ``lax.cond``. The common case is one fused read; the
rare case is exact instead of ``inf``.

The rescaled pass multiplies by the constant ``2**-80`` (exact: a power of
two) and multiplies the root back by ``2**80``. It runs only when the norm is
above ~1.8e19, where the elements that the scaling flushes to zero (below
~1e5 in magnitude) change the result by less than one part in 1e16; the
scaled sum overflows only when the true norm exceeds the float32 range
(``inf`` is then the right answer). A constant scale, rather than one derived
from ``max |x|``, keeps the fallback to one reduction per leaf: no extra max
pass and no runtime scalar broadcast that XLA would write out as a
leaf-sized temporary. Each reduction in the compiled program adds to the
compile time, which grows faster than linearly with their number.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def _sumsq(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x.astype(F32)), dtype=F32)


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


def _scaled_sumsq(x: jax.Array) -> jax.Array:
    """``sum((x * 2**-80)**2)``: finite unless the norm exceeds the float32 range."""
    return _sumsq(x.astype(F32) * F32(_DOWN))


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

    def total(fn):
        return _psum(sum((fn(x) for x in leaves), jnp.zeros([], F32)), axis_name)

    sumsq = total(_sumsq)

    def slow(_):
        # An infinite element stays infinite; a NaN never gets here (NaN is
        # not +inf), it propagates through the fast branch.
        return F32(_UP) * jnp.sqrt(total(_scaled_sumsq))

    return lax.cond(jnp.isposinf(sumsq), slow, jnp.sqrt, sumsq)


def leaf_norms(leaves: Sequence[jax.Array], axis_name=None) -> jax.Array:
    """One L2 norm per leaf, float32 ``(n_leaves,)``, overflow-safe."""
    leaves = list(leaves)
    if not leaves:
        return jnp.zeros([0], F32)

    def per_leaf(fn):
        return _psum(jnp.stack([fn(x) for x in leaves]), axis_name)

    sumsq = per_leaf(_sumsq)

    def slow(_):
        # Leaves whose sum of squares is finite keep their one-pass norm.
        rescaled = F32(_UP) * jnp.sqrt(per_leaf(_scaled_sumsq))
        return jnp.where(jnp.isposinf(sumsq), rescaled, jnp.sqrt(sumsq))

    return lax.cond(jnp.any(jnp.isposinf(sumsq)), slow, jnp.sqrt, sumsq)


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
