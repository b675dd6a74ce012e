"""Blocks and measures: unit-wise clipping, norms relative to the parameters,
RMS, stacked layers and metrics by name, against optax and NumPy loops."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _standard import adam, standard

import adaclip

RNG = np.random.default_rng(0)

# Leaves of every rank 0-5, with size-1 axes that optax squeezes only to
# decide whether a leaf is a vector.
SHAPES = {
    "r0": (),
    "r1": (5,),
    "r2": (4, 3),
    "r2_row": (1, 6),
    "r3": (3, 2, 4),
    "r3_1": (1, 3, 4),
    "r4": (2, 2, 3, 4),
    "r5": (2, 1, 2, 3, 2),
    "r5_vec": (1, 1, 1, 1, 7),
}


def _tree(scale=1.0, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _assert_tree_close(a, b, rtol=1e-6, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --------------------------------------------------------------------- AGC


@pytest.mark.parametrize("clipping", [0.01, 0.1, 1.0])
def test_agc_equals_optax_on_every_rank(clipping):
    """Several steps of AGC + Adam under jit with donation equal optax's
    adaptive_grad_clip + Adam, on leaves of rank 0-5, some of whose units
    are clipped and some not."""
    params = _tree(1.0, seed=1)
    ours = optax.chain(adaclip.agc(clipping), adam(1e-2))
    ref = optax.chain(standard(optax.adaptive_grad_clip(clipping)), adam(1e-2))

    def train(tx):
        @jax.jit
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, u

        p, s, out = params, tx.init(params), []
        for t in range(4):
            # A mix of units above and below their bound.
            g = _tree(0.2 * 10.0 ** (t % 2), seed=10 + t)
            p, s, u = step(p, s, g)
            out.append(u)
        return p, out

    p_ours, u_ours = train(ours)
    p_ref, u_ref = train(ref)
    _assert_tree_close(u_ours, u_ref, rtol=1e-6, atol=1e-9)
    _assert_tree_close(p_ours, p_ref, rtol=1e-6)


def test_agc_on_zero_initialised_weights_equals_optax():
    """Zero weights: the bound is clipping * eps, as optax's."""
    params = jax.tree.map(jnp.zeros_like, _tree())
    grads = _tree(1.0, seed=3)
    updates, state = adaclip.agc(0.02, eps=1e-3).update(
        grads, adaclip.agc(0.02).init(params), params
    )
    ref, _ = standard(optax.adaptive_grad_clip(0.02, eps=1e-3)).update(grads, None, params)
    _assert_tree_close(updates, ref, rtol=1e-6)
    assert bool(jnp.all(state.clipped))


def test_unit_statistics_equal_a_numpy_loop():
    """Each unit's norm and ratio, from a NumPy loop over optax's units in
    float64; the clipped update of every unit is within its bound."""
    params, grads = _tree(1.0, seed=4), _tree(3.0, seed=5)
    tx = adaclip.agc(0.5)
    updates, state = tx.update(grads, tx.init(params), params)
    expected_ratio, expected_norm = [], []
    for k in sorted(SHAPES):  # jax.tree.leaves order of a dict
        g, w = np.asarray(grads[k], np.float64), np.asarray(params[k], np.float64)
        shape = SHAPES[k]
        if sum(d != 1 for d in shape) <= 1:
            axes = tuple(range(len(shape)))
        else:
            axes = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}[len(shape)]
        gn = np.sqrt(np.sum(g**2, axis=axes))
        wn = np.sqrt(np.sum(w**2, axis=axes))
        expected_ratio.append(np.ravel(gn / np.maximum(wn, 1e-3)))
        u = np.asarray(updates[k], np.float64)
        un = np.sqrt(np.sum(u**2, axis=axes))
        assert np.all(un <= 0.5 * np.maximum(wn, 1e-3) * (1 + 1e-5))
        expected_norm.append(np.ravel(gn))
    np.testing.assert_allclose(state.norm, np.concatenate(expected_ratio), rtol=1e-6)
    m = adaclip.metrics(state, params)
    np.testing.assert_allclose(
        m["norm/r3"], np.ravel(expected_ratio[sorted(SHAPES).index("r3")]).reshape(2, 4), rtol=1e-6
    )
    assert m["norm/r0"].shape == () and m["norm/r4"].shape == (4,)


