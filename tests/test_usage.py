"""The train steps users write, with every transformation of the shared registry.

Each test writes one step the way the optax, Flax (Linen and NNX) and
Equinox docs do (donated state, ``jax.grad`` through ``update``, float64,
per-device ``jax.shard_map``, ``optax.MultiSteps``, ``optax.inject_hyperparams``)
and really runs it for a few steps on a tiny linear model.

To keep the module fast, each test runs *all* the transformations of
the rows of ``tests/_cases.py`` tagged ``contract`` at once: the model is one small linear
layer per transformation and the optimizer is ``optax.partition`` of one
``chain(transformation, sgd)`` per layer, so a step is one compiled program.
The layers never interact, so each one is checked on its own against the
reference: the same clipper stepped by a plain, undonated ``jax.jit`` of
``update`` on the gradients of the same loss, the SGD step done in NumPy.
Global fixed clipping is checked against ``optax.clip_by_global_norm`` too.
"""

import functools
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _cases import make, names
from _standard import multi_steps
from flax import nnx
from flax.training import train_state

import adaclip

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
NAMES = tuple(names("contract"))
STEPS = 3
LR = 0.1
N_IN, N_OUT, BATCH = 4, 3, 8
RTOL = 1e-5


# ----------------------------------------------------------------------------
# The problem: one linear layer per transformation, the same for all.


def _data(step, dtype=np.float32):
    """Batch ``step``: large targets, so the norms are well above the thresholds."""
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((BATCH, N_IN)).astype(dtype)
    y = (5.0 * rng.standard_normal((BATCH, N_OUT))).astype(dtype)
    if step == 1:
        y *= 10.0  # a spike
    return x, y


def _init_layer(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {
        "bias": np.zeros(N_OUT, dtype),
        "kernel": (0.3 * rng.standard_normal((N_IN, N_OUT))).astype(dtype),
    }


def _init_params(dtype=np.float32):
    """``{name: {"bias", "kernel"}}``, the canonical layout (Linen's)."""
    return {name: _init_layer(dtype) for name in NAMES}


def _layer_loss(kernel, bias, x, y):
    return jnp.mean(jnp.square(x @ kernel + bias[None] - y))


def _loss(params, x, y):
    return sum(_layer_loss(p["kernel"], p["bias"], x, y) for p in params.values())


def _label(path):
    """The transformation a leaf belongs to: the first key on its path in NAMES."""
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", None))
        if key in NAMES:
            return key
    raise AssertionError(f"no transformation name in {path}")


def _labels(tree):
    return jax.tree_util.tree_map_with_path(lambda path, _: _label(path), tree)


def _bundle(inner=lambda: optax.sgd(LR)):
    """One ``chain(transformation, inner)`` per layer, as one optimizer."""
    return optax.partition({n: optax.chain(make(n), inner()) for n in NAMES}, _labels)


# ----------------------------------------------------------------------------
# The reference: every clipper stepped by a plain jitted ``update``.


@functools.cache
def _clip_update():
    clippers = optax.partition({n: make(n) for n in NAMES}, _labels)
    return clippers, jax.jit(clippers.update)


_grad = jax.jit(jax.grad(_loss))


def _reference(grads_per_step, lrs, params=None):
    """Params after each step: ``p -= lr_t * clip_t(g_t(p))`` in NumPy.

    ``grads_per_step(t, params)`` gives the gradient tree of step t.
    """
    clippers, update = _clip_update()
    params = _init_params() if params is None else params
    state = clippers.init(params)
    history = []
    for t, lr in enumerate(lrs):
        grads = grads_per_step(t, params)
        clipped, state = update(grads, state, params)
        params = jax.tree.map(
            lambda p, u, lr=lr: np.asarray(p) - lr * np.asarray(u), params, clipped
        )
        history.append(params)
    return history


@functools.cache
def _plain_reference():
    return _reference(lambda t, p: _grad(p, *_data(t)), [LR] * STEPS)


def _assert_matches(got, want, *, rtol=RTOL, what="params"):
    """Layer by layer, so a failure names the transformation."""
    bad = []
    for name in NAMES:
        for leaf in ("bias", "kernel"):
            g, w = np.asarray(got[name][leaf]), np.asarray(want[name][leaf])
            if g.shape != w.shape or not np.allclose(g, w, rtol=rtol, atol=1e-6):
                bad.append(f"{name}/{leaf}: max |diff| {np.max(np.abs(g - w)):.3g}")
    assert not bad, f"{what} differ from the reference for:\n" + "\n".join(bad)


def _assert_trained(losses, params):
    """The loss is finite and every layer moved (no step silently zeroed)."""
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)), losses
    init = _init_params()
    frozen = [
        n for n in NAMES if np.array_equal(np.asarray(params[n]["kernel"]), init[n]["kernel"])
    ]
    assert not frozen, f"params did not change for {frozen}"


