"""Structural guard: a clip chained before Adam materialises no gradient-sized array.

XLA fuses ``g * scale`` (``scale`` a scalar, or one per leaf) into the loops
that read the clipped gradient next, so ``chain(clipper, adam)`` compiles to
the same number of gradient-sized buffers as Adam alone: the clip costs one
read of the gradients and no write. A clip written as a per-element
``g / norm * threshold`` (``optax.clip_by_global_norm``) writes a new gradient
tree first, which shows up here as one extra gradient-sized output per leaf.

Two checks, both on the compiled program (no timing, so they cannot be
flaky): in the entry computation, the code that runs on every step, the
instructions whose result holds an array as large as a gradient leaf are
counted; and XLA's own buffer assignment (``memory_analysis()``) must give
the program no temporary as large as a leaf anywhere, loop bodies (the norm's
overflow fallback is a ``while`` loop that makes a second trip only after an
overflow) and branches included.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import optax
import pytest
from _cases import make, names
from _standard import adam

LEAF_ELEMENTS = 1 << 16
SHAPES = {"w1": (256, 256), "b": (LEAF_ELEMENTS,), "w2": (16, 64, 64)}
N_ELEMENTS = sum(math.prod(s) for s in SHAPES.values())
# Instructions that create no new buffer. A ``while`` result aliases its
# operand tuple (loop-invariant gradients pass through it); a copy that XLA
# would need shows up as a ``copy`` instruction, which is counted.
NOT_BUFFERS = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant", "while"}
_ARRAY = re.compile(r"\b(?:pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")


def _entry_lines(hlo: str) -> list[str]:
    lines = hlo.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("}"))
    return lines[start + 1 : end]


def large_buffers(hlo: str, min_elements: int = LEAF_ELEMENTS) -> list[str]:
    """The entry instructions that write an array of ``>= min_elements`` elements."""
    found = []
    for line in _entry_lines(hlo):
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        result_type, opcode = match.groups()
        if opcode in NOT_BUFFERS:
            continue
        for dims in _ARRAY.findall(result_type):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            if size >= min_elements:
                found.append(line.strip()[:160])
    return found


def compiled_step(clipper, shapes=SHAPES):
    tx = adam(1e-3) if clipper is None else optax.chain(clipper, adam(1e-3))
    params = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
    grads = {k: jnp.ones(s, jnp.float32) for k, s in shapes.items()}

    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    return jitted.lower(params, tx.init(params), grads).compile()


def compiled_hlo(clipper, shapes=SHAPES) -> str:
    return compiled_step(clipper, shapes).as_text()


# The registry's rows tagged "hlo", and the float threshold that propagates
# non-finite gradients (no skip branch).
CASES = {name: {} for name in names("hlo")}
CASES["global-float-propagate"] = {"nonfinite": "propagate"}


def _build(name):
    kwargs = CASES[name]
    return make(name.removesuffix("-propagate"), **kwargs)


@pytest.fixture(scope="module")
def adam_buffers():
    return large_buffers(compiled_hlo(None))


def test_adam_alone_writes_three_buffers_per_leaf(adam_buffers):
    # mu, nu and the new parameters: the guard's baseline is what we expect.
    assert len(adam_buffers) == 3 * len(SHAPES), adam_buffers


@pytest.mark.parametrize("name", sorted(CASES))
def test_clip_adds_no_gradient_sized_buffer(name, adam_buffers):
    compiled = compiled_step(_build(name))
    found = large_buffers(compiled.as_text())
    assert len(found) == len(adam_buffers), "\n".join(found)
    # Nothing leaf-sized in the temporaries of the whole program either.
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * LEAF_ELEMENTS


def test_guard_catches_optax_clip_by_global_norm(adam_buffers):
    # optax writes the clipped gradient tree out before Adam reads it: one
    # extra gradient-sized buffer per leaf. The guard must see it.
    compiled = compiled_step(optax.clip_by_global_norm(1.0))
    found = large_buffers(compiled.as_text())
    assert len(found) == len(adam_buffers) + len(SHAPES), "\n".join(found)
    # ... and XLA's buffer assignment holds a whole gradient tree in temporaries.
    assert compiled.memory_analysis().temp_size_in_bytes >= 4 * N_ELEMENTS


# --------------------------------------------------------------------------- compile size
#
# XLA:CPU's compile time grows with the number of reductions in a program and
# with the number of *distinct* kernels (identical fusions are compiled once).
# These structural checks pin the two changes that brought adaclip's compile
# time near optax's (see docs/performance.md): the overflow fallback reuses
# the one copy of the per-leaf reductions, and per-leaf factors are not read
# with slices (a slice's offset makes every leaf's kernel a different one).

_DEF = re.compile(r"^\s*(?:ROOT\s+)?(%\S+)\s*=\s*(\S+)\s+([a-z][\w\-]*)\((.*)$")


def _definitions(hlo: str) -> list[tuple[str, str, str, list[str]]]:
    """``(name, type, opcode, operand names)`` of every instruction, every computation."""
    out = []
    for line in hlo.splitlines():
        match = _DEF.match(line)
        if match:
            name, typ, opcode, rest = match.groups()
            out.append((name, typ, opcode, re.findall(r"%[\w.\-]+", rest.split(")")[0])))
    return out


# Small leaves (up to 2**14 elements) are the ones XLA fuses into one large
# kernel; their reductions must exist once. (Large leaves are reduced in the
# main program and again, with the same kernels, in the overflow fallback.)
SMALL_SHAPES = {"w1": (64, 64), "b": (4096,), "w2": (4, 32, 32)}


def leaf_reductions(hlo: str, shapes=SMALL_SHAPES) -> int:
    """The reductions (anywhere in the program) that read a whole gradient leaf."""
    defs = _definitions(hlo)
    types = {name: typ for name, typ, _, _ in defs}
    leaf_types = {f"f32[{','.join(map(str, s))}]" for s in shapes.values()}
    count = 0
    for _, _, opcode, operands in defs:
        if opcode in ("reduce", "reduce-window") and operands:
            typ = types.get(operands[0], "")
            if typ.split("{")[0] in leaf_types:
                count += 1
    return count


@pytest.mark.parametrize(
    "name", ["global-float", "global-ema", "leaf-float", "leaf-ema", "value-float", "autoclip"]
)
def test_one_reduction_per_leaf(name):
    # The overflow fallback is a second trip through the same reductions, not
    # a second copy of them; value clipping on one device reduces the max only.
    # (The device count is read here, not from adaclip: with one device the
    # probe must be left out.)
    hlo = compiled_hlo(make(name), SMALL_SHAPES)
    per_leaf = 1
    several = len(jax.devices()) > 1 or len(jax.devices("cpu")) > 1
    if name.startswith("value") and several:
        per_leaf = 2  # the max and, with several devices, the NaN probe
    found = leaf_reductions(hlo)
    assert found == per_leaf * len(SMALL_SHAPES), (found, jax.device_count(), hlo)


def test_reduction_count_catches_a_second_copy():
    # The counter sees a clip whose fallback holds its own reductions.
    def two_copies(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        sumsq = sum(jnp.sum(g * g) for g in leaves)
        norm = jax.lax.cond(
            jnp.isinf(sumsq),
            lambda: jnp.sqrt(sum(jnp.sum((g * 2.0**-80) ** 2) for g in leaves)) * 2.0**80,
            lambda: jnp.sqrt(sumsq),
        )
        return jax.tree.map(lambda g: g * jnp.minimum(1.0, 1.0 / norm), updates), state

    tx = optax.GradientTransformation(lambda p: optax.EmptyState(), two_copies)
    hlo = compiled_hlo(tx, SMALL_SHAPES)
    assert leaf_reductions(hlo) == 2 * len(SMALL_SHAPES)


@pytest.mark.parametrize("rule", ["float", "ema"])
def test_per_leaf_factors_are_not_slices(rule):
    hlo = compiled_hlo(make(f"leaf-{rule}"))
    slices = [d for d in _definitions(hlo) if d[2] == "slice"]
    assert not slices, slices


# Unit-wise clippers (AGC): each leaf reads its units from the factor vector.
# A constant slice writes the leaf's offset into every kernel it fuses into
# (the optimizer's loops), so no two leaves share a kernel and XLA:CPU
# compiles each one (AGC took 3-5x optax.adaptive_grad_clip's compile time);
# a dynamic slice at an offset XLA cannot fold takes it as an operand.
SAME_SHAPES = {f"w{i}": (64, 256) for i in range(4)} | {"b": (256,)}


def _computations(hlo: str) -> dict[str, str]:
    """Each computation's body by name (``%fused_computation.3`` -> its text)."""
    out, name, body = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?(%\S+)\s.*\{$", line)
        if head:
            name, body = head.group(1), []
        elif line.startswith("}") and name:
            out[name] = "\n".join(body)
            name = None
        elif name:
            body.append(line)
    return out


def sliced_leaf_kernels(hlo: str, min_elements: int) -> list[str]:
    """Fusions writing ``>= min_elements`` elements whose kernel holds a slice."""
    comps = _computations(hlo)
    found = []
    for name, typ, opcode, _ in _definitions(hlo):
        if opcode != "fusion":
            continue
        size = max(
            (math.prod(int(d) for d in dims.split(",") if d) for dims in _ARRAY.findall(typ)),
            default=0,
        )
        line = next(line for line in hlo.splitlines() if f"{name} = " in line)
        called = re.search(r"calls=(%[\w.\-]+)", line)
        if size >= min_elements and called and " slice(" in comps.get(called.group(1), ""):
            found.append(name)
    return found


@pytest.mark.parametrize("name", ["agc", "unit-ema"])
def test_unit_factors_are_not_constant_slices(name):
    hlo = compiled_hlo(make(name), SAME_SHAPES)
    assert not sliced_leaf_kernels(hlo, 64 * 256), hlo


def test_sliced_kernel_check_catches_constant_slices():
    # The check sees a per-unit scale read with constant slices.
    def sliced(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        sums = [jnp.sum(g * g, axis=0).reshape(-1) for g in leaves]  # a vector's: one unit
        scale = jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.sqrt(jnp.concatenate(sums)), 1e-6))
        # (Else XLA reads each leaf's slice of the concatenation from its part.)
        scale = jax.lax.optimization_barrier(scale)
        out, at = [], 0
        for g, s in zip(leaves, sums, strict=True):
            part = jax.lax.slice(scale, (at,), (at + s.size,))
            out.append(g * (part[None, :] if g.ndim == 2 else part[0]))
            at += s.size
        return jax.tree.unflatten(treedef, out), state

    tx = optax.GradientTransformation(lambda p: optax.EmptyState(), sliced)
    assert sliced_leaf_kernels(compiled_hlo(tx, SAME_SHAPES), 64 * 256)
