# %% [markdown]
# # Gradient accumulation with `optax.MultiSteps`
#
# `optax.MultiSteps(tx, every_k_schedule=k)` averages the gradients of `k`
# micro-batches and calls `tx` once per `k`. With the clipper inside `tx`,
# the clip sees the *accumulated* gradient, as it would with one large
# batch: the rule takes one step per optimizer update, not per micro-batch.
# (A clipper outside `MultiSteps` would clip each micro-batch instead.)
#
# Run: `python examples/grad_accumulation.py` (`--smoke`: a few steps).

# %%
import argparse

import jax
import jax.numpy as jnp
import optax

import adaclip


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="gradient accumulation with optax.MultiSteps")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    micro_steps = 16 if args.smoke else 800
    k = 4  # micro-batches per optimizer update

    inner = optax.chain(
        adaclip.clip_by_global_norm(adaclip.moving_average(2.0, window=25)),
        optax.adam(5e-2),
    )
    tx = optax.MultiSteps(inner, every_k_schedule=k)

    w_true = jnp.arange(1.0, 6.0)
    params = {"w": jnp.zeros(5)}
    opt_state = tx.init(params)

    @jax.jit
    def micro_step(params, opt_state, key):
        x = jax.random.normal(key, (16, 5))
        y = x @ w_true + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (16,))
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.PRNGKey(0)
    for _ in range(micro_steps):
        key, sub = jax.random.split(key)
        params, opt_state = micro_step(params, opt_state, sub)

    m = adaclip.metrics(opt_state)
    # The clipper's step count is the number of optimizer updates.
    clip_count = int(opt_state.inner_opt_state[0].count)
    print(f"{micro_steps} micro-batches, {clip_count} clipper steps (every {k})")
    assert clip_count == micro_steps // k
    print(
        f"last accumulated norm {float(m['norm']):.3f}, threshold {float(m['threshold']):.3f}, "
        f"clip rate {float(m['clip_rate']):.1%}"
    )
    print("w =", jnp.round(params["w"], 2), " (true:", w_true, ")")


if __name__ == "__main__":
    main()