def test_agc_clips_exactly_to_the_bound_below_optax_floor():
    """Below optax's 1e-6 divisor a gradient is clipped exactly to its bound
    (optax cuts it further)."""
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([3e-7, 0.0, 4e-7])}  # norm 5e-7 > bound 0.01 * 1e-5
    tx = adaclip.agc(0.01, eps=1e-5)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), 1e-7, rtol=1e-6)


def test_agc_with_a_rule_of_the_ratio():
    """AGC whose lambda is AutoClip's percentile of each unit's ratio: each
    unit's threshold is the median of its own last 3 ratios, current
    included (NumPy over the recorded ratios), and each unit is clipped to
    its own threshold times its parameter norm."""
    params = {"k": jnp.ones((2, 3))}
    tx = adaclip.agc(adaclip.percentile(50.0, 3))
    state = tx.init(params)
    history = []
    for t in range(6):
        g = np.asarray(RNG.standard_normal((2, 3)) * (1 + 3 * (t == 4)), np.float32)
        ratio = np.linalg.norm(g.astype(np.float64), axis=0) / np.sqrt(2.0)
        history.append(ratio)
        updates, state = tx.update({"k": jnp.asarray(g)}, state, params)
        expected = np.percentile(np.stack(history[-3:]), 50.0, axis=0)
        np.testing.assert_allclose(state.norm, ratio, rtol=1e-6)
        np.testing.assert_allclose(state.threshold, expected, rtol=1e-6)
        post = np.linalg.norm(np.asarray(updates["k"], np.float64), axis=0) / np.sqrt(2.0)
        np.testing.assert_allclose(post, np.minimum(ratio, expected), rtol=1e-5)


def test_agc_without_the_final_layer_equals_optax_masked():
    """NFNets' practice: every layer clipped but the final linear one. Both
    spellings (optax.masked, optax.partition with optax.identity) equal
    optax.masked(optax.adaptive_grad_clip) over steps of SGD under jit; the
    head's gradient is passed through unchanged, and the metrics name only
    the clipped leaves."""
    shapes = {"conv": (3, 3, 2, 4), "conv_b": (4,), "head": (4, 10), "head_b": (10,)}
    params = _tree(1.0, seed=30, shapes=shapes)
    mask = {"conv": True, "conv_b": True, "head": False, "head_b": False}
    labels = {k: "agc" if m else "head" for k, m in mask.items()}
    ref = optax.chain(standard(optax.masked(optax.adaptive_grad_clip(0.01), mask)), optax.sgd(0.1))
    spellings = {
        "masked": optax.masked(adaclip.agc(0.01), mask),
        "partition": optax.partition({"agc": adaclip.agc(0.01), "head": optax.identity()}, labels),
    }

    def make_step(tx):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, u

        return jax.jit(step, donate_argnums=(1,))

    ref_step = make_step(ref)
    for name, clip in spellings.items():
        tx = optax.chain(clip, optax.sgd(0.1))
        step = make_step(tx)
        p_ours, s_ours, p_ref, s_ref = params, tx.init(params), params, ref.init(params)
        for t in range(3):
            g = _tree(3.0, seed=40 + t, shapes=shapes)
            p_ours, s_ours, u_ours = step(p_ours, s_ours, g)
            p_ref, s_ref, u_ref = ref_step(p_ref, s_ref, g)
            _assert_tree_close(u_ours, u_ref, rtol=1e-6, atol=1e-9)
            for k in ("head", "head_b"):  # SGD of the raw gradient
                np.testing.assert_allclose(u_ours[k], -0.1 * np.asarray(g[k]), rtol=1e-6)
            assert not np.allclose(u_ours["conv"], -0.1 * np.asarray(g["conv"]))
        _assert_tree_close(p_ours, p_ref, rtol=1e-6)
        m = adaclip.metrics(s_ours, p_ours)
        assert {k for k in m if k.startswith("norm/")} == {"norm/conv", "norm/conv_b"}, name


# --------------------------------------------------------------- block RMS


