"""Gradient statistics with one read of the gradients: overflow-safe,
differentiable, and typed by the widest leaf.

**Accumulation dtype.** The statistic is accumulated in float32, or in float64
when any leaf is float64 or complex128 (with ``jax_enable_x64``); bfloat16 and
float16 leaves are read as float32. A complex leaf counts with its modulus:
its real and imaginary parts both enter the sum of squares (``|g|^2``), as in
``optax.clip_by_global_norm``, and a NaN in either part makes the statistic
NaN.

**Overflow.** The sum of squares of float32 (or bfloat16) elements above
~1e19 overflows float32 (of float64 elements above ~1e154, float64). Rather
than always rescaling (a second pass over the gradients), the plain sum of
squares is computed first and, only when it came out infinite, a rescaled pass
runs. The common case is one fused read; the rare case is exact instead of
``inf``. The rescaled pass multiplies by a power of two (``2**-80`` in
float32, ``2**-600`` in float64: exact) and multiplies the root back. It runs
only when the norm is near the top of the range, where the elements that the
scaling flushes to zero change the result by less than one part in 1e16; the
scaled sum overflows only when the true norm exceeds the range (``inf`` is
then the right answer).

**Derivatives.** The passes run in a ``lax.while_loop`` (see `_measure`),
which reverse-mode differentiation cannot go through, so the measured
statistic and the clipper's step that runs inside the loop carry a
``jax.custom_jvp``: the tangent of a norm is
$\\dot s = \\sum \\mathrm{Re}(\\bar g\\,\\dot g) / s$, that of a max is the
tangent of the largest element (shared among ties), and the step's tangent is
its own JVP, run outside the loop. A JVP is linear in the tangents, so JAX
transposes it for ``jax.grad``; the primal program (what runs when nothing is
differentiated) is unchanged.

**shard_map.** Inside ``jax.shard_map`` with ``check_vma=True`` the loop's
carry must have the same varying-axes type in and out; the carry is cast to
the union of the axes its inputs vary over (see `_vary`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32

# Leaves up to this many elements are reduced inside the loop of `_measure`;
# larger ones in the main program.
_SMALL_LEAF = 1 << 14


def accumulation_dtype(leaves: Sequence[jax.Array]) -> Any:
    """float64 when any leaf is float64 or complex128, else float32."""
    wide = any(jnp.finfo(_real_dtype(x.dtype)).bits > 32 for x in leaves)
    return jnp.float64 if wide else F32


def work_dtype(dtype: Any) -> Any:
    """The dtype a leaf is scaled in: the wider of float32 and ``dtype``
    (complex leaves keep a complex dtype of the same width)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype
    return dtype if jnp.finfo(dtype).bits > 32 else jnp.dtype(F32)


def _real_dtype(dtype: Any) -> Any:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype
    return dtype


