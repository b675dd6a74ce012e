"""Gradient statistics, accumulated in float32 with one read of the gradients.

The sum of squares of float32 (or bfloat16) elements above ~1e19 overflows
float32. Rather than always rescaling (a second pass over the gradients), the
plain sum of squares is computed first and, only when it came out infinite, a
rescaled two-pass computation runs under ``lax.cond``. The common case is one
fused read; the rare case is exact instead of ``inf``.
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
    """``max |x|``; a NaN element gives ``inf``.

    Cross-device max reductions (a sharded ``jnp.max``, ``lax.pmax``) may drop
    NaN on some backends (XLA:CPU does), so NaN is mapped to ``inf`` before
    reducing: the statistic is then non-finite on every device, as it must be.
    """
    if x.size == 0:
        return jnp.zeros([], F32)
    a = jnp.abs(x.astype(F32))
    return jnp.max(jnp.where(jnp.isnan(a), jnp.inf, a))


def _rescaled_norm(sumsq_fn, leaves: Sequence[jax.Array], max_abs: jax.Array) -> jax.Array:
    """``sqrt(sum(x**2))`` computed as ``m * sqrt(sum((x/m)**2))``, ``m = max|x|``."""
    ok = jnp.isfinite(max_abs) & (max_abs > 0)
    m = jnp.where(ok, max_abs, 1.0)
    norm = m * jnp.sqrt(sumsq_fn([leaf.astype(F32) / m for leaf in leaves]))
    # An infinite or NaN element (see _maxabs) gives an infinite norm.
    return jnp.where(jnp.isinf(max_abs), jnp.inf, norm)


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

    def total(ls):
        return _psum(sum((_sumsq(x) for x in ls), jnp.zeros([], F32)), axis_name)

    sumsq = total(leaves)

    def slow(_):
        max_abs = _pmax(_max_all(_maxabs(x) for x in leaves), axis_name)
        return _rescaled_norm(total, leaves, max_abs)

    return lax.cond(jnp.isposinf(sumsq), slow, jnp.sqrt, sumsq)


def leaf_norms(leaves: Sequence[jax.Array], axis_name=None) -> jax.Array:
    """One L2 norm per leaf, float32 ``(n_leaves,)``, overflow-safe."""
    leaves = list(leaves)
    if not leaves:
        return jnp.zeros([0], F32)

    def per_leaf(ls):
        return _psum(jnp.stack([_sumsq(x) for x in ls]), axis_name)

    sumsq = per_leaf(leaves)

    def slow(_):
        max_abs = _pmax(jnp.stack([_maxabs(x) for x in leaves]), axis_name)
        ok = jnp.isfinite(max_abs) & (max_abs > 0)
        m = jnp.where(ok, max_abs, 1.0)
        scaled = per_leaf([x.astype(F32) / m[i] for i, x in enumerate(leaves)])
        norms = m * jnp.sqrt(scaled)
        return jnp.where(jnp.isinf(max_abs), jnp.inf, norms)

    return lax.cond(jnp.any(jnp.isposinf(sumsq)), slow, jnp.sqrt, sumsq)


def global_max_abs(leaves: Sequence[jax.Array], axis_name=None) -> jax.Array:
    """``max |x|`` over all leaves, float32; ``inf`` if any element is NaN or infinite."""
    leaves = list(leaves)
    m = _max_all(_maxabs(x) for x in leaves)
    return _pmax(m, axis_name)