def test_reference_agrees_with_optax_for_fixed_global_clipping():
    """The reference itself, against optax's clip (an independent implementation)."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(LR))
    params = _init_layer()
    state = tx.init(params)
    for t in range(STEPS):
        x, y = _data(t)
        grads = jax.grad(lambda p, x=x, y=y: _layer_loss(p["kernel"], p["bias"], x, y))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    final = _plain_reference()[-1]
    for name in ("global-float", "global-fixed"):
        for leaf in ("bias", "kernel"):
            np.testing.assert_allclose(final[name][leaf], params[leaf], rtol=RTOL, atol=1e-6)


# ----------------------------------------------------------------------------
# optax's documented loop, with donation.


def test_optax_loop_with_donation():
    tx = _bundle()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(jnp.asarray, _init_params())
    opt_state = tx.init(params)
    losses = []
    for t in range(STEPS):
        params, opt_state, loss = step(params, opt_state, *_data(t))
        losses.append(loss)
    _assert_trained(losses, params)
    _assert_matches(params, _plain_reference()[-1])


# ----------------------------------------------------------------------------
# Flax Linen: a TrainState step with donation.


class _Layers(nn.Module):
    @nn.compact
    def __call__(self, x):
        return {n: nn.Dense(N_OUT, name=n)(x) for n in NAMES}


def test_flax_linen_train_state_with_donation():
    model = _Layers()
    variables = model.init(jax.random.key(0), jnp.zeros((1, N_IN)))
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(_init_params())
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=jax.tree.map(jnp.asarray, _init_params()), tx=_bundle()
    )

    @functools.partial(jax.jit, donate_argnums=(0,))
    def train_step(state, x, y):
        def loss_fn(params):
            out = state.apply_fn({"params": params}, x)
            return sum(jnp.mean(jnp.square(o - y)) for o in out.values())

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for t in range(STEPS):
        state, loss = train_step(state, *_data(t))
        losses.append(loss)
    assert int(state.step) == STEPS
    _assert_trained(losses, state.params)
    _assert_matches(state.params, _plain_reference()[-1])


# ----------------------------------------------------------------------------
# Flax NNX: nnx.Optimizer under nnx.jit, with donation.


class _NnxLayers(nnx.Module):
    def __init__(self, rngs):
        init = _init_params()
        self.layers = nnx.Dict()
        for n in NAMES:
            layer = nnx.Linear(N_IN, N_OUT, rngs=rngs)
            layer.kernel[...] = jnp.asarray(init[n]["kernel"])
            layer.bias[...] = jnp.asarray(init[n]["bias"])
            self.layers[n] = layer

    def __call__(self, x):
        return {n: layer(x) for n, layer in self.layers.items()}


def test_flax_nnx_optimizer_with_donation():
    model = _NnxLayers(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _bundle(), wrt=nnx.Param)

    @functools.partial(nnx.jit, donate_argnums=(0, 1))
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return sum(jnp.mean(jnp.square(o - y)) for o in model(x).values())

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [train_step(model, optimizer, *_data(t)) for t in range(STEPS)]
    params = {
        n: {"bias": layer.bias[...], "kernel": layer.kernel[...]}
        for n, layer in model.layers.items()
    }
    _assert_trained(losses, params)
    _assert_matches(params, _plain_reference()[-1])


# ----------------------------------------------------------------------------
# Equinox: eqx.filter_jit with donate="all-except-first".


class _EqxDense(eqx.Module):
    """An equinox layer in Linen's layout: ``kernel`` is (in, out).

    ``eqx.nn.Linear`` stores (out, in), whose unit-wise blocks (optax's
    ``unitwise_norm`` reduces axis 0) are the input units, not the output
    units of the canonical layout: an eqx user of AGC passes ``axis=1``.
    This test is about ``filter_jit`` and donation, so it keeps one layout.
    """

    kernel: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return x @ self.kernel + self.bias


def test_equinox_filter_jit_with_donation():
    init = _init_params()
    model = {
        n: _EqxDense(jnp.asarray(init[n]["kernel"]), jnp.asarray(init[n]["bias"])) for n in NAMES
    }
    tx = _bundle()
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit(donate="all-except-first")
    def make_step(batch, model, opt_state):
        x, y = batch

        def loss_fn(model):
            return sum(jnp.mean(jnp.square(jax.vmap(m)(x) - y)) for m in model.values())

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return loss, eqx.apply_updates(model, updates), opt_state

    losses = []
    for t in range(STEPS):
        loss, model, opt_state = make_step(_data(t), model, opt_state)
        losses.append(loss)
    params = {n: {"bias": m.bias, "kernel": m.kernel} for n, m in model.items()}
    _assert_trained(losses, params)
    _assert_matches(params, _plain_reference()[-1])


def test_equinox_linear_units_are_its_input_units():
    """``eqx.nn.Linear``'s (out, in) weight: ``axis=1`` gives the output
    units that ``axis=None`` gives a Linen (in, out) kernel."""
    w = np.random.default_rng(1).standard_normal((N_IN, N_OUT)).astype(np.float32)
    g = 5.0 * np.random.default_rng(2).standard_normal((N_IN, N_OUT)).astype(np.float32)
    linen = adaclip.clip_by_unit_norm(0.5, relative=True)
    eqx_tx = adaclip.clip_by_unit_norm(0.5, relative=True, axis=1)
    out_linen, _ = linen.update({"w": g}, linen.init({"w": w}), {"w": w})
    out_eqx, _ = eqx_tx.update({"w": g.T}, eqx_tx.init({"w": w.T}), {"w": w.T})
    # NumPy: each output unit (column j of the (in, out) kernel).
    ratio = np.linalg.norm(g, axis=0) / np.maximum(np.linalg.norm(w, axis=0), 1e-3)
    scale = np.minimum(1.0, 0.5 / ratio)
    np.testing.assert_allclose(out_linen["w"], g * scale, rtol=1e-5)
    np.testing.assert_allclose(out_eqx["w"], (g * scale).T, rtol=1e-5)


# ----------------------------------------------------------------------------
# jax.grad through update: meta-gradients.


def _layer_losses(params, x, y):
    # In NAMES order: jax.tree.map returns dicts with sorted keys.
    return jnp.stack([_layer_loss(params[n]["kernel"], params[n]["bias"], x, y) for n in NAMES])


def _lookahead_losses(tx, state, params):
    """Each layer's loss after one step, as a function of the params before it."""
    grads = jax.grad(_loss)(params, *_data(0))
    updates, _ = tx.update(grads, state, params)
    return _layer_losses(optax.apply_updates(params, updates), *_data(1))


