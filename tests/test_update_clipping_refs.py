"""Update clipping and step dropping against the originals, step for step.

- Levanter/Marin's ``clip_update_by_historical_norm``
  (``levanter/optim/clip_update_norm.py``, read at commit 9263f81e) is
  ``adaclip.clip_by_global_norm(adaclip.rolling_zscore(sigma, 128))`` placed
  where Levanter places it: after Adam and weight decay.
- AXLearn's ``skip_and_clip_by_global_norm`` (``axlearn/common/optimizers.py``,
  read at commit 34aed43c) is ``adaclip.skip_bad_steps`` around a clipper whose
  rule is the drop threshold, with ``optax.clip_by_global_norm(max_norm)`` as
  its separate clip.

Each reference is a plain NumPy (float64) transcription of the original's
algorithm as REFERENCES.md and the cited source describe it, written without
adaclip's code.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip
from tests._standard import standard

# --- NumPy transcriptions ------------------------------------------------------


def levanter_clip_update(norms_history, norm, length, sigma):
    """One decision of Levanter's ``clip_update_by_historical_norm``.

    ``norms_history`` holds the last ``length`` *unclipped* update norms
    (the current one not yet among them). No clipping while it holds fewer
    than ``max(2, length // 2)``; else the bound is the mean plus ``sigma``
    times the population standard deviation floored at 1e-6, and an update
    whose norm exceeds it is scaled by ``bound / max(norm, 1e-6)``.
    Returns ``(scale, bound or None, clipped)``."""
    if len(norms_history) < max(2, length // 2):
        return 1.0, None, False
    h = np.asarray(norms_history, np.float64)
    bound = h.mean() + sigma * max(h.std(), 1e-6)
    if norm > bound:
        return bound / max(norm, 1e-6), bound, True
    return 1.0, bound, False


def levanter_adam(grads, params, *, lr, b1, b2, eps, weight_decay, max_grad_norm, length, sigma):
    """Levanter's ``AdamConfig`` chain in NumPy: global-norm clip of the
    gradient at ``max_grad_norm``, Adam's direction, + weight decay, the
    update clip above, times ``-lr(t)`` (``lr`` a function of the 0-based step).

    ``grads`` is ``(steps, n)`` (the gradient does not depend on the
    parameters), ``params`` the ``(n,)`` start. Returns the per-step update
    norms (before the update clip), bounds (NaN while off), clip decisions
    and final updates."""
    p = np.asarray(params, np.float64).copy()
    mu = np.zeros_like(p)
    nu = np.zeros_like(p)
    history: list[float] = []
    norms, bounds, clipped, updates = [], [], [], []
    for t, g in enumerate(np.asarray(grads, np.float64)):
        gn = np.linalg.norm(g)
        if max_grad_norm is not None and gn > max_grad_norm:
            g = g * max_grad_norm / gn
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g * g
        u = (mu / (1 - b1 ** (t + 1))) / (np.sqrt(nu / (1 - b2 ** (t + 1))) + eps)
        u = u + weight_decay * p
        un = np.linalg.norm(u)
        scale, bound, did = levanter_clip_update(history, un, length, sigma)
        history = (history + [un])[-length:]  # unclipped, whether clipped or not
        u = -lr(t) * u * scale
        p = p + u
        norms.append(un)
        bounds.append(np.nan if bound is None else bound)
        clipped.append(did)
        updates.append(u)
    return np.array(norms), np.array(bounds), np.array(clipped), np.array(updates)


def axlearn_skip_and_clip(
    norms, *, drop_norm, decay=None, min_count=500, multipliers=(20, 40, 100), max_norm=None
):
    """AXLearn's ``skip_and_clip_by_global_norm`` decisions on a sequence of
    gradient global norms.

    ``drop_norm`` is a number (drop when ``norm >= drop_norm``), ``"ema"``
    (``drop_norm_by_grad_norm_ema``: thresholds ``k * mean``) or
    ``"stddev"`` (``drop_norm_by_grad_norm_stddev``: ``1e10`` while fewer
    than ``min_count`` steps were taken, then ``mean + k * stddev``). The
    statistics start at ``mean = mean_square = 1`` and ``count = 0``; a step
    is valid when its norm is finite and below every threshold; only a valid
    step updates them, with the bias-corrected decay
    ``decay * (1 - decay**count) / (1 - decay**(count + 1))``, and counts.
    ``stddev = sqrt(mean_square - mean**2)``. The clip scale is
    ``min(1, max_norm / (norm + 1e-8))``. Returns (dropped, scale)."""
    count, mean, square = 0, 1.0, 1.0
    dropped, scales = [], []
    for g in np.asarray(norms, np.float64):
        if isinstance(drop_norm, int | float):
            thresholds = [float(drop_norm)]
        else:
            var = square - mean * mean
            std = math.sqrt(var) if var >= 0 else math.nan
            if drop_norm == "ema":
                thresholds = [mean * k for k in multipliers]
            else:
                thresholds = [1e10 if count < min_count else mean + std * k for k in multipliers]
        valid = bool(np.isfinite(g)) and all(g < c for c in thresholds)
        if valid and not isinstance(drop_norm, int | float):
            d = decay * (1 - decay**count) / (1 - decay ** (count + 1))
            mean = d * mean + (1 - d) * g
            square = d * square + (1 - d) * g * g
            count += 1
        dropped.append(not valid)
        scales.append(1.0 if max_norm is None else min(1.0, max_norm / (g + 1e-8)))
    return np.array(dropped), np.array(scales)


# --- Levanter / Marin -----------------------------------------------------------

_N = 24


def _gradients(steps, seed):
    """Noisy gradients with a slowly turning mean, and bursts: runs of 2-6
    steps whose gradient points one way, which make Adam's update norm jump
    (its direction tends to +-1 per element, from about 0.23 on noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    base = np.sin(t / 40.0 + np.arange(_N)[None] / 3.0)
    grads = 0.3 * base + rng.standard_normal((steps, _N))
    for i in rng.choice(np.arange(70, steps - 8), size=steps // 60, replace=False):
        sign = np.sign(rng.standard_normal(_N))
        run = rng.integers(2, 7)
        grads[i : i + run] = rng.uniform(1.0, 4.0) * sign + 0.3 * grads[i : i + run]
    return grads.astype(np.float32)


def _run_chain(tx, grads, params0):
    """Steps ``tx`` under ``jax.jit`` with the state donated, as a trainer
    does; returns the updates and the update clipper's metrics per step."""
    params = {"w": jnp.asarray(params0[:16]), "b": jnp.asarray(params0[16:])}
    state = tx.init(params)

    def step(params, state, g):
        grads = {"w": g[:16], "b": g[16:]}
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    step = jax.jit(step, donate_argnums=(1,))
    out, norms, thresholds, clipped = [], [], [], []
    for g in grads:
        params, state, updates = step(params, state, jnp.asarray(g))
        m = adaclip.metrics(state)
        out.append(np.concatenate([np.asarray(updates["w"]), np.asarray(updates["b"])]))
        norms.append(float(m["norm"]))
        thresholds.append(float(m["threshold"]))
        clipped.append(bool(m["clipped"]))
    return np.array(out), np.array(norms), np.array(thresholds), np.array(clipped)


def _assert_same(ref, got, *, lr_scale=None):
    """Same decisions; same norms, thresholds (where the bound is on) and
    updates to rtol 1e-6. ``lr_scale``: the adaclip clipper sat after the
    learning rate, so its norms and thresholds are ``lr`` times Levanter's."""
    norms, bounds, clipped, updates = ref
    u, n, c, did = got
    on = ~np.isnan(bounds)
    assert on.sum() > 0 and clipped.sum() >= 3  # the run exercises the bound
    # No decision is a rounding error away (else float32 could flip it).
    assert np.min(np.abs(norms[on] - bounds[on]) / bounds[on]) > 1e-5
    np.testing.assert_array_equal(did, clipped)
    k = 1.0 if lr_scale is None else lr_scale
    np.testing.assert_allclose(n, k * norms, rtol=1e-6)
    np.testing.assert_allclose(c[on], k * bounds[on], rtol=1e-6)
    np.testing.assert_allclose(c[~on], n[~on], rtol=0)  # no bound: the statistic itself
    np.testing.assert_allclose(u, updates, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sigma,seed", [(3.0, 0), (2.0, 1)])
def test_levanter_adam_config_chain(sigma, seed):
    """Levanter's AdamConfig with ``clip_update_norm`` (window 128, off until
    64 norms are stored) and a warm-up + cosine learning rate: the adaclip
    clipper sits where Levanter's does, between weight decay and the
    learning rate. Marin's 32B run is ``sigma=2``."""
    steps, wd = 400, 0.1
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 50, steps, 3e-4)
    grads = _gradients(steps, seed)
    params0 = np.random.default_rng(seed + 10).standard_normal(_N).astype(np.float32)
    ref = levanter_adam(
        grads,
        params0,
        lr=lambda t: float(schedule(t)),
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=wd,
        max_grad_norm=1.0,
        length=128,
        sigma=sigma,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        standard(optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8)),
        optax.add_decayed_weights(wd),
        adaclip.clip_by_global_norm(adaclip.rolling_zscore(sigma, 128)),
        standard(optax.scale_by_learning_rate(schedule)),
    )
    _assert_same(ref, _run_chain(tx, grads, params0))


def test_levanter_as_adamw_then_clip():
    """``optax.chain(optax.adamw(lr), clip_by_global_norm(rolling_zscore(3, 128)))``:
    with a constant learning rate the clipper sees ``lr`` times Levanter's
    update norms, and mean + sigma std scales with them, so it takes the same
    decisions and returns the same updates."""
    steps, lr, wd = 300, 1e-3, 0.05
    grads = _gradients(steps, 2)
    params0 = np.random.default_rng(12).standard_normal(_N).astype(np.float32)
    ref = levanter_adam(
        grads,
        params0,
        lr=lambda t: lr,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=wd,
        max_grad_norm=None,
        length=128,
        sigma=3.0,
    )
    tx = optax.chain(
        standard(optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd)),
        adaclip.clip_by_global_norm(adaclip.rolling_zscore(3.0, 128)),
    )
    _assert_same(ref, _run_chain(tx, grads, params0), lr_scale=lr)


def test_levanter_unclipped_history_and_warmup():
    """The window holds the *unclipped* norms (``feed="raw"``, the default):
    a run of large updates widens the band, so later ones pass; and nothing
    is clipped before 64 norms are stored, however large."""
    norms = np.concatenate([np.full(63, 1.0), [50.0], np.ones(80), np.full(40, 30.0)])
    norms = norms + 0.01 * np.random.default_rng(3).standard_normal(len(norms))
    history, expected, bounds = [], [], []
    for s in norms:
        _, bound, did = levanter_clip_update(history, s, 128, 3.0)
        history = (history + [s])[-128:]
        expected.append(did)
        bounds.append(s if bound is None else bound)
    tx = adaclip.clip_by_global_norm(adaclip.rolling_zscore(3.0, 128))
    state = tx.init(jnp.zeros(()))

    def body(state, s):
        _, state = tx.update(s, state)
        return state, (state.clipped, state.threshold)

    _, (did, threshold) = jax.lax.scan(body, state, jnp.asarray(norms, jnp.float32))
    np.testing.assert_array_equal(np.asarray(did), np.array(expected))
    np.testing.assert_allclose(np.asarray(threshold), np.array(bounds), rtol=1e-5)
    assert not expected[63]  # 63 norms stored: still off
    assert expected[144] and not all(expected[144:])  # the 30s end up inside the band


# --- AXLearn --------------------------------------------------------------------


def _norm_sequence(steps, seed, *, nan_steps=(), spikes=True):
    """A norm that falls from ~8 to ~1 with noise, optional spikes (x25-60) and NaN steps."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    norms = (1.0 + 7.0 * np.exp(-t / 150.0)) * np.exp(0.25 * rng.standard_normal(steps))
    if spikes:
        for i in rng.choice(np.arange(20, steps), size=4, replace=False):
            norms[i] *= rng.uniform(25.0, 60.0)
    norms[list(nan_steps)] = np.nan
    return norms.astype(np.float32)


def _axlearn_tx(drop_rule, max_norm):
    """The adaclip one-liner: the drop rule's clipper, then the separate
    fixed clip (optax's, so that it is no spike test), then the optimizer."""
    return adaclip.skip_bad_steps(
        optax.chain(
            adaclip.clip_by_global_norm(drop_rule),
            optax.clip_by_global_norm(max_norm),
            standard(optax.adamw(1e-3, weight_decay=0.01)),
        ),
        spike_factor=1.0,
    )


def _run_skips(tx, norms):
    """Skip decisions and the norm of the gradient that AdamW took on each
    kept step (read back from its first moment, ``mu = 0.9 mu + 0.1 g``)."""
    params = {"w": jnp.zeros(2)}
    state0 = tx.init(params)

    @jax.jit
    def run(state):
        def body(state, norm):
            g = {"w": jnp.stack([0.6 * norm, 0.8 * norm])}
            _, new = tx.update(g, state, params)
            adam = new.inner_state[2][0]
            old_adam = state.inner_state[2][0]
            g_in = (adam.mu["w"] - 0.9 * old_adam.mu["w"]) / 0.1
            return new, (new.skipped, jnp.linalg.norm(g_in), adam.count)

        return jax.lax.scan(body, state, jnp.asarray(norms))

    _, (skipped, seen, count) = run(state0)
    # A dropped step leaves AdamW's state as it was: its count moves on kept steps only.
    np.testing.assert_array_equal(np.asarray(count), np.cumsum(~np.asarray(skipped)))
    return np.asarray(skipped), np.asarray(seen)


def test_axlearn_fixed_drop_norm_and_max_norm():
    """``drop_norm=100, max_norm=1`` (AXLearn's documented example) is
    ``clip_by_global_norm(100.0)`` with ``spike_factor=1``: the same drops on
    every step, NaN steps included, and the same clip of the kept steps."""
    norms = _norm_sequence(300, 0, nan_steps=(40, 41, 200))
    norms[[60, 61, 150]] = [150.0, 99.0, 400.0]
    dropped, scale = axlearn_skip_and_clip(norms, drop_norm=100.0, max_norm=1.0)
    assert dropped.sum() >= 5
    skipped, seen = _run_skips(_axlearn_tx(100.0, 1.0), norms)
    np.testing.assert_array_equal(skipped, dropped)
    kept = ~dropped
    np.testing.assert_allclose(seen[kept], (norms * scale)[kept], rtol=1e-5)


@pytest.mark.parametrize(
    "kind,rule",
    [
        # drop_norm_by_grad_norm_ema((20, 40, 100)), grad_norm_ema_decay=0.99
        ("ema", adaclip.ema(20.0, 0.99)),
        # drop_norm_by_grad_norm_stddev(min_count=500, multipliers=(20, 40, 100))
        (
            "stddev",
            adaclip.ema_zscore(20.0, 0.99, min_weight=1 - 0.99**499.5, std_floor=0.0, feed="raw"),
        ),
    ],
)
def test_axlearn_adaptive_drop_norm(kind, rule):
    """The adaptive thresholds: the smallest multiplier decides (the others
    only label AXLearn's drop counters). NaN steps are dropped by both and
    kept out of both's statistics; the decisions agree up to and including
    the first drop of a finite spike, after which AXLearn's statistics stay
    frozen on the dropped step and adaclip's rule records it (see the docs
    page: frozen statistics are an absorbing state)."""
    steps = 900
    quiet = _norm_sequence(steps, 1, nan_steps=(100, 101), spikes=False)
    # Two spikes: just before min_count kept steps (steps 100 and 101 are NaN,
    # so step 498 has 496 kept steps behind it and AXLearn's stddev bound is
    # still 1e10) and at exactly 500 (step 502: the bound is on).
    quiet[[498, 502]] *= np.float32([80.0, 1000.0])
    dropped, scale = axlearn_skip_and_clip(quiet, drop_norm=kind, decay=0.99, max_norm=2.0)
    skipped, seen = _run_skips(_axlearn_tx(rule, 2.0), quiet)
    np.testing.assert_array_equal(skipped[:503], dropped[:503])
    assert dropped[[100, 101, 502]].all() and dropped[498] == (kind == "ema")
    kept = ~dropped[:503]
    np.testing.assert_allclose(seen[:503][kept], (quiet * scale)[:503][kept], rtol=1e-5)

    spiky = _norm_sequence(steps, 2, nan_steps=(30,))
    if kind == "stddev":
        spiky[650] = spiky[649] * 90.0  # the first spike past min_count
    dropped, _ = axlearn_skip_and_clip(spiky, drop_norm=kind, decay=0.99)
    first = int(np.flatnonzero(dropped & np.isfinite(spiky))[0])
    skipped, _ = _run_skips(_axlearn_tx(rule, 2.0), spiky)
    np.testing.assert_array_equal(skipped[: first + 1], dropped[: first + 1])


def test_axlearn_frozen_statistics_absorb_a_level_shift():
    """Why adaclip does not freeze: after the norm's level rises 25-fold
    for good, AXLearn's EMA never sees a kept step again and drops every
    later step; adaclip's ``ema(20, 0.99)`` (fed the clipped norm) follows
    the new level and resumes within a few hundred steps."""
    norms = np.concatenate([np.ones(200), np.full(800, 25.0)]).astype(np.float32)
    dropped, _ = axlearn_skip_and_clip(norms, drop_norm="ema", decay=0.99)
    assert dropped[200:].all()
    skipped, _ = _run_skips(_axlearn_tx(adaclip.ema(20.0, 0.99), 2.0), norms)
    assert skipped[200] and not skipped[-300:].any()


def test_axlearn_ema_start_at_one_absorbs_large_first_norms():
    """AXLearn's EMAs start at 1, so with the EMA rule a first norm of 20 or
    more is dropped, and the EMA (updated only on kept steps) stays at 1:
    every step is dropped while the norm stays above 20. adaclip has no
    bound until a first norm is in, and drops none of them."""
    norms = np.full(300, 30.0, np.float32) * np.exp(
        0.1 * np.random.default_rng(4).standard_normal(300)
    ).astype(np.float32)
    dropped, _ = axlearn_skip_and_clip(norms, drop_norm="ema", decay=0.99)
    assert dropped.all()
    skipped, _ = _run_skips(_axlearn_tx(adaclip.ema(20.0, 0.99), 2.0), norms)
    assert not skipped.any()