def test_leaf_rms_after_adam_equals_clip_by_block_rms():
    params = _tree(1.0, seed=6)
    ours = optax.chain(adam(0.1), adaclip.clip_by_leaf_norm(0.05, rms=True))
    ref = optax.chain(adam(0.1), standard(optax.clip_by_block_rms(0.05)))
    s_ours, s_ref = ours.init(params), ref.init(params)
    for t in range(4):
        g = _tree(1.0 + t, seed=20 + t)
        u_ours, s_ours = jax.jit(ours.update)(g, s_ours, params)
        u_ref, s_ref = jax.jit(ref.update)(g, s_ref, params)
        _assert_tree_close(u_ours, u_ref, rtol=1e-6, atol=1e-9)


def test_rms_of_each_block_is_norm_over_sqrt_size():
    grads = _tree(2.0, seed=7)
    del grads["r0"]  # axis=-1 needs rank >= 1
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    tx = adaclip.clip_by_global_norm(math.inf, rms=True)
    _, state = tx.update(grads, tx.init(grads))
    total = sum(np.sum(x**2) for x in leaves) / sum(x.size for x in leaves)
    np.testing.assert_allclose(state.norm, np.sqrt(total), rtol=1e-6)
    tx = adaclip.clip_by_unit_norm(math.inf, axis=-1, rms=True)
    _, state = tx.update(grads, tx.init(grads))
    expected = np.concatenate([np.ravel(np.sqrt(np.mean(x**2, axis=-1))) for x in leaves])
    np.testing.assert_allclose(state.norm, expected, rtol=1e-6)


# -------------------------------------------------------- relative measures


@pytest.mark.parametrize("block", ["global", "leaf"])
def test_relative_global_and_leaf_equal_numpy(block):
    params, grads = _tree(1.0, seed=8), _tree(1.0, seed=9)
    params["r1"] = jnp.zeros(5)  # below eps
    clipper = adaclip.clip_by_global_norm if block == "global" else adaclip.clip_by_leaf_norm
    tx = clipper(0.3, relative=True, eps=0.01)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    w = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    if block == "global":
        ratio = np.array(
            [
                np.sqrt(sum(np.sum(x**2) for x in g))
                / max(np.sqrt(sum(np.sum(x**2) for x in w)), 0.01)
            ]
        )
        scales = [min(1.0, 0.3 / ratio[0])] * len(g)
    else:
        ratio = np.array(
            [np.linalg.norm(x) / max(np.linalg.norm(y), 0.01) for x, y in zip(g, w, strict=True)]
        )
        scales = list(np.minimum(1.0, 0.3 / ratio))
    np.testing.assert_allclose(np.ravel(state.norm), ratio, rtol=1e-6)
    for u, x, s in zip(jax.tree.leaves(updates), g, scales, strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float64), x * s, rtol=1e-6, atol=1e-12)


def test_relative_without_params_names_params():
    tx = adaclip.clip_by_unit_norm(0.1, relative=True)
    g = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="params"):
        tx.update(g, tx.init(g))


def test_relative_bf16_accumulates_in_float32_and_does_not_overflow():
    """bf16 gradients and parameters: the ratio is computed from float32 sums
    (optax's bf16 sums lose digits); elements at 1e20 do not overflow."""
    params = {"w": jnp.full((3, 2), 2.0, jnp.bfloat16)}
    grads = {"w": jnp.asarray([[1e20, 1.0], [1e20, 1.0], [0.0, 1.0]], jnp.float32)}
    tx = adaclip.agc(1.0)
    updates, state = tx.update(grads, tx.init(params), params)
    wn = np.sqrt(3 * 4.0)
    np.testing.assert_allclose(state.norm, [math.sqrt(2) * 1e20 / wn, math.sqrt(3) / wn], rtol=1e-6)
    bound = np.sqrt(np.sum(np.asarray(updates["w"], np.float64) ** 2, axis=0))
    np.testing.assert_allclose(bound[0], wn, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))


def test_relative_x64_accumulates_in_float64():
    with jax.enable_x64(True):
        params = {"w": jnp.asarray(RNG.standard_normal((6, 3)), jnp.float64)}
        grads = {"w": jnp.asarray(RNG.standard_normal((6, 3)) * 1e-3, jnp.float64)}
        tx = adaclip.agc(1e-4)
        updates, state = tx.update(grads, tx.init(params), params)
        g, w = np.asarray(grads["w"]), np.asarray(params["w"])
        gn, wn = np.linalg.norm(g, axis=0), np.linalg.norm(w, axis=0)
        scale = np.minimum(1.0, 1e-4 * np.maximum(wn, 1e-3) / gn)
        assert updates["w"].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(updates["w"]), g * scale, rtol=1e-13)