def test_grad_through_update_agrees_with_forward_mode():
    """Reverse mode (second order, through ``update``'s gradient input) against
    forward mode along a random direction: two independent derivative paths.
    Layer n's loss depends on layer n's params only, so per layer
    <grad L_n, v_n> must equal the n-th entry of the JVP."""
    tx = _bundle()
    params = jax.tree.map(jnp.asarray, _init_params())
    meta = functools.partial(_lookahead_losses, tx, tx.init(params))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(meta(p))))(params)
    rng = np.random.default_rng(7)
    direction = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    _, tangent = jax.jit(lambda p, v: jax.jvp(meta, (p,), (v,)))(params, direction)
    bad = []
    for i, name in enumerate(NAMES):
        pairs = zip(jax.tree.leaves(grad[name]), jax.tree.leaves(direction[name]), strict=True)
        reverse = sum(float(np.vdot(g, v)) for g, v in pairs)
        forward = float(tangent[i])
        if not (np.isfinite(reverse) and np.isclose(reverse, forward, rtol=1e-4, atol=1e-4)):
            bad.append(f"{name}: reverse {reverse:.6g}, forward {forward:.6g}")
    assert not bad, "\n".join(bad)


def test_grad_through_update_matches_optax_for_fixed_clipping():
    """d(lookahead loss)/d(params) and d/d(threshold) equal optax's (rtol 1e-5)."""

    def lookahead(make_clip, threshold, params):
        tx = optax.chain(make_clip(threshold), optax.sgd(LR))
        x, y = _data(0)
        f = lambda p: _layer_loss(p["kernel"], p["bias"], x, y)  # noqa: E731
        updates, _ = tx.update(jax.grad(f)(params), tx.init(params), params)
        x1, y1 = _data(1)
        p1 = optax.apply_updates(params, updates)
        return _layer_loss(p1["kernel"], p1["bias"], x1, y1)

    params = jax.tree.map(jnp.asarray, _init_layer())
    ours = jax.grad(functools.partial(lookahead, adaclip.clip_by_global_norm), argnums=(0, 1))(
        1.0, params
    )
    ref = jax.grad(functools.partial(lookahead, optax.clip_by_global_norm), argnums=(0, 1))(
        1.0, params
    )
    assert float(ref[0]) != 0.0  # the threshold binds: the test can fail
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_meta_gradient_wrt_an_injected_hyperparameter():
    """jax.grad w.r.t. a hyper-parameter injected with optax.inject_hyperparams."""

    def lookahead(factory, threshold):
        tx = optax.inject_hyperparams(factory)(threshold)
        params = jax.tree.map(jnp.asarray, _init_layer())
        x, y = _data(0)
        f = lambda p: _layer_loss(p["kernel"], p["bias"], x, y)  # noqa: E731
        updates, _ = tx.update(jax.grad(f)(params), tx.init(params), params)
        p1 = optax.apply_updates(params, jax.tree.map(lambda u: -LR * u, updates))
        return _layer_loss(p1["kernel"], p1["bias"], *_data(1))

    ours = jax.jit(jax.grad(functools.partial(lookahead, adaclip.clip_by_global_norm)))(1.0)
    ref = jax.jit(jax.grad(functools.partial(lookahead, optax.clip_by_global_norm)))(1.0)
    assert float(ref) != 0.0
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


