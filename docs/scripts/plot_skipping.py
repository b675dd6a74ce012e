"""Trains a small transformer at a learning rate where its loss spikes, with
Levanter-style step skipping, and plots what was skipped.

A two-layer, single-head causal transformer (width 32) learns a synthetic
task: continue a random sequence of 8 tokens by copying it. With Adam at a
large learning rate and no warm-up the loss and the gradient norm spike now
and then. The run uses

    adaclip.skip_bad_steps(
        optax.chain(adaclip.clip_by_global_norm(adaclip.rolling_zscore(4.0, 64)), adam),
        spike_factor=1.0,
        loss_rule=adaclip.rolling_zscore(4.0, 64),
    )

records the loss, the global norm, both bounds and the skipped steps with
``adaclip.metrics``, and writes docs/img/skipping.png (about a minute on a
CPU):

    python docs/scripts/plot_skipping.py [--steps N] [--out PATH]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import adaclip  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "img" / "skipping.png"
VOCAB, HALF, WIDTH, LAYERS, BATCH = 16, 8, 32, 2, 32
SEQ = 2 * HALF


def init_params(key: jax.Array) -> dict:
    keys = iter(jax.random.split(key, 4 + 4 * LAYERS))
    dense = lambda i, o: jax.random.normal(next(keys), (i, o)) / np.sqrt(i)  # noqa: E731
    params = {
        "embed": jax.random.normal(next(keys), (VOCAB, WIDTH)),
        "pos": 0.1 * jax.random.normal(next(keys), (SEQ, WIDTH)),
        "out": dense(WIDTH, VOCAB),
    }
    for i in range(LAYERS):
        params[f"attn{i}"] = {"qkv": dense(WIDTH, 3 * WIDTH), "proj": dense(WIDTH, WIDTH)}
        params[f"mlp{i}"] = {"up": dense(WIDTH, 4 * WIDTH), "down": dense(4 * WIDTH, WIDTH)}
    return params


def _norm(x: jax.Array) -> jax.Array:
    x = x - x.mean(-1, keepdims=True)
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)


def forward(params: dict, tokens: jax.Array) -> jax.Array:
    x = params["embed"][tokens] + params["pos"]
    mask = jnp.tril(jnp.ones((SEQ, SEQ), bool))
    for i in range(LAYERS):
        q, k, v = jnp.split(_norm(x) @ params[f"attn{i}"]["qkv"], 3, axis=-1)
        att = jnp.where(mask, q @ jnp.swapaxes(k, -1, -2) / np.sqrt(WIDTH), -1e9)
        x = x + jax.nn.softmax(att, axis=-1) @ v @ params[f"attn{i}"]["proj"]
        h = jax.nn.gelu(_norm(x) @ params[f"mlp{i}"]["up"])
        x = x + h @ params[f"mlp{i}"]["down"]
    return _norm(x) @ params["out"]


def loss_fn(params: dict, tokens: jax.Array) -> jax.Array:
    logits = forward(params, tokens)[:, HALF - 1 : -1]
    targets = tokens[:, HALF:]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def batch(key: jax.Array) -> jax.Array:
    first = jax.random.randint(key, (BATCH, HALF), 0, VOCAB)
    return jnp.concatenate([first, first], axis=1)


def run(steps: int, learning_rate: float = 1e-2, seed: int = 0) -> dict[str, np.ndarray]:
    tx = adaclip.skip_bad_steps(
        optax.chain(
            adaclip.clip_by_global_norm(adaclip.rolling_zscore(4.0, 64)),
            optax.adam(learning_rate, b2=0.95),
        ),
        spike_factor=1.0,
        loss_rule=adaclip.rolling_zscore(4.0, 64),
    )
    params = init_params(jax.random.key(seed))
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch(key))
        updates, state = tx.update(grads, state, params, loss=loss)
        m = adaclip.metrics(state)
        return optax.apply_updates(params, updates), state, m

    keys = jax.random.split(jax.random.key(seed + 1), steps)
    rows = []
    for key in keys:
        params, state, m = train_step(params, state, key)
        rows.append({k: np.asarray(v) for k, v in m.items()})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def plot(trace: dict[str, np.ndarray], out: pathlib.Path) -> None:
    steps = np.arange(len(trace["loss"]))
    reason = trace["skip_reason"]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax, key, bound, label in [
        (axes[0], "loss", "loss_threshold", "loss"),
        (axes[1], "norm", "threshold", "global gradient norm"),
    ]:
        ax.plot(steps, trace[key], lw=0.8, color="tab:blue", label=label)
        ax.plot(
            steps, trace[bound], lw=0.8, color="tab:orange", label="bound: mean + 4 std (64 steps)"
        )
        for c, color, name in [(3, "tab:red", "skipped: loss"), (2, "tab:purple", "skipped: norm")]:
            hit = reason == c
            ax.scatter(steps[hit], trace[key][hit], s=18, color=color, zorder=3, label=name)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(loc="lower left", fontsize=8)
    axes[1].set_xlabel("step")
    n = int(trace["skip_count"][-1])
    axes[0].set_title(
        f"Small transformer, Adam lr 1e-2: {n} of {len(steps)} steps skipped "
        f"({int(trace['loss_skip_count'][-1])} on the loss, "
        f"{int(trace['spike_skip_count'][-1])} on the norm)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    trace = run(args.steps, args.lr)
    plot(trace, args.out)
    print(
        f"wrote {args.out}: {int(trace['skip_count'][-1])} skipped, "
        f"final loss {float(trace['loss'][-1]):.3f}"
    )


if __name__ == "__main__":
    main()