def test_nonfinite_unit_zeroes_the_step_and_keeps_the_rule_state():
    params = {"w": jnp.ones((2, 3))}
    tx = adaclip.clip_by_unit_norm(adaclip.ema(2.0, 0.5), relative=True)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((2, 3))}, state, params)
    bad = {"w": jnp.ones((2, 3)).at[0, 1].set(jnp.nan)}
    updates, new = tx.update(bad, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    assert int(new.nonfinite_count) == 1
    _assert_tree_close(new.rule_state, state.rule_state, rtol=0)
    _assert_tree_close(new.norm, state.norm, rtol=0)


def test_reverse_mode_equals_a_plain_jnp_agc():
    """jax.grad through AGC with respect to the gradients and the parameters
    equals that of a plain jnp transcription of optax's formula."""
    params, grads = _tree(1.0, seed=11), _tree(0.5, seed=12)
    del params["r0"], grads["r0"]  # optax's own formula divides by a 0-d norm too

    def ours(g, p):
        u, _ = adaclip.agc(0.3).update(g, adaclip.agc(0.3).init(p), p)
        return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree.leaves(u))

    def ref(g, p):
        u, _ = standard(optax.adaptive_grad_clip(0.3)).update(g, None, p)
        return sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree.leaves(u))

    _assert_tree_close(
        jax.jit(jax.grad(ours, (0, 1)))(grads, params),
        jax.grad(ref, (0, 1))(grads, params),
        rtol=1e-5,
        atol=1e-7,
    )
    t_ours = jax.jvp(lambda g: ours(g, params), (grads,), (grads,))[1]
    t_ref = jax.jvp(lambda g: ref(g, params), (grads,), (grads,))[1]
    np.testing.assert_allclose(float(t_ours), float(t_ref), rtol=1e-5)


# ------------------------------------------------------------------- axes


def test_axis_int_tuple_and_callable():
    g = {"a": jnp.asarray(RNG.standard_normal((3, 4, 2)), jnp.float32), "b": jnp.ones(3)}
    x = np.asarray(g["a"], np.float64)
    for axis, expected in [
        (1, np.linalg.norm(x, axis=1)),
        ((0, 2), np.linalg.norm(x, axis=(0, 2))),
        (-1, np.linalg.norm(x, axis=-1)),
    ]:
        tx = adaclip.clip_by_unit_norm(
            math.inf, axis=(lambda p, leaf, a=axis: a if p[0].key == "a" else None)
        )
        _, state = tx.update(g, tx.init(g))
        m = adaclip.metrics(state, g)
        np.testing.assert_allclose(m["norm/a"], expected, rtol=1e-6)
        np.testing.assert_allclose(m["norm/b"], math.sqrt(3), rtol=1e-6)


def test_rank_six_without_axis_fails_at_init_naming_axis():
    tx = adaclip.clip_by_unit_norm(1.0)
    with pytest.raises(ValueError, match=r"axis.*\(2, 2, 2, 2, 2, 2\)"):
        tx.init({"w": jnp.zeros((2,) * 6)})
    tx = adaclip.clip_by_unit_norm(1.0, axis=(0, 1))
    tx.init({"w": jnp.zeros((2,) * 6)})


def test_axis_out_of_range_fails_at_init():
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        adaclip.clip_by_unit_norm(1.0, axis=3).init({"w": jnp.zeros((2, 2))})


def test_rule_state_too_large_for_the_units_fails_at_init():
    tx = adaclip.clip_by_unit_norm(adaclip.percentile(10.0, 10_000))
    with pytest.raises(ValueError, match=r"percentile.*GiB.*400000 units"):
        tx.init({"w": jnp.zeros((2, 400_000))})
    # The same rule on one statistic per leaf fits.
    adaclip.clip_by_leaf_norm(adaclip.percentile(10.0, 10_000)).init({"w": jnp.zeros((1, 10))})