# ----------------------------------------------------------------------------
# float64: a loop under jax.enable_x64.


def test_x64_loop():
    with jax.enable_x64(True):
        tx = _bundle()

        @jax.jit
        def step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(_loss)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        params = jax.tree.map(jnp.asarray, _init_params(np.float64))
        opt_state = tx.init(params)
        losses = []
        for t in range(STEPS):
            params, opt_state, loss = step(params, opt_state, *_data(t, np.float64))
            losses.append(loss)
        assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
        params = jax.tree.map(np.asarray, params)

        # Fixed global clipping in float64 equals optax's to float64 precision.
        ref_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(LR))
        ref = jax.tree.map(jnp.asarray, _init_layer(np.float64))
        ref_state = ref_tx.init(ref)
        for t in range(STEPS):
            x, y = _data(t, np.float64)
            g = jax.grad(lambda p, x=x, y=y: _layer_loss(p["kernel"], p["bias"], x, y))(ref)
            u, ref_state = ref_tx.update(g, ref_state, ref)
            ref = optax.apply_updates(ref, u)
    _assert_trained(losses, params)
    # The float64 run agrees with the float32 reference to float32 precision.
    _assert_matches(params, _plain_reference()[-1], rtol=1e-4)
    for leaf in ("bias", "kernel"):
        np.testing.assert_allclose(params["global-float"][leaf], ref[leaf], rtol=1e-12)


