"""adaclip.stabilize: the recommended default, against NumPy and the chain it names."""

import _refs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _subprocess import run_script

import adaclip


@pytest.fixture
def standard_promotion():
    # optax.adam mixes Python floats and int32 counts, which strict promotion refuses
    with jax.numpy_dtype_promotion("standard"):
        yield


def _grads(n, size=5, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, size)).astype(np.float32)
    g[::7] *= 30.0  # spikes
    g[3] = 0.0  # a zero gradient
    return g


@pytest.mark.parametrize("lr", [0.01, 3.0])
def test_matches_a_numpy_loop(lr):
    # SGD, so that the whole step is independent arithmetic: the gradient
    # clipped at multiplier x the bias-corrected EMA of the past raw norms,
    # then the step clipped at max_step_ratio x max(|w|, eps).
    m, d, rho, eps = 1.0, 0.9, 0.03, 1e-3
    grads = _grads(60)
    w0 = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    tx = adaclip.stabilize(optax.sgd(lr), multiplier=m, decay=d, max_step_ratio=rho, eps=eps)
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    norms = np.linalg.norm(grads.astype(np.float64), axis=1)
    thresholds = _refs.ema(norms, m, d, feed="raw")
    w = w0.astype(np.float64)
    for t in range(len(grads)):
        updates, state = step({"w": jnp.asarray(grads[t])}, state, params)
        params = optax.apply_updates(params, updates)
        g = grads[t].astype(np.float64)
        n = norms[t]
        g = g * (min(1.0, thresholds[t] / n) if n > 0 else 1.0)
        u = -lr * g
        bound = rho * max(np.linalg.norm(w), eps)
        un = np.linalg.norm(u)
        u = u * (min(1.0, bound / un) if un > 0 else 1.0)
        w = w + u
        np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=2e-5, atol=1e-6)
    m_ = adaclip.metrics(state)
    assert {"0/threshold", "2/threshold", "0/clip_rate", "2/clip_rate"} <= set(m_)
    # the step bound acts on most steps at the large learning rate only
    assert (float(m_["2/clip_rate"]) > 0.5) == (lr == 3.0)


@pytest.mark.usefixtures("standard_promotion")
def test_is_the_chain_it_documents_bit_for_bit_under_donation():
    opt = optax.adam(3e-2)
    ours = adaclip.stabilize(opt)
    theirs = optax.chain(
        adaclip.clip_by_global_norm(adaclip.ema(1.0, 0.99, feed="raw")),
        opt,
        adaclip.clip_by_global_norm(0.03, relative=True, eps=1e-3),
    )
    grads = _grads(40, size=6, seed=1)
    out = []
    for tx in (ours, theirs):

        @jax.jit
        def train(params, state, g, tx=tx):
            updates, state = tx.update({"w": g}, state, params)
            return optax.apply_updates(params, updates), state

        step = jax.jit(train, donate_argnums=(0, 1))
        params = {"w": jnp.linspace(-2.0, 2.0, 6)}
        state = tx.init(params)
        for g in grads:
            params, state = step(params, state, jnp.asarray(g))
        out.append(np.asarray(params["w"]))
    np.testing.assert_array_equal(out[0], out[1])


def test_zero_parameters_grow_by_the_ratio_each_step():
    # All-zero parameters are not a trap: they move by rho * eps a step until
    # their norm reaches eps (1 / rho steps), then by rho times their norm.
    rho, eps = 0.03, 1e-3
    tx = adaclip.stabilize(optax.sgd(100.0), max_step_ratio=rho, eps=eps)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    sizes = []
    for _ in range(150):
        updates, state = step({"w": -jnp.ones(3)}, state, params)
        params = optax.apply_updates(params, updates)
        sizes.append(float(optax.tree.norm(params)))
    np.testing.assert_allclose(sizes[:30], rho * eps * np.arange(1, 31), rtol=1e-4)
    np.testing.assert_allclose(sizes[149] / sizes[49], (1 + rho) ** 100, rtol=1e-3)


@pytest.mark.usefixtures("standard_promotion")
def test_non_finite_gradient_and_skip_bad_steps():
    tx = adaclip.skip_bad_steps(adaclip.stabilize(optax.adam(1e-2)))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    params = optax.apply_updates(params, updates)
    before = jax.tree.map(np.asarray, (params, state))
    updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0, 1.0])}, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    assert int(adaclip.metrics(state)["skip_count"]) == 1
    # the optimizer's moments are those of before the NaN step
    np.testing.assert_array_equal(
        np.asarray(state.inner_state[1][0].mu["w"]), before[1].inner_state[1][0].mu["w"]
    )