# --------------------------------------------------------- stacked layers


def test_stacked_layers_get_one_statistic_threshold_and_entry_each():
    """Four stacked layers with their own EMA thresholds: a spike in layer 2
    is clipped in layer 2 only; the metrics have one entry per layer, and
    each layer's threshold is a NumPy EMA of its own norms."""
    L = 4
    params = {
        "layers": {"attn": {"kernel": jnp.ones((L, 3, 3))}, "mlp": {"bias": jnp.ones((L, 3))}},
        "embed": jnp.ones((5, 3)),
    }
    tx = adaclip.clip_by_unit_norm(
        adaclip.ema(2.0, 0.5, feed="raw"), axis=adaclip.stacked("layers")
    )
    state = tx.init(params)
    ema = np.zeros(L)
    for t in range(5):
        scale = np.ones(L)
        if t == 4:
            scale[2] = 100.0
        g = {
            "layers": {
                "attn": {
                    "kernel": jnp.asarray(scale[:, None, None] * np.ones((L, 3, 3)), jnp.float32)
                },
                "mlp": {"bias": jnp.zeros((L, 3))},
            },
            "embed": jnp.ones((5, 3)),
        }
        updates, state = jax.jit(tx.update)(g, state)
        norms = scale * 3.0
        bound = np.where(t == 0, norms, 2.0 * ema / (1 - 0.5**t) if t else norms)
        m = adaclip.metrics(state, params)
        assert m["norm/layers/attn/kernel"].shape == (L,)
        np.testing.assert_allclose(m["norm/layers/attn/kernel"], norms, rtol=1e-6)
        if t == 4:
            np.testing.assert_array_equal(
                m["clipped/layers/attn/kernel"], [False, False, True, False]
            )
            np.testing.assert_allclose(
                np.linalg.norm(np.asarray(updates["layers"]["attn"]["kernel"][2])),
                bound[2],
                rtol=1e-5,
            )
        ema = 0.5 * ema + 0.5 * norms
    assert m["norm/embed"].shape == ()
    assert set(k.split("/", 1)[0] for k in m) == {
        "norm",
        "threshold",
        "clipped",
        "clip_rate",
        "nonfinite_count",
    }


def test_stacked_within_unit_is_agc_per_layer():
    L = 3
    params = {"layers": {"k": jnp.asarray(RNG.standard_normal((L, 4, 2)), jnp.float32)}}
    grads = {"layers": {"k": jnp.asarray(RNG.standard_normal((L, 4, 2)), jnp.float32)}}
    tx = adaclip.agc(0.1, axis=adaclip.stacked("layers", within="unit"))
    updates, state = tx.update(grads, tx.init(params), params)
    # Each layer's (4, 2) kernel is a rank-2 leaf for optax: vmap optax over L.
    ref = jax.vmap(lambda g, p: standard(optax.adaptive_grad_clip(0.1)).update(g, None, p)[0])(
        grads, params
    )
    _assert_tree_close(updates, ref, rtol=1e-6)
    assert adaclip.metrics(state, params)["norm/layers/k"].shape == (L, 2)


def test_metrics_without_params_keep_their_contract():
    tx = optax.chain(adaclip.clip_by_unit_norm(1.0), optax.sgd(0.1))
    params = {"w": jnp.ones((2, 3))}
    _, state = tx.update({"w": jnp.ones((2, 3))}, tx.init(params), params)
    m = adaclip.metrics(state)
    assert set(m) == {"norm", "threshold", "clipped", "clip_rate", "nonfinite_count"}
    assert m["norm"].shape == (3,)


def test_metrics_by_name_under_partition_and_jit():
    """Per-path keys survive optax.partition (the clipper sees a subtree)
    and jax.jit; the per-group prefix is kept."""
    params = {"enc": {"k": jnp.ones((2, 2))}, "dec": {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}}
    labels = {"enc": {"k": "a"}, "dec": {"k": "b", "b": "b"}}
    tx = optax.partition(
        {"a": adaclip.clip_by_leaf_norm(1.0), "b": adaclip.clip_by_unit_norm(1.0)}, labels
    )
    _, state = tx.update(params, tx.init(params), params)
    m = jax.jit(adaclip.metrics)(state, params)
    np.testing.assert_allclose(m["a/norm/enc/k"], 2.0)
    np.testing.assert_allclose(m["b/norm/dec/k"], [math.sqrt(3)] * 2, rtol=1e-6)
    np.testing.assert_allclose(m["b/norm/dec/b"], math.sqrt(2), rtol=1e-6)


