"""Runs every transformation on 8 simulated CPU devices; compares with 1 device.

Run by tests/test_multidevice.py in a subprocess, so that the device count of
the other tests stays 1: ``python _multidevice_worker.py OUT.json [NAME ...]``.
For each transformation and each way of spreading the work, it writes
``{"ok": bool, "error": str, "max_err": float}`` to ``OUT.json``.

Scenarios (each against the same transformation on one device, over STEPS
steps of gradients with spikes, a level shift, a NaN step, an Inf step and an
overflowing step with one element at 1e20 on a single shard). Each runs the
steps as a ``lax.scan`` over chunks of CHUNK steps, one dispatch per chunk,
blocking on each chunk's result (XLA:CPU's collectives time out when many
programs with collectives are queued back to back):

- ``jit_fsdp``: ``jax.jit`` of ``tx.update`` on gradients whose every leaf is
  sharded over the 8 devices (``NamedSharding``, FSDP style), no
  ``axis_name``. Also checks that the state stays fully replicated and the
  updates keep the gradients' sharding.
- ``shard_map_fsdp``: ``jax.shard_map``, each device holding one slice of every
  leaf, ``axis_name="d"``; the state goes out with ``P()`` (shard_map's
  replication check proves it is the same on every device) and every device's
  own copy of the metrics is compared too.
- ``shard_map_dp``: data parallel: each device holds a replica of the
  parameters and its own micro-batch gradient, averaged with ``lax.pmean``
  before a clipper with no ``axis_name``; reference: the mean gradient.
- ``pmap_fsdp``: ``jax.pmap`` with ``axis_name="d"``, each device holding one
  slice of every leaf and its own copy of the state; all copies must agree.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _cases import make, names  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adaclip  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)

N_DEV = 8
STEPS = int(os.environ.get("ADACLIP_MD_STEPS", "200"))
CHUNK = 50
RTOL = 1e-6
SHAPES = {"b": (8,), "v": {"k": (16, 3)}, "w": (8, 6)}
# Micro-batch weights with mean exactly 1 and few mantissa bits: the
# data-parallel average of the per-device gradients is then exact, so the
# data-parallel run has an exact single-device reference.
DP_WEIGHTS = np.array([0.5, 1.5, 0.75, 1.25, 1.0, 1.0, 0.25, 1.75], np.float32)
_IS_SHAPE = lambda x: isinstance(x, tuple)  # noqa: E731


def _round_mantissa(x, bits=12):
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e).astype(np.float32)


def gradients(steps, seed=0):
    """Stacked gradients ``(steps, *shape)`` with every kind of event."""
    rng = np.random.default_rng(seed)
    shapes = jax.tree.leaves(SHAPES, is_leaf=_IS_SHAPE)
    out = []
    for shape in shapes:
        g = rng.standard_normal((steps, *shape)).astype(np.float32)
        g *= rng.uniform(0.5, 1.5, (steps,) + (1,) * len(shape)).astype(np.float32)
        g[::17] *= 30.0  # spikes
        g[steps // 2 :] *= 3.0  # level shift
        out.append(_round_mantissa(g))
    w = out[-1]  # the leaf "w": each event on one element of the last shard only
    w[min(50, steps - 1), -1, 0] = np.nan
    w[min(90, steps - 1), -1, 1] = np.inf
    w[min(150, steps - 1), -1, 2] = 1e20  # the sum of squares overflows float32
    return jax.tree.unflatten(jax.tree.structure(SHAPES, is_leaf=_IS_SHAPE), out)


def params():
    return jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), SHAPES, is_leaf=_IS_SHAPE)


def chunks(tree):
    for t in range(0, STEPS, CHUNK):
        yield jax.tree.map(lambda x, t=t: x[t : t + CHUNK], tree)


def scan_steps(tx):
    """``(state, grads[T]) -> (state, (updates[T], metrics[T]))``."""

    def run(state, grads):
        def body(s, g):
            u, s = tx.update(g, s)
            return s, (u, adaclip.metrics(s))

        return jax.lax.scan(body, state, grads)

    return run


def collect(outs):
    """Concatenates the per-chunk ``(updates, metrics)`` on the step axis."""
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *outs)


def reference(name, grads):
    tx = make(name)
    run = jax.jit(scan_steps(tx))
    state, outs = tx.init(params()), []
    for g in chunks(grads):
        state, out = run(state, g)
        outs.append(out)
    return collect(outs), jax.tree.map(np.asarray, state)


def close(a, b, what):
    """Max relative error of ``a`` against ``b``, arrays ``(steps, ...)``.

    Raises beyond RTOL; each step's absolute tolerance is RTOL times that
    step's largest finite magnitude. NaN/Inf must match exactly.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == bool or b.size == 0:
        if not np.array_equal(a, b):
            bad = np.argwhere(a != b)[:3]
            raise AssertionError(f"{what} differs at {bad.tolist()}")
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    same_special = np.array_equal(~np.isfinite(a), ~np.isfinite(b)) and np.array_equal(
        a[~np.isfinite(a)], b[~np.isfinite(b)], equal_nan=True
    )
    if not same_special:
        raise AssertionError(f"{what}: NaN/Inf entries differ")
    fin = np.where(np.isfinite(b), b, 0.0)
    a = np.where(np.isfinite(a), a, 0.0)
    axes = tuple(range(1, b.ndim))
    scale = np.max(np.abs(fin), axis=axes, keepdims=True) if axes else np.abs(fin)
    diff = np.abs(a - fin)
    bad = diff > RTOL * np.abs(fin) + RTOL * scale
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what} at index {i}: {a[i]!r} != {fin[i]!r}")
    big = np.abs(fin) > RTOL * scale
    return float(np.max(diff[big] / np.abs(fin[big]), initial=0.0))


