"""Draws the threshold of each paper method against a gradient-norm trace.

The trace imitates a recorded training run: a norm that decays early on, noise,
occasional spikes (some of them long), an upward level shift half-way through
and a stretch of non-finite steps. Every curve comes from running the adaclip
transformation itself over gradients with those norms. Writes docs/img/*.png:

    python docs/scripts/plot_methods.py
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import adaclip  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "img"
STEPS = 600


def norm_trace(seed: int = 0, steps: int = STEPS, scale: float = 1.0) -> np.ndarray:
    """A recorded-like trace: early decay, noise, spikes, a level shift, NaNs."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    level = 0.6 + 2.5 * np.exp(-t / 40.0)
    level[steps // 2 :] *= 3.0  # level shift (e.g. a learning-rate change)
    norms = level * rng.lognormal(0.0, 0.15, steps)
    for start in rng.choice(np.arange(60, steps - 10), size=12, replace=False):
        norms[start : start + rng.integers(1, 4)] *= rng.uniform(4.0, 15.0)
    norms[[210, 211, 420]] = np.nan  # non-finite steps: kept out of every rule
    return (scale * norms).astype(np.float32)


def run(tx, grads: dict) -> dict:
    """Steps ``tx`` over stacked gradients; returns the metrics and update norms."""

    def body(state, g):
        updates, state = tx.update(g, state)
        leaves = jax.tree.leaves(updates)
        post = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(u))) for u in leaves])
        return state, (adaclip.metrics(state), post)

    first = jax.tree.map(lambda x: x[0], grads)
    _, (m, post) = jax.jit(lambda g: jax.lax.scan(body, tx.init(first), g))(grads)
    out = {k: np.asarray(v) for k, v in m.items()}
    out["post"] = np.asarray(post)
    return out


def global_grads(norms: np.ndarray) -> dict:
    return {"w": jnp.asarray(norms)[:, None]}


def _axes(title: str, ylabel: str = "gradient norm"):
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=110)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both", lw=0.5)
    return fig, ax


def _finish(fig, ax, name: str) -> None:
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png")
    plt.close(fig)
    print("wrote", OUT / f"{name}.png")


def _plot_norms(ax, norms, label="norm (pre-clip)"):
    ax.plot(norms, color="0.65", lw=0.8, label=label)
    for i, step in enumerate(np.flatnonzero(~np.isfinite(norms))):
        ax.axvline(step, color="red", lw=0.8, ls=":", label="NaN step" if i == 0 else None)


def plot_autoclip(norms):
    fig, ax = _axes("autoclip: 10th percentile of the last 10 000 norms (and of the last 50)")
    _plot_norms(ax, norms)
    for window, color in [(10_000, "C0"), (50, "C1")]:
        m = run(adaclip.autoclip(10.0, window=window), global_grads(norms))
        ax.plot(m["threshold"], color=color, lw=1.4, label=f"threshold, window={window}")
    _finish(fig, ax, "autoclip")


def plot_zclip(norms):
    fig, ax = _axes("zclip: z-score spikes against an EMA (z_thresh=2.5, alpha=0.97)")
    _plot_norms(ax, norms)
    m = run(adaclip.zclip(max_norm=None), global_grads(norms))
    threshold = np.where(m["clipped"], m["threshold"], np.nan)
    ax.plot(m["post"][:, 0], color="C0", lw=1.0, label="post-clip norm (max_norm=None)")
    ax.plot(threshold, "o", color="C3", ms=3, label="clipped to")
    m = run(adaclip.zclip(mode="percentile", max_norm=None), global_grads(norms))
    ax.plot(m["post"][:, 0], color="C2", lw=0.8, ls="--", label='post-clip, mode="percentile"')
    _finish(fig, ax, "zclip")


def plot_adagc(norms):
    fig, ax = _axes("adagc: per-leaf thresholds ratio * gamma (two leaves, 100 warm-up steps)")
    second = norm_trace(1, scale=0.2)
    leaf_norms = np.stack([norms, second], axis=1)
    grads = {"a": jnp.asarray(leaf_norms[:, :1]), "b": jnp.asarray(leaf_norms[:, 1:])}
    m = run(adaclip.adagc(warmup_max_norm=2.0), grads)
    for i, color in enumerate(["C0", "C1"]):
        ax.plot(leaf_norms[:, i], color=color, lw=0.6, alpha=0.45, label=f"leaf {i} norm")
        ax.plot(m["threshold"][:, i], color=color, lw=1.4, label=f"leaf {i} threshold")
    ax.axvline(100, color="0.3", lw=0.8, ls=":")
    _finish(fig, ax, "adagc")


def plot_quantile(norms):
    fig, ax = _axes("quantile: geometric tracking of the 50th and 90th percentile (lr=0.2)")
    _plot_norms(ax, norms)
    for target, color in [(0.5, "C0"), (0.9, "C1")]:
        tx = adaclip.clip_by_global_norm(adaclip.quantile(target, initial=1.0))
        m = run(tx, global_grads(norms))
        ax.plot(m["threshold"], color=color, lw=1.4, label=f"threshold, target={target}")
    _finish(fig, ax, "quantile")


def plot_combinators(norms):
    fig, ax = _axes("combinators: warmup, clamp, minimum")
    _plot_norms(ax, norms)
    rules = {
        "warmup(ema(2, 0.95), 50, during=3.0)": adaclip.warmup(adaclip.ema(2.0, 0.95), 50, 3.0),
        "clamp(percentile(90, 100), 1.0, decaying(8, 0.995))": adaclip.clamp(
            adaclip.percentile(90.0, 100), lower=1.0, upper=adaclip.decaying(8.0, 0.995)
        ),
        "minimum(zscore(), 4.0)": adaclip.minimum(adaclip.zscore(), 4.0),
    }
    for (label, rule), color in zip(rules.items(), ["C0", "C1", "C2"], strict=True):
        m = run(adaclip.clip_by_global_norm(rule), global_grads(norms))
        ax.plot(m["threshold"], color=color, lw=1.2, label=label)
    _finish(fig, ax, "combinators")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"svg.hashsalt": "adaclip", "path.simplify": True})
    norms = norm_trace()
    plot_autoclip(norms)
    plot_zclip(norms)
    plot_adagc(norms)
    plot_quantile(norms)
    plot_combinators(norms)


if __name__ == "__main__":
    main()
