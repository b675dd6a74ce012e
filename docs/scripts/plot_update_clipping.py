"""Draws Levanter's update-norm clipping as adaclip reproduces it.

A linear regression in 32 dimensions trained with Levanter's ``AdamConfig``
chain (gradient clip at 1, Adam with b2=0.95, weight decay 0.1, the update
clip, a warm-up + cosine learning rate). Every 40 steps or so a burst of 2-5
corrupted batches (inputs shifted along one direction, labels left alone)
pushes the gradients one way, and Adam's update norm jumps. The update clip is
``adaclip.clip_by_global_norm(adaclip.rolling_zscore(3.0, 128))`` where
Levanter puts its own; every curve is adaclip's metrics from that run
(tests/test_update_clipping_refs.py checks the same chain against a NumPy
transcription of Levanter's code). Writes docs/img/update_clipping.png:

    python docs/scripts/plot_update_clipping.py
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import adaclip  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "img"
STEPS, DIM, BATCH = 600, 32, 16


def batches(seed: int = 0):
    """Inputs and labels of each step; bursts of corrupted inputs."""
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(DIM)
    x = rng.standard_normal((STEPS, BATCH, DIM))
    y = x @ w_true + 0.5 * rng.standard_normal((STEPS, BATCH))
    for start in rng.choice(np.arange(80, STEPS - 6), size=STEPS // 40, replace=False):
        shift = rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0], DIM)
        x[start : start + rng.integers(2, 6)] += shift  # inputs drift, the labels do not
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def levanter_chain(sigma: float = 3.0) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 50, STEPS, 3e-3)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8),
        optax.add_decayed_weights(0.1),
        adaclip.clip_by_global_norm(adaclip.rolling_zscore(sigma, 128)),
        optax.scale_by_learning_rate(schedule),
    )


def run(tx, x, y) -> dict:
    """Trains on the batches; returns the update clipper's metrics per step."""

    def loss(w, xb, yb):
        return jnp.mean(jnp.square(xb @ w - yb))

    def body(carry, batch):
        w, state = carry
        updates, state = tx.update(jax.grad(loss)(w, *batch), state, w)
        return (optax.apply_updates(w, updates), state), adaclip.metrics(state)

    w0 = jnp.zeros(DIM, jnp.float32)
    _, m = jax.jit(lambda: jax.lax.scan(body, (w0, tx.init(w0)), (x, y)))()
    return {k: np.asarray(v) for k, v in m.items()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"svg.hashsalt": "adaclip", "path.simplify": True})
    m = run(levanter_chain(), *batches())
    steps = np.arange(STEPS)
    on = steps >= 64  # Levanter's bound is off until 64 norms are stored
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=110)
    ax.set_title("Levanter's update clip: mean + 3 std of the last 128 unclipped update norms")
    ax.title.set_fontsize(11)
    ax.set_xlabel("step")
    ax.set_ylabel("update norm (before the learning rate)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.axvspan(0, 63, color="0.9", label="off: < 64 norms stored")
    ax.plot(m["norm"], color="0.6", lw=0.8, label="update norm (pre-clip)")
    ax.plot(steps[on], m["threshold"][on], color="C0", lw=1.3, label="threshold")
    post = np.minimum(m["norm"], np.where(on, m["threshold"], np.inf))
    ax.plot(steps[m["clipped"]], post[m["clipped"]], "o", color="C3", ms=3, label="clipped to")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / "update_clipping.png")
    plt.close(fig)
    print("wrote", OUT / "update_clipping.png", f"({int(m['clipped'].sum())} clipped steps)")


if __name__ == "__main__":
    main()
