# %% [markdown]
# # Per-group thresholds with `optax.partition`
#
# Hidden layers and the output layer get separate clippers: each group's
# gradient is clipped by its own global norm, with a wider threshold for the
# output layer (whose gradient is typically the largest) than for the hidden
# layers. `adaclip.metrics` prefixes each clipper's metrics with its group
# label: `hidden/norm`, `output/norm`, ...
#
# Run: `python examples/per_group_thresholds.py` (`--smoke`: a few steps).

# %%
import argparse

import jax
import jax.numpy as jnp
import optax

import adaclip


# %% A plain-JAX MLP: the parameters are a dict of layers.
def init_params(key, sizes=(8, 64, 64, 1)):
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        name = "output" if i == len(sizes) - 2 else f"hidden_{i}"
        params[name] = {
            "w": jax.random.normal(k, (n_in, n_out)) / jnp.sqrt(n_in),
            "b": jnp.zeros(n_out),
        }
    return params


def forward(params, x):
    for name in sorted(k for k in params if k.startswith("hidden")):
        x = jax.nn.gelu(x @ params[name]["w"] + params[name]["b"])
    return (x @ params["output"]["w"] + params["output"]["b"])[:, 0]


# %% Label every leaf by its group, then give each group its own clipper.
def group_labels(params):
    return {
        layer: jax.tree.map(lambda _: "output", sub)
        if layer == "output"
        else jax.tree.map(lambda _: "hidden", sub)
        for layer, sub in params.items()
    }


def make_optimizer():
    clip = optax.partition(
        {
            # Hidden layers: at most 1.5x their recent average norm.
            "hidden": adaclip.clip_by_global_norm(adaclip.ema(1.5, 0.95, warmup_steps=5)),
            # Output layer: a wider band, 3x its recent average.
            "output": adaclip.clip_by_global_norm(adaclip.ema(3.0, 0.95, warmup_steps=5)),
        },
        group_labels,
    )
    return optax.chain(clip, optax.adam(3e-3))


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="per-group thresholds with optax.partition")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    steps = 10 if args.smoke else 600

    key = jax.random.PRNGKey(0)
    params = init_params(key)
    w_true = jax.random.normal(jax.random.PRNGKey(1), (8,))
    tx = make_optimizer()
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, key):
        x = jax.random.normal(key, (64, 8))
        y = jnp.sin(x @ w_true)
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((forward(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for step in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, loss = step_fn(params, opt_state, sub)
        if step % max(steps // 6, 1) == 0 or step == steps - 1:
            m = adaclip.metrics(opt_state)
            print(
                f"step {step:4d}  loss {float(loss):.4f}  "
                f"hidden: norm {float(m['hidden/norm']):.3f} threshold "
                f"{float(m['hidden/threshold']):.3f}  "
                f"output: norm {float(m['output/norm']):.3f} threshold "
                f"{float(m['output/threshold']):.3f}"
            )
    m = adaclip.metrics(opt_state)
    print(
        f"clip rate: hidden {float(m['hidden/clip_rate']):.1%}, "
        f"output {float(m['output/clip_rate']):.1%}"
    )


if __name__ == "__main__":
    main()