def compare(ref, got):
    ((ref_ups, ref_mets), ref_state), ((ups, mets), state) = ref, got
    err = 0.0
    for a, b in zip(jax.tree.leaves(ups), jax.tree.leaves(ref_ups), strict=True):
        err = max(err, close(a, b, "updates (step, ...)"))
    for k in ref_mets:
        err = max(err, close(mets[k], ref_mets[k], f"metric {k} (step, ...)"))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        err = max(err, close(np.asarray(a)[None], np.asarray(b)[None], "final state"))
    return err


def run_jit_fsdp(name, grads, mesh):
    tx = make(name)
    leaf_sharding = NamedSharding(mesh, P("d"))
    p = jax.device_put(params(), leaf_sharding)
    state = jax.jit(tx.init)(p)
    run = jax.jit(scan_steps(tx))
    outs = []
    for g in chunks(grads):
        g = jax.device_put(g, NamedSharding(mesh, P(None, "d")))
        state, (u, m) = run(state, g)
        jax.block_until_ready((state, u, m))
        for leaf, ref in zip(jax.tree.leaves(u), jax.tree.leaves(g), strict=True):
            if not leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim):
                raise AssertionError(f"update sharding {leaf.sharding} != {ref.sharding}")
        for leaf in jax.tree.leaves(state):
            if not leaf.sharding.is_fully_replicated:
                raise AssertionError(f"state leaf not replicated: {leaf.sharding}")
        outs.append((u, m))
    return collect(outs), jax.tree.map(np.asarray, state)


def _check_copies(per_device):
    """Every device reached the same statistics: the copies are bit-identical."""
    out = {}
    for k, v in per_device.items():
        v = np.asarray(v)
        for i in range(1, N_DEV):
            if not np.array_equal(v[0], v[i], equal_nan=True):
                raise AssertionError(f"device {i} disagrees with device 0 on {k}")
        out[k] = v[0]
    return out


