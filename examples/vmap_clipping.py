# %% [markdown]
# # Training several models with different clipping parameters at once
#
# Rules accept traced hyper-parameters, so `jax.vmap` can train one model per
# clipping configuration in a single compiled program: build the optimizer
# *inside* the mapped function from the mapped hyper-parameters. Here eight
# linear models, each with its own EMA multiplier and decay, train on the
# same stream of batches, one in 25 of which is corrupted (a gradient spike).
# Run with `--smoke` for a few steps only.

# %%
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaclip
import adaclip.tuning

DIM = 16


def make_batch(key, step, batch=64):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (batch, DIM))
    y = x @ jnp.linspace(-1.0, 1.0, DIM) + 0.1 * jax.random.normal(kn, (batch,))
    return x, jnp.where(step % 25 == 24, 1e3 * y, y)  # a corrupted batch


def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def make_optimizer(multiplier, decay):
    # Called inside jax.vmap: multiplier and decay are traced scalars.
    rule = adaclip.ema(multiplier, decay, warmup_steps=5)
    return optax.chain(adaclip.clip_by_global_norm(rule), optax.adam(3e-2))


def init(multiplier, decay):
    params = {"w": jnp.zeros(DIM), "b": jnp.zeros(())}
    return params, make_optimizer(multiplier, decay).init(params)


def train_step(params, opt_state, multiplier, decay, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, opt_state = make_optimizer(multiplier, decay).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


# One program for every configuration: the batch is shared (in_axes=None).
batched_step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, 0, 0, None, None)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    steps = 30 if args.smoke else args.steps

    multipliers = jnp.array([1.5, 2.0, 3.0, 5.0] * 2)
    decays = jnp.array([0.9] * 4 + [0.99] * 4)
    params, opt_state = jax.vmap(init)(multipliers, decays)

    key = jax.random.PRNGKey(0)
    for step in range(steps):
        key, sub = jax.random.split(key)
        x, y = make_batch(sub, step)
        params, opt_state = batched_step(params, opt_state, multipliers, decays, x, y)

    x, y = make_batch(jax.random.PRNGKey(123), 0)
    losses = jax.vmap(loss_fn, in_axes=(0, None, None))(params, x, y)
    m = adaclip.metrics(opt_state)  # every metric has a leading axis of 8
    print(f"{steps} steps, {len(multipliers)} models trained at once")
    print(
        adaclip.tuning.format_table(
            {
                "multiplier": np.asarray(multipliers),
                "decay": np.asarray(decays),
                "final_loss": np.asarray(losses),
                "clip_rate": np.asarray(m["clip_rate"]),
            }
        )
    )
    assert np.all(np.isfinite(np.asarray(losses)))


if __name__ == "__main__":
    main()