# ----------------------------------------------------------------------------
# Per-device clipping inside jax.shard_map without axis_name (8 CPU devices).

_SHARD_MAP_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import functools
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, PartitionSpec as P
sys.path[:0] = [sys.argv[2]]
import test_usage as U

n_dev = 8
mesh = Mesh(np.array(jax.devices()), ("d",))
# Device i trains its own copy of every layer on its own data: batch t + 10 i.
init = U._init_params()
stacked = jax.tree.map(lambda p: np.stack([p] * n_dev), init)
data = [[U._data(t + 10 * i) for i in range(n_dev)] for t in range(U.STEPS)]
xs = np.stack([np.stack([d[i][0] for i in range(n_dev)]) for d in data])  # (T, dev, B, in)
ys = np.stack([np.stack([d[i][1] for i in range(n_dev)]) for d in data])

def local_training(params, xs, ys):
    # Inside: a block of one device, leading axis 1; no axis_name anywhere.
    params = jax.tree.map(lambda p: p[0], params)
    tx = U._bundle()
    state = tx.init(params)
    for t in range(U.STEPS):
        grads = jax.grad(U._loss)(params, xs[t, 0], ys[t, 0])
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(lambda p: p[None], params)

run = jax.jit(jax.shard_map(local_training, mesh=mesh,
              in_specs=(P("d"), P(None, "d"), P(None, "d")), out_specs=P("d")))
got = jax.tree.map(np.asarray, run(stacked, xs, ys))
# Reference: each device's run on its own, one after the other.
for i in range(n_dev):
    want = U._reference(lambda t, p: U._grad(p, *data[t][i]), [U.LR] * U.STEPS)[-1]
    U._assert_matches(jax.tree.map(lambda p: p[i], got), want, what=f"device {i}'s params")
print("OK")
"""


def test_per_device_shard_map_without_axis_name(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SHARD_MAP_SCRIPT, "x", str(HERE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-6000:]


# ----------------------------------------------------------------------------
# optax.MultiSteps: gradient accumulation over k micro-batches.


def test_multisteps_accumulation():
    k = 2
    tx = multi_steps(_bundle(), every_k_schedule=k)

    @jax.jit
    def micro_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(jnp.asarray, _init_params())
    opt_state = tx.init(params)
    losses = []
    for t in range(STEPS * k):
        params, opt_state, loss = micro_step(params, opt_state, *_data(t))
        losses.append(loss)
    _assert_trained(losses, params)

    # Reference: each real step clips the mean of its k micro-batch gradients.
    def mean_grad(t, p):
        grads = [_grad(p, *_data(k * t + j)) for j in range(k)]
        return jax.tree.map(lambda *g: sum(np.asarray(x) for x in g) / k, *grads)

    _assert_matches(params, _reference(mean_grad, [LR] * STEPS)[-1])


# ----------------------------------------------------------------------------
# optax.inject_hyperparams: a learning rate changed between steps.


def test_inject_hyperparams_learning_rate_changed_mid_run():
    tx = optax.inject_hyperparams(lambda learning_rate: _bundle(lambda: optax.sgd(learning_rate)))(
        learning_rate=LR
    )
    traces = []

    @jax.jit
    def step(params, opt_state, x, y):
        traces.append(None)  # counts compilations
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(jnp.asarray, _init_params())
    opt_state = tx.init(params)
    lrs = [LR, LR, LR / 2]
    losses = []
    for t, lr in enumerate(lrs):
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr)
        params, opt_state, loss = step(params, opt_state, *_data(t))
        losses.append(loss)
    assert len(traces) == 1, "a new learning rate recompiled the step"
    _assert_trained(losses, params)
    _assert_matches(params, _reference(lambda t, p: _grad(p, *_data(t)), lrs)[-1])