def _shard_map_run(tx, mesh, grads_spec, updates_spec, pre=lambda g: g):
    def run(state, grads):
        state, (u, m) = scan_steps(tx)(state, pre(grads))
        # A leading axis of 1 per device: out_specs P("d") gathers every copy.
        return state, u, jax.tree.map(lambda x: x[None], m)

    # The state goes out with P(): shard_map's replication (vma) check proves
    # at trace time that it does not vary across devices.
    return jax.jit(
        jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(P(), grads_spec),
            out_specs=(P(), updates_spec, P("d")),
        )
    )


def _run_chunks(f, state, batches):
    outs = []
    for g in batches:
        state, u, per_device = f(state, g)
        jax.block_until_ready((state, u, per_device))
        outs.append((u, _check_copies(per_device)))
    return collect(outs), jax.tree.map(np.asarray, state)


def run_shard_map_fsdp(name, grads, mesh):
    tx = make(name, axis_name="d")
    f = _shard_map_run(tx, mesh, P(None, "d"), P(None, "d"))
    return _run_chunks(f, tx.init(params()), chunks(grads))


def run_shard_map_dp(name, grads, mesh):
    tx = make(name)  # the averaged gradient is whole on every device: no axis_name
    # Device i's micro-batch gradient: DP_WEIGHTS[i] * g, stacked on axis 1.
    per_device = jax.tree.map(
        lambda x: x[:, None] * DP_WEIGHTS.reshape(N_DEV, *[1] * (x.ndim - 1)), grads
    )

    def pre(g):
        return jax.tree.map(lambda x: lax.pmean(x[:, 0], "d"), g)  # all-reduce

    f = _shard_map_run(tx, mesh, P(None, "d"), P(), pre)
    return _run_chunks(f, tx.init(params()), chunks(per_device))


def run_pmap_fsdp(name, grads):
    tx = make(name, axis_name="d")
    state = tx.init(params())
    states = jax.tree.map(lambda x: jnp.stack([x] * N_DEV), state)
    f = jax.pmap(scan_steps(tx), axis_name="d")
    outs = []
    for g in chunks(grads):
        # (T, n, ...) -> (devices, T, n / devices, ...)
        g = jax.tree.map(
            lambda x: np.moveaxis(x.reshape(x.shape[0], N_DEV, -1, *x.shape[2:]), 1, 0), g
        )
        states, (u, m) = f(states, g)
        jax.block_until_ready((states, u, m))
        u = jax.tree.map(lambda x: np.moveaxis(np.asarray(x), 0, 1), u)
        u = jax.tree.map(lambda x: x.reshape(x.shape[0], -1, *x.shape[3:]), u)
        outs.append((u, _check_copies(m)))
    _check_copies({f"state leaf {i}": x for i, x in enumerate(jax.tree.leaves(states))})
    return collect(outs), jax.tree.map(lambda x: np.asarray(x)[0], states)


SCENARIOS = ("jit_fsdp", "shard_map_fsdp", "shard_map_dp", "pmap_fsdp")


def main():
    out_path = sys.argv[1]
    wanted = sys.argv[2:] or names("multidevice")
    assert jax.device_count() == N_DEV, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    grads = gradients(STEPS)
    results = {}
    for name in wanted:
        results[name] = {}
        try:
            ref = reference(name, grads)
        except Exception:  # noqa: BLE001
            err = traceback.format_exc()
            results[name] = {sc: {"ok": False, "error": err, "max_err": None} for sc in SCENARIOS}
            continue
        runs = {
            "jit_fsdp": lambda n=name: run_jit_fsdp(n, grads, mesh),
            "shard_map_fsdp": lambda n=name: run_shard_map_fsdp(n, grads, mesh),
            "shard_map_dp": lambda n=name: run_shard_map_dp(n, grads, mesh),
            "pmap_fsdp": lambda n=name: run_pmap_fsdp(n, grads),
        }
        for sc, fn in runs.items():
            try:
                results[name][sc] = {"ok": True, "error": "", "max_err": compare(ref, fn())}
            except Exception:  # noqa: BLE001
                err = traceback.format_exc()
                results[name][sc] = {"ok": False, "error": err, "max_err": None}
        print(name, {k: v["max_err"] for k, v in results[name].items()}, flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
