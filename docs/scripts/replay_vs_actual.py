"""How well does replay predict the clip rate of a real training run?

For each optimizer and seed: train a small MLP without clipping and record its
gradient norms; replay each rule over those norms (the *predicted* clip rate);
then train again from the same initialisation on the same batches with the
rule in the chain and read the clip rate it actually had (the *actual* clip
rate). Clipping changes the trajectory, so the norms of the second run differ
from the recorded ones and the two rates differ.

Run: ``PYTHONPATH=. python docs/scripts/replay_vs_actual.py`` (about a minute on
two CPU cores; ``--steps`` and ``--seeds`` make it shorter). It prints the
Markdown table of docs/guides/replay-vs-training.md.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaclip

RULES = {
    "fixed at the 90th percentile": None,  # filled from the recorded norms
    "ema(2.0, 0.99)": lambda: adaclip.ema(2.0, 0.99),
    "ema(1.2, 0.9)": lambda: adaclip.ema(1.2, 0.9),
    "percentile(10, 1000)": lambda: adaclip.percentile(10.0, 1000),
    "zscore()": lambda: adaclip.zscore(),
    "quantile(0.9)": lambda: adaclip.quantile(0.9),
}
OPTIMIZERS = {
    "adam(1e-2)": lambda: optax.adam(1e-2),
    "sgd(0.05, momentum=0.9)": lambda: optax.sgd(0.05, momentum=0.9),
}


def init_params(key, width=32):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (1, width)) / 1.0,
        "b1": jnp.zeros(width),
        "w2": jax.random.normal(k2, (width, 1)) / jnp.sqrt(width),
        "b2": jnp.zeros(1),
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def batches(key, steps, size=64):
    """A noisy sine; every 20th batch has its targets scaled by 10 (a gradient spike)."""
    kx, kn = jax.random.split(key)
    x = jax.random.uniform(kx, (steps, size, 1), minval=-3.0, maxval=3.0)
    y = jnp.sin(x) + 0.1 * jax.random.normal(kn, x.shape)
    spike = (jnp.arange(steps) % 20 == 19)[:, None, None]
    return x, jnp.where(spike, 10.0 * y, y)


def train(tx, params, data):
    """Runs every step in one lax.scan; returns the gradient norms and the final state."""

    def step(carry, xy):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, *xy)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), optax.tree.norm(grads)

    (params, opt_state), norms = jax.lax.scan(step, (params, tx.init(params)), data)
    return norms, opt_state


def measure(steps, seeds):
    rows = {}
    for opt_name, make_opt in OPTIMIZERS.items():
        for seed in range(seeds):
            key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
            params, data = init_params(key_init), batches(key_data, steps)
            unclipped = make_opt()
            norms, _ = jax.jit(lambda p, d, tx=unclipped: train(tx, p, d))(params, data)
            for rule_name, make_rule in RULES.items():
                if make_rule is None:
                    value = float(np.percentile(np.asarray(norms), 90))
                    rule = adaclip.fixed(value)
                else:
                    rule = make_rule()
                trace = adaclip.replay(rule, norms)
                predicted = float(jnp.mean(trace.clipped))
                tx = optax.chain(adaclip.clip_by_global_norm(rule), make_opt())
                _, state = jax.jit(lambda p, d, tx=tx: train(tx, p, d))(params, data)
                actual = float(adaclip.metrics(state)["clip_rate"])
                rows.setdefault((opt_name, rule_name), []).append((predicted, actual))
    return rows


def table(rows):
    lines = [
        "| optimizer | rule | predicted clip rate | actual clip rate | actual - predicted |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (opt_name, rule_name), pairs in rows.items():
        p, a = np.mean(np.asarray(pairs), axis=0)
        lines.append(f"| `{opt_name}` | `{rule_name}` | {p:.3f} | {a:.3f} | {a - p:+.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{args.steps} steps, mean over {args.seeds} seeds\n")
    print(table(measure(args.steps, args.seeds)))


if __name__ == "__main__":
    main()
