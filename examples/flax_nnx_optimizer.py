# %% [markdown]
# # adaclip with `flax.nnx.Optimizer`
#
# The clipper is the first link of an optax chain handed to
# `nnx.Optimizer`; `adaclip.metrics(optimizer.opt_state)` reads the norm,
# the threshold and the clip rate back, inside or outside `nnx.jit`.
#
# Run: `python examples/flax_nnx_optimizer.py` (`--smoke`: a few steps).

# %%
import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import adaclip


# %% A small MLP regressing a noisy sine, with a few corrupted batches.
class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(1, 64, rngs=rngs)
        self.out = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.tanh(self.hidden(x)))


def batch(key, step):
    kx, kn = jax.random.split(key)
    x = jax.random.uniform(kx, (128, 1), minval=-3.0, maxval=3.0)
    y = jnp.sin(x) + 0.05 * jax.random.normal(kn, x.shape)
    # Every 50th batch has its targets scaled by 100: a gradient spike.
    return x, jnp.where(step % 50 == 49, 100.0 * y, y)


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="adaclip with flax.nnx.Optimizer")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    steps = 20 if args.smoke else 1000

    model = MLP(rngs=nnx.Rngs(0))
    tx = optax.chain(
        # Twice the recent average norm; nothing is clipped for the first 10 steps.
        adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.98, warmup_steps=10)),
        optax.adam(1e-2),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        # metrics() is jittable: return it from the step to log it.
        return loss, adaclip.metrics(optimizer.opt_state)

    key = jax.random.PRNGKey(0)
    for step in range(steps):
        key, sub = jax.random.split(key)
        loss, m = train_step(model, optimizer, *batch(sub, step))
        if step % max(steps // 10, 1) == 0 or step % 50 == 49:
            print(
                f"step {step:4d}  loss {float(loss):9.4f}  norm {float(m['norm']):8.3f}  "
                f"threshold {float(m['threshold']):7.3f}  clipped {bool(m['clipped'])!s:5}  "
                f"clip rate {float(m['clip_rate']):.1%}"
            )

    # Outside jit too: the metrics live in the optimizer's state.
    m = adaclip.metrics(optimizer.opt_state)
    x, y = batch(jax.random.PRNGKey(1), 0)
    print(f"final clean loss {float(jnp.mean((model(x) - y) ** 2)):.4f}")
    print(f"final clip rate {float(m['clip_rate']):.1%}")
    print(f"non-finite steps {int(m['nonfinite_count'])}")


if __name__ == "__main__":
    main()
