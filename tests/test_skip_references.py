"""skip_bad_steps + rolling_zscore / ema_zscore / log_space take the skip decisions of
Levanter's SkipStepConfig, OLMo-core's SkipStepOptimizer and Lingvo's GradNormTracker
(RNMT+), step for step, on recorded loss and norm sequences with spikes, NaN and
level shifts. Each reference is a NumPy transcription of the semantics in
REFERENCES.md ("Skipping steps on spikes"), checked against their source."""

import math
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaclip


def _sequences(steps, seed, nan_steps=()):
    """A loss that decays with noise, a norm that drifts, spikes in both, a
    level shift of the norm (x4) two thirds of the way and NaN steps."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    loss = 3.0 * np.exp(-t / 80.0) + 1.0 + 0.05 * rng.standard_normal(steps)
    norm = np.exp(0.2 * rng.standard_normal(steps)) * (1.0 + 0.3 * np.sin(t / 15.0))
    norm[t >= 2 * steps // 3] *= 4.0
    for i in rng.choice(steps, size=steps // 12, replace=False):
        if rng.random() < 0.5:
            loss[i] += rng.uniform(1.0, 5.0)
        else:
            norm[i] *= rng.uniform(5.0, 40.0)
    for i in nan_steps:
        loss[i] = np.nan if i % 2 else loss[i]
        norm[i] = np.nan if i % 2 == 0 else norm[i]
    return loss.astype(np.float32), norm.astype(np.float32)


def _run(tx, losses, norms, with_loss=True):
    """skip_bad_steps decisions on gradients whose global norm is ``norms``."""
    params = {"w": jnp.zeros(1)}

    def step(state, xs):
        loss, norm = xs
        extra = {"loss": loss} if with_loss else {}
        _, state = tx.update({"w": norm[None]}, state, params, **extra)
        return state, (state.skipped, state.skip_reason)

    _, (skipped, reason) = jax.jit(lambda s: jax.lax.scan(step, s, (losses, norms)))(
        tx.init(params)
    )
    return np.asarray(skipped), np.asarray(reason)


def _skipper(clip_rule, loss_rule=None):
    inner = optax.chain(adaclip.clip_by_global_norm(clip_rule), optax.sgd(0.1))
    return adaclip.skip_bad_steps(inner, spike_factor=1.0, loss_rule=loss_rule)


# --- Levanter (levanter.optim.skipstep.SkipStepConfig) --------------------------


def _levanter(losses, norms, length, sigma):
    """Buffers of the last ``length`` losses and norms; decide on the history
    (current step excluded) once it holds max(2, length // 2) entries: skip
    unless loss <= mean + sigma*max(std, 1e-6) and likewise the norm
    (population std); then write the current values in, skipped or not."""
    hist_l, hist_n = deque(maxlen=length), deque(maxlen=length)
    out = []
    for loss, norm in zip(losses.astype(np.float64), norms.astype(np.float64), strict=True):
        skip = False
        if len(hist_l) >= max(2, length // 2):
            bound = lambda h: np.mean(h) + sigma * max(np.std(h), 1e-6)  # noqa: E731
            skip = not (loss <= bound(hist_l) and norm <= bound(hist_n))
        out.append(skip)
        hist_l.append(loss)
        hist_n.append(norm)
    return np.array(out)


@pytest.mark.parametrize("length,sigma,seed", [(16, 3.0, 0), (20, 2.0, 1), (7, 2.5, 2)])
def test_levanter_decisions(length, sigma, seed):
    losses, norms = _sequences(150, seed)
    expected = _levanter(losses, norms, length, sigma)
    assert 5 <= expected.sum() <= 60  # the sequence exercises the rule
    tx = _skipper(adaclip.rolling_zscore(sigma, length), adaclip.rolling_zscore(sigma, length))
    skipped, reason = _run(tx, losses, norms)
    np.testing.assert_array_equal(skipped, expected)
    assert set(reason[skipped]) <= {2, 3} and set(reason[~skipped]) == {0}


def test_levanter_decisions_with_nan_steps():
    """A NaN loss or norm: adaclip skips that step and keeps the value out of
    the history; on the other steps it decides as Levanter does on the run
    without the NaN steps (Levanter itself writes the NaN into its buffer and
    then skips every step until it leaves the window)."""
    nan_steps = (30, 31, 77, 110)
    losses, norms = _sequences(150, 3, nan_steps)
    keep = np.isfinite(losses) & np.isfinite(norms)
    expected = np.ones(len(losses), bool)
    expected[keep] = _levanter(losses[keep], norms[keep], 16, 3.0)
    tx = _skipper(adaclip.rolling_zscore(3.0, 16), adaclip.rolling_zscore(3.0, 16))
    skipped, reason = _run(tx, losses, norms)
    np.testing.assert_array_equal(skipped, expected)
    np.testing.assert_array_equal(reason[~keep], 1)
    # The transcription of Levanter as written: after the NaN, every step skips.
    raw = _levanter(losses, norms, 16, 3.0)
    assert raw[31:47].all()


# --- OLMo-core (olmo_core.optim.SkipStepOptimizer) ------------------------------


def _olmo_core(losses, norms, length, sigma):
    """Lists of the last length + 1 losses and norms, the current one
    appended first; no decision while the list is shorter than
    max(2, length // 2); else skip unless (x - mean) <= sigma * std of the
    entries before the current one, torch's sample std (ddof 1), no floor."""
    ls, ns = deque(maxlen=length + 1), deque(maxlen=length + 1)
    out = []
    for loss, norm in zip(losses.astype(np.float64), norms.astype(np.float64), strict=True):
        ls.append(loss)
        ns.append(norm)
        skip = False
        if len(ls) >= max(2, length // 2):
            ok = lambda h: (h[-1] - np.mean(h[:-1])) <= sigma * np.std(h[:-1], ddof=1)  # noqa: E731
            skip = not (ok(np.array(ls)) and ok(np.array(ns)))
        out.append(skip)
    return np.array(out)


@pytest.mark.parametrize("length,sigma,seed", [(16, 3.0, 4), (24, 2.0, 5)])
def test_olmo_core_decisions(length, sigma, seed):
    losses, norms = _sequences(150, seed)
    expected = _olmo_core(losses, norms, length, sigma)
    assert 5 <= expected.sum() <= 60
    rule = lambda: adaclip.rolling_zscore(  # noqa: E731
        sigma, length, min_history=max(2, length // 2) - 1, ddof=1
    )
    skipped, _ = _run(_skipper(rule(), rule()), losses, norms)
    np.testing.assert_array_equal(skipped, expected)


# --- Lingvo GradNormTracker (RNMT+) --------------------------------------------


def _lingvo(norms, decay=0.995, k=4.0, floor=1e-2):
    """float32 throughout: x = log(max(norm, 1e-2) + 1); mean and var from the
    EMAs of x, x^2 and 1 divided by max(weight, 1e-6), std = sqrt(max(var,
    1e-6)); cap = max(mean + k std, 0); abort when x > cap and weight > 0.75,
    or on NaN; the EMAs (ref += (1 - decay)(val - ref)) take min(x, cap),
    and a NaN step leaves them alone."""
    f = np.float32
    m = q = w = f(0.0)
    rate = f(1.0) - f(decay)
    out = []
    for norm in norms.astype(np.float32):
        has_nan = not np.isfinite(norm)
        ww = max(w, f(1e-6))
        mean = m / ww
        var = q / ww - mean * mean
        std = np.sqrt(max(var, f(1e-6)))
        x = np.log(max(norm, f(floor)) + f(1.0))
        cap = max(mean + f(k) * std, f(0.0))
        out.append(bool((x > cap and w > f(0.75)) or has_nan))
        if not has_nan:
            xc = min(x, cap)
            m = f(m + rate * (xc - m))
            q = f(q + rate * (xc * xc - q))
            w = f(w + rate * (f(1.0) - w))
    return np.array(out)


LINGVO = lambda: adaclip.log_space(  # noqa: E731
    adaclip.ema_zscore(4.0, 0.995, min_weight=0.75, std_floor=1e-3), offset=1.0, floor=1e-2
)


@pytest.mark.parametrize("seed", [6, 7])
def test_lingvo_grad_norm_tracker_decisions(seed):
    steps = 900
    _, norms = _sequences(steps, seed, nan_steps=(100, 350, 600))
    norms[150:160] = np.float32(3e-3)  # below Lingvo's floor of 1e-2
    expected = _lingvo(norms)
    assert not expected[:270].any() or expected[:270].sum() == 1  # the 0.75 weight gate
    assert 10 <= expected[280:].sum() <= 200
    skipped, reason = _run(_skipper(LINGVO()), norms, norms, with_loss=False)
    np.testing.assert_array_equal(skipped, expected)
    np.testing.assert_array_equal(reason[~np.isfinite(norms)], 1)


def test_lingvo_tiny_norms_after_the_gate():
    """Norms far below the floor once the bound applies: Lingvo floors them at
    1e-2 before the test, and so does log_space's floor."""
    rng = np.random.default_rng(8)
    norms = np.exp(rng.normal(-6.0, 0.3, 700)).astype(np.float32)  # ~2.5e-3
    norms[500:] = np.float32(0.05)  # a jump above the floor: spikes
    expected = _lingvo(norms)
    assert expected[500:].any()
    skipped, _ = _run(_skipper(LINGVO()), norms, norms, with_loss=False)
    np.testing.assert_array_equal(skipped, expected)
    assert math.isfinite(float(np.sum(norms)))
