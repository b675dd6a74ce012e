# %% [markdown]
# # adaclip demo: clipping a regression run that gets hit by bad batches
#
# A linear model is trained with Adam on synthetic data. Every 25th batch is
# corrupted (its targets are multiplied by 1e3), which produces a gradient
# spike. We compare no clipping, a fixed threshold and an adaptive EMA
# threshold, and print a table. Run with `--smoke` for a few steps only.

# %%
import argparse
import time

import jax
import jax.numpy as jnp
import optax

import adaclip


def make_batch(key, step, dim=16, batch=64):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (batch, dim))
    w_true = jnp.linspace(-1.0, 1.0, dim)
    y = x @ w_true + 0.1 * jax.random.normal(kn, (batch,))
    y = jnp.where(step % 25 == 24, 1e3 * y, y)  # a corrupted batch
    return x, y


def loss_fn(params, x, y):
    pred = x @ params["w"] + params["b"]
    return jnp.mean((pred - y) ** 2)


def train(clipper, steps, seed=0):
    params = {"w": jnp.zeros(16), "b": jnp.zeros(())}
    tx = optax.chain(clipper, optax.adam(3e-2)) if clipper is not None else optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, key, step):
        x, y = make_batch(key, step)
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.PRNGKey(seed)
    start = time.perf_counter()
    for step in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state = step_fn(params, opt_state, sub, step)
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - start
    x, y = make_batch(jax.random.PRNGKey(123), 0)
    m = adaclip.metrics(opt_state)
    clip_rate = float(m["clip_rate"]) if m else 0.0
    return float(loss_fn(params, x, y)), clip_rate, elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    steps = 30 if args.smoke else 500
    strategies = {
        "none": None,
        "fixed(5.0)": adaclip.clip_by_global_norm(5.0),
        "ema(2.0, 0.95)": adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.95, warmup_steps=5)),
    }
    print(f"{'strategy':<16} {'final loss':>12} {'clip rate':>10} {'time (s)':>9}")
    for name, clipper in strategies.items():
        loss, rate, elapsed = train(clipper, steps)
        print(f"{name:<16} {loss:>12.4g} {rate:>10.2%} {elapsed:>9.2f}")


if __name__ == "__main__":
    main()
