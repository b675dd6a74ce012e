# %% [markdown]
# # One clipping threshold per layer of a stacked transformer
#
# Large JAX models build their layers once and stack them: `nnx.vmap`
# creates $L$ identical blocks whose parameters carry a leading axis of size
# $L$, and `nnx.scan` runs them one after the other. A per-leaf clipper then
# sees each stacked kernel as one tensor, all layers together, and its
# metrics cannot say which layer spiked. With
# `axis=adaclip.stacked("blocks")`, `adaclip.clip_by_unit_norm` measures each
# layer's slice of each stacked leaf on its own: one norm, one threshold, one
# rule state and one metric entry per layer.
#
# The task: a small causal transformer learns to reverse a sequence of random
# tokens. Every 100th batch has its loss multiplied by 100, a stand-in for a
# bad batch. The clipper, before AdamW, clips each (leaf, layer) at twice
# the EMA of its own norms. `adaclip.metrics(opt_state, params)` is read at
# every step, keyed by the leaf's path (`"norm/blocks/mlp_out/kernel"`, one
# value per layer), and drawn per layer.
#
# Run: `python examples/stacked_transformer.py` (one to two minutes on 2
# CPU cores; writes `stacked_layers.png`); `--smoke` runs a few steps of a
# smaller model.

# %%
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import adaclip


# %% One transformer block (pre-LayerNorm attention and MLP) and the model.
class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.ln_attn = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=dim, decode=False, rngs=rngs
        )
        self.ln_mlp = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln_attn(x), mask=mask)
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(x))))


class Transformer(nnx.Module):
    def __init__(self, vocab: int, length: int, dim: int, heads: int, layers: int, rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, dim)))

        # L blocks built at once: every parameter gets a leading axis of size L.
        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(dim, heads, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.ln_out = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        n = tokens.shape[1]
        x = self.embed(tokens) + self.position[...][:n]
        mask = nnx.make_causal_mask(tokens)

        # The blocks run in sequence, scanned over their leading axis.
        @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
        def run(x, block, mask):
            return block(x, mask)

        return self.head(self.ln_out(run(x, self.blocks, mask)))


# %% Data: n random tokens, a separator, then the same tokens reversed.
def batch(rng, size: int, n: int, vocab: int):
    digits = rng.integers(1, vocab, (size, n))
    seq = np.concatenate([digits, np.zeros((size, 1), int), digits[:, ::-1]], axis=1)
    # The model reads seq[:-1] and predicts seq[1:]; only the reversed half is scored.
    weight = np.zeros((size, 2 * n))
    weight[:, n:] = 1.0
    return jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:]), jnp.asarray(weight, jnp.float32)


# %%
def plot(history, layers: int, path: str) -> None:
    import matplotlib.pyplot as plt

    leaves = ["blocks/attn/query/kernel", "blocks/mlp_in/kernel", "blocks/mlp_out/kernel"]
    fig, axes = plt.subplots(1, len(leaves), figsize=(5 * len(leaves), 3.8), dpi=100)
    steps = np.arange(len(history["loss"]))
    spikes = steps[history["spike"]]
    for ax, leaf in zip(axes, leaves, strict=True):
        norm = np.stack(history[f"norm/{leaf}"])  # (steps, layers)
        threshold = np.stack(history[f"threshold/{leaf}"])
        for layer in range(layers):
            color = plt.get_cmap("viridis")(layer / max(layers - 1, 1))
            ax.plot(steps, norm[:, layer], color=color, lw=0.8, label=f"layer {layer}")
            ax.plot(steps, threshold[:, layer], color=color, lw=0.8, ls=":")
        for s in spikes:
            ax.axvline(s, color="r", lw=0.4, alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(f"{leaf}: norm (solid), threshold (dotted)", fontsize=9)
        ax.set_xlabel("step (red: loss x100)")
        ax.grid(alpha=0.3, lw=0.5, which="both")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="per-layer clipping of a stacked transformer")
    parser.add_argument("--smoke", action="store_true", help="a few steps of a small model")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default="stacked_layers.png", help="the plot's path")
    args = parser.parse_args(argv)
    steps, dim, n = (8, 16, 4) if args.smoke else (args.steps, 64, 8)
    vocab, size, layers = 16, 32 if args.smoke else 64, args.layers

    model = Transformer(vocab, 2 * n, dim, heads=4, layers=layers, rngs=nnx.Rngs(0))
    clip = adaclip.clip_by_unit_norm(
        # Twice the EMA of each (leaf, layer)'s own norms; no bound for the
        # first 20 steps (3 with --smoke).
        adaclip.ema(2.0, 0.95, warmup_steps=3 if args.smoke else 20),
        # Stacked leaves (those under "blocks"): one block per layer; the
        # embeddings, the last LayerNorm and the head: one block per leaf.
        axis=adaclip.stacked("blocks"),
    )
    optimizer = nnx.Optimizer(model, optax.chain(clip, optax.adamw(3e-3)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, inputs, targets, weight, scale):
        def loss_fn(model):
            logits = model(inputs)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            return jnp.sum(loss * weight) / jnp.sum(weight)

        loss, grads = nnx.value_and_grad(lambda m: scale * loss_fn(m))(model)
        optimizer.update(model, grads)
        # Keyed by path; the stacked leaves' entries have one value per layer.
        return loss / scale, adaclip.metrics(optimizer.opt_state, nnx.state(model, nnx.Param))

    rng = np.random.default_rng(0)
    history = {"loss": [], "spike": []}
    start = time.perf_counter()
    for step in range(steps):
        spike = step % 100 == 99 or (args.smoke and step == steps - 2)
        loss, m = train_step(
            model, optimizer, *batch(rng, size, n, vocab), jnp.float32(100.0 if spike else 1.0)
        )
        history["loss"].append(float(loss))
        history["spike"].append(spike)
        for key, value in m.items():
            history.setdefault(key, []).append(np.asarray(value))
        if step % max(steps // 10, 1) == 0 or spike:
            mlp = m["norm/blocks/mlp_out/kernel"]
            clipped = m["clipped/blocks/mlp_out/kernel"]
            print(
                f"step {step:4d}  loss {float(loss):6.3f}  mlp_out norm per layer "
                f"{np.array2string(np.asarray(mlp), precision=3)}  clipped "
                f"{np.asarray(clipped).astype(int)}" + ("  <- loss x100" if spike else "")
            )

    history["spike"] = np.asarray(history["spike"])
    assert m["norm/blocks/mlp_out/kernel"].shape == (layers,)
    tokens, targets, weight = batch(np.random.default_rng(1), 256, n, vocab)
    correct = (jnp.argmax(model(tokens), -1) == targets) * weight
    print(f"{steps} steps in {time.perf_counter() - start:.1f} s")
    accuracy = float(correct.sum() / weight.sum())
    print(f"held-out token accuracy on the reversed half: {accuracy:.3f}")
    rates = np.asarray(m["clip_rate/blocks/mlp_out/kernel"])
    print(f"clip rate of mlp_out per layer: {np.array2string(rates, precision=3)}")
    plot(history, layers, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
