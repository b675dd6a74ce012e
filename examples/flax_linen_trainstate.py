# %% [markdown]
# # adaclip with a `flax.linen` `TrainState`
#
# `TrainState.create(tx=...)` takes any optax transformation, so an adaclip
# clipper goes in front of the optimizer; its metrics are read from
# `state.opt_state`.
#
# Run: `python examples/flax_linen_trainstate.py` (`--smoke`: a few steps).

# %%
import argparse

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

import adaclip


# %%
class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


def make_data(key, n=2048):
    """A synthetic 10-class problem: labels from a random linear map."""
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, 20))
    y = jnp.argmax(x @ jax.random.normal(kw, (20, 10)), axis=-1)
    return x, y


@jax.jit
def train_step(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, loss, adaclip.metrics(state.opt_state)


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="adaclip with a flax.linen TrainState")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    steps = 10 if args.smoke else 500

    x, y = make_data(jax.random.PRNGKey(0))
    model = MLP()
    params = model.init(jax.random.PRNGKey(1), x[:1])["params"]
    tx = optax.chain(
        # The clip threshold is 1.5x the mean norm of the last 20 steps.
        adaclip.clip_by_global_norm(adaclip.moving_average(1.5, window=20)),
        optax.adamw(3e-3, weight_decay=1e-4),
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    for step in range(steps):
        idx = jax.random.randint(jax.random.PRNGKey(step), (128,), 0, x.shape[0])
        state, loss, m = train_step(state, x[idx], y[idx])
        if step % max(steps // 10, 1) == 0:
            print(
                f"step {step:4d}  loss {float(loss):.4f}  norm {float(m['norm']):.3f}  "
                f"threshold {float(m['threshold']):.3f}  clip rate {float(m['clip_rate']):.1%}"
            )
    acc = jnp.mean(jnp.argmax(model.apply({"params": state.params}, x), -1) == y)
    print(f"train accuracy {float(acc):.3f}")


if __name__ == "__main__":
    main()