def test_monitor_mode_reports_update_to_parameter_ratio():
    """math.inf with relative=True, after the optimizer: each layer's
    ||update|| / ||param||, nothing changed."""
    params = {"a": jnp.full((2, 2), 2.0), "b": jnp.full(3, 1.0)}
    tx = optax.chain(optax.sgd(0.1), adaclip.clip_by_leaf_norm(math.inf, relative=True))
    grads = {"a": jnp.ones((2, 2)), "b": jnp.full(3, 5.0)}
    updates, state = tx.update(grads, tx.init(params), params)
    m = adaclip.metrics(state, params)
    np.testing.assert_allclose(m["norm/a"], 0.1 * 2.0 / 4.0, rtol=1e-6)
    np.testing.assert_allclose(m["norm/b"], 0.1 * 5.0, rtol=1e-6)
    _assert_tree_close(updates, jax.tree.map(lambda g: -0.1 * g, grads))


# ---------------------------------------------------------- optax spelling


def test_max_norm_is_optax_spelling_of_threshold():
    g = {"w": jnp.array([3.0, 4.0])}
    ours = adaclip.clip_by_global_norm(max_norm=1.0)
    ref = optax.clip_by_global_norm(max_norm=1.0)
    _assert_tree_close(ours.update(g, ours.init(g))[0], ref.update(g, None)[0])
    with pytest.raises(TypeError, match="not both"):
        adaclip.clip_by_global_norm(1.0, max_norm=1.0)
    with pytest.raises(TypeError, match="needs a threshold"):
        adaclip.clip_by_global_norm()


# ------------------------------------------------------------- shard_map

SHARD_MAP_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, adaclip
from jax.sharding import PartitionSpec as P

mesh = jax.make_mesh((4,), ("d",))
rng = np.random.default_rng(0)
params = {"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
grads = {"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(8,)) * 3, jnp.float32)}
for make in [lambda **kw: adaclip.agc(0.3, **kw),
             lambda **kw: adaclip.clip_by_unit_norm(adaclip.ema(1.5, 0.9), rms=True, **kw),
             lambda **kw: adaclip.clip_by_global_norm(0.2, relative=True, **kw)]:
    def run(g, p, tx=make(axis_name="d")):
        state = tx.init(p)
        for _ in range(3):
            u, state = tx.update(g, state, p)
        return u, state.norm
    f = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=(P("d"), P())))
    shard = jax.sharding.NamedSharding(mesh, P("d"))
    u, norm = f(jax.device_put(grads, shard), jax.device_put(params, shard))
    ref_u, ref_norm = run(grads, params, make())
    for k in grads:
        np.testing.assert_allclose(np.asarray(u[k]), np.asarray(ref_u[k]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm), np.asarray(ref_norm), rtol=1e-6)
print("OK")
"""


def test_shard_map_sums_each_units_squares_over_the_axis():
    """Under shard_map with axis_name, every unit split along its reduced
    axis across 4 devices: AGC, a unit RMS rule and a relative global norm
    equal the single-device run."""
    from _subprocess import run_script

    run_script(SHARD_MAP_SCRIPT, timeout=600)


def test_metrics_by_name_with_flax_nnx():
    """An nnx.Optimizer's state, named by the model's paths (no ``value``)."""
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.Linear(3, 4, rngs=rngs)

    model = Model(nnx.Rngs(0))
    tx = optax.chain(adaclip.clip_by_unit_norm(1.0), optax.sgd(1e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m.attn(jnp.ones((2, 3))) ** 2))(model)
    optimizer.update(model, grads)
    m = adaclip.metrics(optimizer.opt_state, nnx.state(model, nnx.Param))
    kernel = np.asarray(grads["attn"]["kernel"][...], np.float64)
    np.testing.assert_allclose(m["norm/attn/kernel"], np.linalg.norm(kernel, axis=0), rtol=1e-6)
    assert m["norm/attn/bias"].shape == ()