def convert(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` in ``dtype``, with one ``lax`` op or none (cheap to trace, and
    this runs once per leaf)."""
    return x if x.dtype == dtype else lax.convert_element_type(x, dtype)


def _real_parts(x: jax.Array) -> list[jax.Array]:
    """A complex leaf as its real and imaginary parts; a real leaf as itself."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return [lax.real(x), lax.imag(x)]
    return [x]


def _reduce_sum(y: jax.Array) -> jax.Array:
    return lax.reduce(y, jnp.zeros([], y.dtype), lax.add, tuple(range(y.ndim)))


def _sumsq(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``sum(|x * scale|**2)`` in ``scale``'s dtype."""
    sums = []
    for part in _real_parts(x):
        y = convert(part, scale.dtype)
        y = lax.mul(y, lax.broadcast_in_dim(scale, y.shape, ()))
        sums.append(_reduce_sum(lax.mul(y, y)))
    return functools.reduce(lax.add, sums)


def _maxabs(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``max |x|`` in ``scale``'s dtype (0 for an empty leaf); NaN propagates."""
    if x.size == 0:
        return jnp.zeros([], scale.dtype)
    a = lax.abs(x)
    m = lax.reduce(a, jnp.zeros([], a.dtype), lax.max, tuple(range(a.ndim)))
    return convert(m, scale.dtype)


def _nan_probe(x: jax.Array, dtype: Any) -> jax.Array:
    """A scaled-down ``sum(x)``: NaN exactly when it must be (a NaN element).

    Scaled by ``2**-100`` so that huge finite values cannot overflow the sum
    into ``inf - inf``.
    """
    sums = [
        _reduce_sum(lax.mul(y, lax.full_like(y, 2.0**-100)))
        for y in (convert(part, dtype) for part in _real_parts(x))
    ]
    return functools.reduce(lax.add, sums)


def _rescaling(dtype: Any) -> tuple[float, float]:
    """The overflow fallback's scale and its inverse, both exact."""
    if jnp.dtype(dtype) == jnp.float64:
        return 2.0**-600, 2.0**600
    return 2.0**-80, 2.0**80


class _Statistic(NamedTuple):
    """How `_measure` computes one kind of statistic.

    ``reduce_leaf(x, scale)`` reduces one leaf at ``scale`` (in the
    accumulation dtype); ``combine(reductions)`` gives the sums (a total, or
    one per leaf); ``overflowed(first_sums)`` says whether the rescaled pass
    must run; ``statistic(first_sums, last_sums, rescaled, up)`` gives the
    statistic; ``tangent(leaves, tangents, stat)`` is its JVP; ``shape`` is
    the statistic's shape; ``reducers``, where given, replaces
    ``reduce_leaf`` by one reduction per leaf position (blocks that differ
    from leaf to leaf).
    """

    reduce_leaf: Callable[[jax.Array, jax.Array], Any]
    combine: Callable[[list[Any]], jax.Array]
    overflowed: Callable[[jax.Array], jax.Array]
    statistic: Callable[[jax.Array, jax.Array, jax.Array, float], jax.Array]
    tangent: Callable[[list[jax.Array], list[jax.Array], jax.Array], jax.Array]
    shape: tuple[int, ...]
    reducers: tuple[Callable[[jax.Array, jax.Array], Any], ...] | None = None

    def reduce(self, i: int, x: jax.Array, scale: jax.Array) -> Any:
        """Leaf ``i``'s reduction at ``scale``."""
        return (self.reducers[i] if self.reducers else self.reduce_leaf)(x, scale)


def _varying_axes(x: Any) -> frozenset:
    """The ``shard_map`` mesh axes that ``x`` varies over (empty outside)."""
    aval = jax.typeof(x) if hasattr(jax, "typeof") else None
    vma = getattr(aval, "vma", None)
    if vma is None:
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    return frozenset(vma or ())


def _vary(tree: Any, axes: frozenset) -> Any:
    """Casts every leaf of ``tree`` to vary over ``axes`` (those it does not yet)."""
    if not axes:
        return tree

    def cast(x):
        missing = tuple(sorted(axes - _varying_axes(x)))
        if not missing:
            return x
        if hasattr(lax, "pcast"):
            return lax.pcast(x, missing, to="varying")
        # jax < 0.8.2 has no pcast; its pvary was removed in 0.10.
        return lax.pvary(x, missing)  # pyright: ignore[reportAttributeAccessIssue]

    return jax.tree.map(cast, tree)


def _loop(leaves, spec: _Statistic, step, dtype, stat_axes: frozenset, step_axes: frozenset):
    """The primal computation of `_measure`: ``(stat, step(stat))``.

    Everything from the reductions of small leaves on runs inside one
    ``lax.while_loop`` (one trip, or two after an overflow), for compile
    time. With many small leaves XLA fuses the last stage of all their
    reductions into one large kernel; a ``lax.cond`` fallback would hold a
    second copy of it, and XLA:CPU's compile time grows faster than linearly
    with such kernels. And ``step``'s scalars, as outputs of the loop, are
    computed once rather than fused by XLA into each of the optimizer's
    per-leaf loops. Large leaves are reduced in the main program, where
    XLA:CPU splits a reduction across threads (inside a loop body it does
    not); their second pass is a ``lax.cond`` in the loop, whose reductions
    compile to the same kernels as the first.
    """
    down, up = _rescaling(dtype)
    one = jnp.ones([], dtype)
    big = [i for i, x in enumerate(leaves) if x.size > _SMALL_LEAF]
    big_first = [spec.reduce(i, leaves[i], one) for i in big]

    def sums_at(trip, scale):
        reductions = {
            i: spec.reduce(i, x, scale) for i, x in enumerate(leaves) if x.size <= _SMALL_LEAF
        }
        if big:
            again = lax.cond(
                trip > 0,
                lambda s: [spec.reduce(i, leaves[i], s) for i in big],
                lambda s: big_first,
                scale,
            )
            reductions.update(zip(big, again, strict=True))
        return spec.combine([reductions[i] for i in range(len(leaves))])

    sums_zeros, stat_zeros = _vary(
        (jnp.zeros(spec.shape, dtype), jnp.zeros(spec.shape, dtype)), stat_axes
    )
    step_zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, stat_zeros)
    )

    def keep_going(carry):
        trip, first, _, _ = carry
        return (trip == 0) | ((trip == 1) & spec.overflowed(first))

    def body(carry):
        trip, first, _, _ = carry
        sums = sums_at(trip, jnp.where(trip == 0, one, jnp.asarray(down, dtype)))
        first = jnp.where(trip == 0, sums, first)
        stat = spec.statistic(first, sums, trip > 0, up)
        first, stat = _vary((first, stat), stat_axes)
        return trip + 1, first, stat, _vary(step(stat), step_axes)

    init = (jnp.zeros([], jnp.int32), sums_zeros, stat_zeros, _vary(step_zeros, step_axes))
    _, _, stat, stepped = lax.while_loop(keep_going, body, init)
    return stat, stepped


def opaque_ints(values: Sequence[int], token: jax.Array) -> list[jax.Array]:
    """``values`` as int32 scalars whose values XLA cannot see at compile time.

    A slice ``x[a:b]`` with constant ``a`` fuses into its consumers with the
    offset written into the kernel, so the kernels of leaves that read
    different parts of one vector all differ (each costs XLA:CPU its own code
    generation). ``lax.dynamic_slice`` at one of these scalars fuses instead
    into a kernel that takes the offset as an operand: leaves of one shape
    share it. The scalars are the outputs of a ``lax.while_loop`` that makes
    one trip but whose condition reads ``token`` (any runtime array), so
    XLA can neither count its trips nor fold its outputs. The cost: one
    trivial loop per step.
    """
    if not values:
        return []
    probe = jnp.ravel(token)[:1].astype(F32)

    # Never true after the first trip (trip > 0 and trip < 0), but XLA cannot
    # prove it from the condition alone, which reads a runtime value.
    def keep_going(carry):
        trip = carry[0]
        return (trip == 0) | ((trip < 0) & jnp.all(probe > 0))

    def body(carry):
        return (carry[0] + 1, tuple(jnp.int32(v) for v in values))

    init = (jnp.zeros([], jnp.int32), tuple(jnp.zeros([], jnp.int32) for _ in values))
    return list(lax.while_loop(keep_going, body, init)[1])


def _axis_names(axis_name: Any) -> frozenset:
    if axis_name is None:
        return frozenset()
    return frozenset(axis_name if isinstance(axis_name, tuple | list) else (axis_name,))


def _measure(leaves, spec: _Statistic, step, axis_name):
    """Measures a statistic of ``leaves`` and runs ``step`` on it.

    Returns ``(stat, step(stat))``: ``step`` is the clipper's rule step and
    clip factor, run inside the statistic's loop (`_loop`). Differentiable
    in forward and reverse mode through a ``jax.custom_jvp`` (values that
    ``step`` closes over, such as traced hyper-parameters and the rule's
    state, are made explicit arguments so that they are differentiated too).
    """
    leaves = list(leaves)
    dtype = accumulation_dtype(leaves)
    # Inside shard_map: the statistic varies over the axes its leaves vary
    # over, less the axes it is reduced over; the step's outputs also over
    # those of the values the step closes over (the rule's state).
    leaf_axes = frozenset().union(*(_varying_axes(x) for x in leaves))
    stat_axes = leaf_axes - _axis_names(axis_name)
    stat_example = _vary(jnp.zeros(spec.shape, dtype), stat_axes)
    step_converted, consts = jax.closure_convert(step, stat_example)
    step_axes = stat_axes.union(*(_varying_axes(x) for x in jax.tree.leaves(consts)))

    @jax.custom_jvp
    def measured(leaves, consts):
        step_fn = lambda s: step_converted(s, *consts)  # noqa: E731
        return _loop(leaves, spec, step_fn, dtype, stat_axes, step_axes)

    @measured.defjvp
    def measured_jvp(primals, tangents):
        leaves, consts = primals
        leaf_tangents, const_tangents = tangents
        stat, stepped = measured(leaves, consts)
        stat_tangent = spec.tangent(leaves, leaf_tangents, stat)
        _, step_tangent = jax.jvp(
            lambda s, c: step_converted(s, *c), (stat, consts), (stat_tangent, const_tangents)
        )
        return (stat, stepped), (stat_tangent, step_tangent)

    return measured(leaves, list(consts))


def _add_all(values, dtype) -> jax.Array:
    return functools.reduce(lax.add, values, jnp.zeros([], dtype))


def _max_all(values, dtype) -> jax.Array:
    """Element-wise max over an iterable of arrays; NaN propagates."""
    return functools.reduce(jnp.maximum, values, jnp.zeros([], dtype))


def _psum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def _dot_real(x: jax.Array, t: jax.Array, inv: jax.Array, dtype) -> jax.Array:
    """``sum(Re(conj(x) * t)) * inv`` in ``dtype``, overflow-safe (``x`` is
    scaled by ``inv`` before the product)."""
    total = jnp.zeros([], dtype)
    for xp, tp in zip(_real_parts(x), _real_parts(t), strict=True):
        total = total + jnp.sum((xp.astype(dtype) * inv) * tp.astype(dtype))
    return total


def _inverse(norm: jax.Array) -> jax.Array:
    """``1 / norm``, and 0 where the norm is 0 or not finite (a zero or
    non-finite statistic gets a zero tangent rather than NaN)."""
    ok = (norm > 0) & jnp.isfinite(norm)
    return jnp.where(ok, 1.0 / jnp.where(ok, norm, 1.0), 0.0).astype(norm.dtype)


def global_norm(leaves: Sequence[jax.Array], axis_name=None, step=None):
    """The L2 norm of all leaves together, overflow-safe (accumulation dtype:
    see the module docstring).

    With ``axis_name`` the squared norms are summed over that mapped axis
    (``shard_map``/``pmap``), so every device gets the true global norm.
    Returns ``(norm, step(norm))`` (see `_measure`).
    """
    leaves = list(leaves)

    def statistic(first, last, rescaled, up):
        return jnp.where(rescaled, up * jnp.sqrt(last), jnp.sqrt(first))

    def total(reductions):
        return _psum(_add_all(reductions, reductions[0].dtype if reductions else F32), axis_name)

    def tangent(leaves, tangents, norm):
        inv = _inverse(norm)
        dots = [_dot_real(x, t, inv, norm.dtype) for x, t in zip(leaves, tangents, strict=True)]
        return _psum(_add_all(dots, norm.dtype), axis_name)

    # An infinite element stays infinite in the second pass too; a NaN sum is
    # not +inf, so it never triggers one and propagates.
    spec = _Statistic(_sumsq, total, jnp.isposinf, statistic, tangent, ())
    return _measure(leaves, spec, step or _nothing, axis_name)


def leaf_norms(leaves: Sequence[jax.Array], axis_name=None, step=None):
    """One L2 norm per leaf, ``(n_leaves,)``, overflow-safe.

    Returns ``(norms, step(norms))`` (see `_measure`).
    """
    leaves = list(leaves)
    if not leaves:
        norms = jnp.zeros([0], F32)
        return norms, (step or _nothing)(norms)

    def per_leaf(reductions):
        return _psum(jnp.stack(reductions), axis_name)

    def any_overflow(sums):
        return jnp.any(jnp.isposinf(sums))

    def statistic(first, last, rescaled, up):
        # Leaves whose sum of squares is finite keep their one-pass norm.
        return jnp.where(rescaled & jnp.isposinf(first), up * jnp.sqrt(last), jnp.sqrt(first))

    def tangent(leaves, tangents, norms):
        inv = _inverse(norms)
        dots = [
            _dot_real(x, t, inv[i], norms.dtype)
            for i, (x, t) in enumerate(zip(leaves, tangents, strict=True))
        ]
        return _psum(jnp.stack(dots), axis_name)

    spec = _Statistic(_sumsq, per_leaf, any_overflow, statistic, tangent, (len(leaves),))
    return _measure(leaves, spec, step or _nothing, axis_name)


def _nothing(stat):
    del stat
    return ()


def _may_span_devices() -> bool:
    """Whether this process has more than one device, so that a reduction
    under ``jax.jit`` may be split across devices (GSPMD sharding)."""
    return jax.device_count() > 1 or jax.device_count("cpu") > 1


def global_max_abs(leaves: Sequence[jax.Array], axis_name=None, step=None):
    """``max |x|`` over all leaves; non-finite if any element is NaN or infinite.

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

    Returns ``(max, step(max))``, computed in the same kind of loop as the
    norms (see `_measure`); a max cannot overflow, so the loop makes a
    second, identical trip only on a NaN step, where it changes nothing.
    """
    leaves = list(leaves)

    def reduce_leaf(x, scale):
        return _maxabs(x, scale), (_nan_probe(x, scale.dtype) if probe else None)

    def combine(reductions):
        dtype = reductions[0][0].dtype if reductions else F32
        m = _max_all((r[0] for r in reductions), dtype)
        if axis_name is not None:
            return lax.pmax(jnp.where(jnp.isnan(m), jnp.asarray(jnp.inf, dtype), m), axis_name)
        if not probe:
            return m
        nan_probe = _add_all((r[1] for r in reductions), dtype)
        return m + jnp.where(jnp.isnan(nan_probe), jnp.asarray(jnp.nan, dtype), 0.0)

    def statistic(first, last, rescaled, up):
        del first, rescaled, up
        return last

    def tangent(leaves, tangents, m):
        # The tangent of the largest |x|, averaged over ties (as jnp.max's).
        total = jnp.zeros([], m.dtype)
        ties = jnp.zeros([], m.dtype)
        for x, t in zip(leaves, tangents, strict=True):
            if x.size == 0:
                continue
            a = jnp.abs(x).astype(m.dtype)
            at_max = (a == m) & (a > 0)
            inv = jnp.where(at_max, 1.0 / jnp.where(at_max, a, 1.0), 0.0)
            d_abs = sum(
                xp.astype(m.dtype) * tp.astype(m.dtype)
                for xp, tp in zip(_real_parts(x), _real_parts(t), strict=True)
            )
            total = total + jnp.sum(jnp.where(at_max, d_abs * inv, 0.0))
            ties = ties + jnp.sum(at_max.astype(m.dtype))
        total, ties = _psum(total, axis_name), _psum(ties, axis_name)
        return jnp.where(ties > 0, total / jnp.maximum(ties, 1.0), 0.0).astype(m.dtype)

    probe = axis_name is None and _may_span_devices()
    spec = _Statistic(reduce_leaf, combine, jnp.isnan, statistic, tangent, ())
    return _measure(leaves, spec, step or _nothing, axis_name)


def _sumsq_over(axes: tuple[int, ...]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``sum(|x * scale|**2)`` over ``axes`` of ``x``, in ``scale``'s dtype:
    one entry per block, shaped like the axes that are kept."""

    def reduce_leaf(x: jax.Array, scale: jax.Array) -> jax.Array:
        sums = []
        for part in _real_parts(x):
            y = convert(part, scale.dtype)
            y = lax.mul(y, lax.broadcast_in_dim(scale, y.shape, ()))
            sums.append(lax.reduce(lax.mul(y, y), jnp.zeros([], y.dtype), lax.add, axes))
        return functools.reduce(lax.add, sums)

    return reduce_leaf


class Layout(NamedTuple):
    """Which elements of which leaves each block of a statistic covers.

    Leaf ``i`` is reduced over ``axes[i]`` (its other axes, in order, index
    its blocks) into group ``groups[i]``; leaves of one group add up (their
    kept shapes are equal). The statistic is the concatenation, group by
    group (0, 1, ...), of each group's blocks, flattened in C order:
    ``(sum of the groups' block counts,)``. One group over every leaf
    reduced whole is the global norm; one group per leaf, the leaf norms;
    one group per leaf with kept axes, unit norms.
    """

    axes: tuple[tuple[int, ...], ...]
    groups: tuple[int, ...]
    kept_shapes: tuple[tuple[int, ...], ...]  # one per group

    @property
    def offsets(self) -> list[int]:
        """Where each group's blocks start in the statistic."""
        out, at = [], 0
        for shape in self.kept_shapes:
            out.append(at)
            at += math.prod(shape)
        return out

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.kept_shapes)


def kept_axes(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in axes)


def block_norms(leaves: Sequence[jax.Array], layout: Layout, axis_name=None, step=None):
    """L2 norms of the blocks that ``layout`` describes, ``(layout.size,)``,
    overflow-safe, in one read of the leaves.

    With ``axis_name`` each block's sum of squares is summed over that mapped
    axis: the blocks must be split across devices along their reduced axes
    (every device holds a part of every block). Returns
    ``(norms, step(norms))`` (see `_measure`).
    """
    leaves = list(leaves)
    offsets = layout.offsets

    def assemble(per_leaf: list[jax.Array], dtype) -> jax.Array:
        by_group: dict[int, jax.Array] = {}
        for group, r in zip(layout.groups, per_leaf, strict=True):
            by_group[group] = r if group not in by_group else lax.add(by_group[group], r)
        parts = [
            jnp.ravel(by_group[g]) if g in by_group else jnp.zeros(math.prod(s), dtype)
            for g, s in enumerate(layout.kept_shapes)
        ]
        out = jnp.concatenate(parts) if parts else jnp.zeros([0], dtype)
        return _psum(out, axis_name)

    reducers = [_sumsq_over(a) for a in layout.axes]
    if not leaves:
        norms = jnp.zeros([layout.size], F32)
        return norms, (step or _nothing)(norms)

    def combine(reductions):
        dtype = reductions[0].dtype
        return assemble(reductions, dtype)

    def any_overflow(sums):
        return jnp.any(jnp.isposinf(sums))

    def statistic(first, last, rescaled, up):
        return jnp.where(rescaled & jnp.isposinf(first), up * jnp.sqrt(last), jnp.sqrt(first))

    def tangent(leaves, tangents, norms):
        inv = _inverse(norms)
        dots = []
        for i, (x, t) in enumerate(zip(leaves, tangents, strict=True)):
            axes, group = layout.axes[i], layout.groups[i]
            shape = layout.kept_shapes[group]
            start = offsets[group]
            inv_b = jnp.reshape(inv[start : start + math.prod(shape)], shape)
            inv_x = lax.broadcast_in_dim(inv_b, x.shape, kept_axes(x.ndim, axes))
            total = jnp.zeros(shape, norms.dtype)
            for xp, tp in zip(_real_parts(x), _real_parts(t), strict=True):
                prod = (xp.astype(norms.dtype) * inv_x) * tp.astype(norms.dtype)
                total = total + jnp.sum(prod, axis=axes)
            dots.append(total)
        return assemble(dots, norms.dtype)

    spec = _Statistic(
        reducers[0], combine, any_overflow, statistic, tangent, (layout.size,), tuple(reducers)
    )
    return _measure(leaves, spec, step or _nothing, axis_name)
