# %% [markdown]
# # Chaining with a learning-rate schedule and momentum
#
# The clipper goes first, so the rule sees raw gradient norms; momentum and a
# warm-up + cosine learning-rate schedule follow. The threshold can itself
# follow a schedule (`adaclip.decaying`, or any optax schedule), and every
# hyper-parameter may be injected with `optax.inject_hyperparams` to change
# it during training without recompiling.
#
# Run: `python examples/schedule_momentum.py` (`--smoke`: a few steps).

# %%
import argparse

import jax
import jax.numpy as jnp
import optax

import adaclip


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="clipping + lr schedule + momentum")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    args = parser.parse_args(argv)
    steps = 20 if args.smoke else 1000

    lr = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=steps // 10, decay_steps=steps)
    tx = optax.chain(
        # 2x the recent average norm, but never above a cap that decays from
        # 50 to 5 over training (a safety net for the first steps).
        adaclip.clip_by_global_norm(
            adaclip.minimum(
                adaclip.ema(2.0, 0.99, warmup_steps=10),
                adaclip.decaying(50.0, 0.1, transition_steps=steps, floor=5.0),
            )
        ),
        optax.trace(decay=0.9, nesterov=True),  # momentum
        optax.scale_by_learning_rate(lr),
    )

    # A badly conditioned quadratic, with noisy gradients and occasional spikes.
    scales = jnp.logspace(0, 2, 10)
    params = jnp.ones(10)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, key, step):
        noise = jax.random.normal(key, params.shape)
        spike = jnp.where(step % 97 == 0, 100.0, 1.0)
        grads = scales * params + spike * noise
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.PRNGKey(0)
    for step in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state = step_fn(params, opt_state, sub, step)
        if step % max(steps // 8, 1) == 0:
            m = adaclip.metrics(opt_state)
            print(
                f"step {step:4d}  lr {float(lr(step)):.4f}  loss "
                f"{float(0.5 * jnp.sum(scales * params**2)):9.4f}  norm {float(m['norm']):8.2f}  "
                f"threshold {float(m['threshold']):6.2f}"
            )
    m = adaclip.metrics(opt_state)
    print(f"final loss {float(0.5 * jnp.sum(scales * params**2)):.4f}")
    print(f"clip rate {float(m['clip_rate']):.1%}")


if __name__ == "__main__":
    main()
