"""Draws SPAM's element-wise clipping and the dormant-weight case. Writes docs/img/spam.png:

    python docs/scripts/plot_spam.py

Left: one gradient element with spikes (and a NaN step), its bound
sqrt(theta * v) from ``adaclip.clip_by_second_moment`` with SPAM's defaults,
and what comes out. Right: a weight whose gradient is 0 for its first 30
steps, trained by the original SPAM (its NumPy transcription in
tests/_paper_refs.py) and by ``adaclip.spam``.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import adaclip  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import _paper_refs  # noqa: E402

OUT = ROOT / "docs" / "img"
STEPS = 600


def element_trace(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = 0.01 * rng.standard_normal(STEPS) * (1.0 + np.exp(-np.arange(STEPS) / 100.0))
    for t in (90, 200, 201, 350, 480):
        g[t] = 0.01 * rng.choice([-1, 1]) * rng.uniform(150.0, 600.0)
    g[300] = np.nan
    return g.astype(np.float32)


def run_clipper(g: np.ndarray):
    tx = adaclip.clip_by_second_moment()  # theta = 5000, b2 = 0.999, warm-up 19

    def body(state, x):
        v = state.rule_state.nu[0]
        out, state = tx.update(x, state)
        return state, (out[0], jnp.sqrt(5000.0 * v), state.clipped)

    _, (out, bound, clipped) = jax.jit(
        lambda g: jax.lax.scan(body, tx.init(jnp.zeros(1)), g[:, None])
    )(jnp.asarray(g))
    return np.asarray(out), np.asarray(bound), np.asarray(clipped)


def dormant(steps: int = 200):
    """A 2-weight quadratic, the second weight's gradient 0 for 30 steps."""
    rng = np.random.default_rng(1)
    noise = 0.2 * rng.standard_normal((steps, 2))

    def grad_fn(params, t):
        (w,) = params
        g = w + noise[t - 1]
        if t <= 30:
            g = g.copy()
            g[1] = 0.0
        return [g]

    w0 = [np.array([1.0, 1.0])]
    ref, _ = _paper_refs.spam(w0, grad_fn, steps, lr=1e-2, dtype=np.float32)
    opt = adaclip.spam(1e-2)
    p = [jnp.asarray(w0[0], jnp.float32)]
    state = opt.init(p)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p))
    )
    ours = []
    for t in range(1, steps + 1):
        p, state = step(
            p, state, [jnp.asarray(x, jnp.float32) for x in grad_fn([np.asarray(p[0])], t)]
        )
        ours.append(np.asarray(p[0]))
    return np.array([r[0] for r in ref]), np.array(ours)


def main() -> None:
    g = element_trace()
    out, bound, clipped = run_clipper(g)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=110)
    t = np.arange(STEPS)
    ax.set_title("clip_by_second_moment(): one element", fontsize=11)
    ax.plot(t, np.abs(out), lw=0.6, color="C0", label="|g| (post-clip)")
    ax.plot(t, bound, lw=1.2, color="C3", label=r"bound $\sqrt{\theta v}$")
    ax.plot(t[clipped], np.abs(g[clipped]), "x", color="k", ms=5, label="|g| of a clipped step")
    ax.axvline(300, color="k", lw=0.5, ls=":", label="NaN step (skipped)")
    ax.axvline(19, color="C2", lw=0.5, ls="--", label="end of warm-up")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.set_ylim(1e-5, 1e3)
    ax.legend(fontsize=7, loc="upper left", ncol=3)

    ref, ours = dormant()
    s = np.arange(1, len(ours) + 1)
    bx.set_title("a weight with no gradient for 30 steps", fontsize=11)
    bx.plot(s, ref[:, 1], color="C1", label="original SPAM: frozen (v = 0)")
    bx.plot(s, ours[:, 1], color="C0", label="adaclip.spam: trains")
    bx.plot(s, ours[:, 0], color="0.6", lw=0.8, label="the other weight (both)")
    bx.axvline(30, color="k", lw=0.5, ls=":")
    bx.set_xlabel("step")
    bx.set_ylabel("weight")
    bx.grid(alpha=0.3, lw=0.5)
    bx.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(OUT / "spam.png")
    plt.close(fig)
    print("wrote", OUT / "spam.png")


if __name__ == "__main__":
    main()
