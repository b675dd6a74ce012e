"""Draws the core threshold rules against a gradient-norm trace.

The trace imitates a recorded run: a norm that decays early on, noise, a few
spikes, a level shift half-way through and two non-finite steps. Every curve
comes from running ``adaclip.clip_by_global_norm`` itself over gradients with
those norms. Writes docs/img/rules_schedules.png and docs/img/rules_averages.png:

    python docs/scripts/plot_rules.py
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import adaclip  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "img"
STEPS = 500


def norm_trace(seed: int = 1, steps: int = STEPS) -> np.ndarray:
    """Early decay, log-normal noise, spikes, a level shift at the middle, NaNs."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    level = 1.0 + 4.0 * np.exp(-t / 50.0)
    level[steps // 2 :] *= 2.5
    norms = level * rng.lognormal(0.0, 0.15, steps)
    for start in rng.choice(np.arange(40, steps - 5), size=10, replace=False):
        norms[start : start + rng.integers(1, 3)] *= rng.uniform(4.0, 10.0)
    norms[[180, 181]] = np.nan
    return norms.astype(np.float32)


def run(clipper, norms: np.ndarray) -> dict[str, np.ndarray]:
    """Runs a clipper over one-element gradients whose norms are ``norms``."""

    def body(state, g):
        updates, state = clipper.update(g[None], state)
        m = adaclip.metrics(state)
        return state, {"threshold": m["threshold"], "post": jnp.abs(updates[0])}

    _, out = jax.lax.scan(body, clipper.init(jnp.zeros(1)), jnp.asarray(norms))
    return jax.tree.map(np.asarray, out)


def panel(ax, norms, curves, title):
    steps = np.arange(len(norms))
    ax.plot(steps, norms, color="0.6", lw=0.8, label="gradient norm")
    bad = ~np.isfinite(norms)
    ax.plot(steps[bad], np.full(bad.sum(), np.nanmax(norms)), "x", color="k", label="NaN step")
    for label, tx in curves.items():
        ax.plot(steps, run(tx, norms)["threshold"], lw=1.4, label=label)
    ax.set(title=title, xlabel="step", ylabel="norm / threshold", yscale="log")
    ax.legend(fontsize=8, loc="upper right")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    norms = norm_trace()
    g = adaclip.clip_by_global_norm

    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    panel(
        ax,
        norms,
        {
            "fixed(4.0)": g(adaclip.fixed(4.0)),
            "scheduled(cosine 10 → 1)": g(
                adaclip.scheduled(optax.cosine_decay_schedule(10.0, STEPS, alpha=0.1))
            ),
            "decaying(10, 0.5, T=100, floor=2)": g(
                adaclip.decaying(10.0, 0.5, transition_steps=100, floor=2.0)
            ),
        },
        "Rules that ignore the norm: fixed, scheduled, decaying",
    )
    fig.savefig(OUT / "rules_schedules.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True, sharey=True)
    panel(
        axes[0],
        norms,
        {
            "moving_average(2, 20)": g(adaclip.moving_average(2.0, 20)),
            "moving_average(2, 20, feed='clipped')": g(
                adaclip.moving_average(2.0, 20, feed="clipped")
            ),
        },
        "moving_average",
    )
    panel(
        axes[1],
        norms,
        {
            "ema(2, 0.95)": g(adaclip.ema(2.0, 0.95)),
            "ema(2, 0.95, feed='raw')": g(adaclip.ema(2.0, 0.95, feed="raw")),
        },
        "ema",
    )
    fig.savefig(OUT / "rules_averages.png", dpi=100)
    plt.close(fig)
    print(f"wrote {OUT / 'rules_schedules.png'} and {OUT / 'rules_averages.png'}")


if __name__ == "__main__":
    main()