def test_differentiable_and_keeps_float64():
    with jax.enable_x64(True):
        tx = adaclip.stabilize(optax.sgd(1.0))
        params = {"w": jnp.linspace(1.0, 2.0, 3, dtype=jnp.float64)}
        state = tx.init(params)
        g = {"w": jnp.array([3.0, -1.0, 0.5], dtype=jnp.float64)}
        updates, _ = tx.update(g, state, params)
        assert updates["w"].dtype == jnp.float64

        def f(scale):
            u, _ = tx.update({"w": g["w"] * scale}, state, params)
            return jnp.sum(u["w"])

        grad = jax.grad(f)(jnp.float64(1.0))
        assert np.isfinite(float(grad))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"multiplier": 0.0}, "multiplier"),
        ({"decay": 1.0}, "decay"),
        ({"max_step_ratio": -0.1}, "max_step_ratio"),
        ({"max_step_ratio": float("nan")}, "max_step_ratio"),
        ({"eps": 0.0}, "eps"),
        ({"nonfinite": "drop"}, "nonfinite"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        adaclip.stabilize(optax.sgd(1.0), **kwargs)


def test_an_optimizer_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match="optimizer"):
        adaclip.stabilize("adam")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer"):
        adaclip.stabilize(optax.adam)  # type: ignore[arg-type]


def test_update_without_params_fails_naming_params():
    tx = adaclip.stabilize(optax.sgd(1.0))
    params = {"w": jnp.ones(2)}
    with pytest.raises((TypeError, ValueError), match="params"):
        tx.update(params, tx.init(params))


def test_in_an_nnx_optimizer_under_nnx_jit():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    w0 = np.asarray(model.kernel[...])
    opt = nnx.Optimizer(model, adaclip.stabilize(optax.sgd(100.0)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)

    step(model, opt, jnp.ones((8, 4)), jnp.zeros((8, 2)))
    # a huge learning rate: the step is 3% of the parameters' norm (the bias is 0)
    moved = np.linalg.norm(np.asarray(model.kernel[...]) - w0) ** 2
    moved += np.linalg.norm(np.asarray(model.bias[...])) ** 2
    np.testing.assert_allclose(np.sqrt(moved), 0.03 * np.linalg.norm(w0), rtol=1e-4)
    assert {"0/threshold", "2/threshold"} <= set(adaclip.metrics(opt.opt_state))


def test_hyper_parameters_can_be_injected():
    tx = optax.inject_hyperparams(adaclip.stabilize, static_args=("optimizer",))(
        optimizer=optax.sgd(1.0), max_step_ratio=0.05
    )
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    state.hyperparams["max_step_ratio"] = jnp.float32(0.01)
    updates, _ = jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.01 * np.sqrt(3), rtol=1e-5)


FSDP_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, optax, adaclip
from jax.sharding import NamedSharding, PartitionSpec as P

mesh = jax.make_mesh((4,), ("d",))
rng = np.random.default_rng(0)
params = {"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
grads = [{k: jnp.asarray(rng.normal(size=v.shape) * (30.0 if t == 3 else 1.0), jnp.float32)
          for k, v in params.items()} for t in range(6)]

def run(tx, step):
    p, state, out = params, None, []
    for g in grads:
        p, state = step(tx, p, state, g)
        out.append(jax.tree.map(np.asarray, p))
    return out

def one_device(tx, p, state, g):
    state = tx.init(p) if state is None else state
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state

def sharded(tx, p, state, g):
    def body(p, g, state):
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state
    shard = lambda t: jax.device_put(t, NamedSharding(mesh, P("d")))
    if state is None:
        init = jax.shard_map(tx.init, mesh=mesh, in_specs=P("d"), out_specs=P())
        state = jax.jit(init)(shard(p))
    f = jax.shard_map(body, mesh=mesh, in_specs=(P("d"), P("d"), P()), out_specs=(P("d"), P()))
    return jax.jit(f)(shard(p), shard(g), state)

ref = run(adaclip.stabilize(optax.sgd(5.0)), one_device)
got = run(adaclip.stabilize(optax.sgd(5.0), axis_name="d"), sharded)
for a, b in zip(ref, got):
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=2e-6, atol=1e-7)
print("OK")
"""


def test_fsdp_shard_map_equals_one_device():
    run_script(FSDP_SCRIPT, timeout=300)
