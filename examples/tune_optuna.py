# %% [markdown]
# # Tuning a clipping rule with Optuna
#
# Optuna searches the EMA rule's multiplier and decay for the lowest
# validation loss of a small regression model trained on batches of which
# one in 25 is corrupted (a gradient spike). The hyper-parameters are
# injected with `optax.inject_hyperparams`, so one compiled training step
# serves every trial: a trial only writes new values into the optimizer
# state. Needs the `tune` extra (`pip install 'adaclip[tune]'`). Run with
# `--smoke` for a few short trials.

# %%
import argparse

import jax
import jax.numpy as jnp
import optax

import adaclip

try:
    import optuna
except ImportError:  # pragma: no cover - optional dependency
    optuna = None

DIM = 16


def make_batch(key, step, batch=64):
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (batch, DIM))
    y = x @ jnp.linspace(-1.0, 1.0, DIM) + 0.1 * jax.random.normal(kn, (batch,))
    return x, jnp.where(step % 25 == 24, 1e3 * y, y)  # a corrupted batch


def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


# The rule's hyper-parameters live in the optimizer state, not in the program.
optimizer = optax.inject_hyperparams(
    lambda multiplier, decay: optax.chain(
        adaclip.clip_by_global_norm(adaclip.ema(multiplier, decay, warmup_steps=5)),
        optax.adam(3e-2),
    )
)(multiplier=2.0, decay=0.99)

COMPILES = []


@jax.jit
def train(opt_state, keys):
    COMPILES.append(1)  # runs once per compilation
    params = {"w": jnp.zeros(DIM), "b": jnp.zeros(())}

    def step(carry, inputs):
        params, opt_state = carry
        key, i = inputs
        x, y = make_batch(key, i)
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    steps = jnp.arange(keys.shape[0])
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (keys, steps))
    x, y = make_batch(jax.random.PRNGKey(123), 0)
    return loss_fn(params, x, y), adaclip.metrics(opt_state)["clip_rate"]


def objective(trial, keys):
    opt_state = optimizer.init({"w": jnp.zeros(DIM), "b": jnp.zeros(())})
    opt_state.hyperparams["multiplier"] = jnp.float32(
        trial.suggest_float("multiplier", 1.05, 10.0, log=True)
    )
    opt_state.hyperparams["decay"] = jnp.float32(trial.suggest_float("decay", 0.5, 0.999))
    loss, clip_rate = train(opt_state, keys)
    trial.set_user_attr("clip_rate", float(clip_rate))
    return float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few short trials only")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if optuna is None:
        raise SystemExit("this example needs optuna: pip install 'adaclip[tune]'")
    trials, steps = (4, 30) if args.smoke else (args.trials, args.steps)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda trial: objective(trial, keys), n_trials=trials)

    best = study.best_trial
    print(f"{trials} trials of {steps} steps, {len(COMPILES)} compilation(s)")
    print(
        f"best: multiplier={best.params['multiplier']:.3g}, decay={best.params['decay']:.3g}, "
        f"validation loss {best.value:.4g}, clip rate {best.user_attrs['clip_rate']:.3f}"
    )
    assert len(COMPILES) == 1  # new hyper-parameters never recompile


if __name__ == "__main__":
    main()
