"""Makes the plots of docs/tuning.md from a real (small) training run.

    PYTHONPATH=. python docs/scripts/plot_tuning.py

Trains a linear model with Adam on batches of which one in 50 is corrupted,
with a shift of the targets' scale at step 600, records the clip metrics
with adaclip.tuning.Recorder, then replays and sweeps rules over the recorded norms.
"""

import pathlib
import tempfile

import jax
import jax.numpy as jnp
import matplotlib
import optax

import adaclip
import adaclip.tuning

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "img"
STEPS, SHIFT = 1200, 600


def record_run(path):
    dim = 32
    params = {"w": jnp.zeros(dim), "b": jnp.zeros(())}
    tx = optax.chain(adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.99)), optax.adam(1e-2))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key, i):
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (32, dim))
        scale = jnp.where(i >= SHIFT, 5.0, 1.0)  # the data changes at step 600
        y = scale * (x @ jnp.linspace(-1, 1, dim) + 0.5 * jax.random.normal(kn, (32,)))
        y = jnp.where(i % 50 == 49, 30.0 * y, y)  # a corrupted batch
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
        grads = jax.tree.map(lambda g: jnp.where(i == 300, jnp.nan, g), grads)  # one NaN step
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    recorder = adaclip.tuning.Recorder()
    key = jax.random.PRNGKey(0)
    for i in range(STEPS):
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, sub, i)
        recorder.record(adaclip.metrics(opt_state), loss=loss)
    return recorder.save(path)


def main():
    OUT.mkdir(exist_ok=True)
    path = record_run(pathlib.Path(tempfile.mkdtemp()) / "run.csv")
    data = adaclip.tuning.load_record(path)
    norms = data["norm"]

    fixed_value = adaclip.tuning.suggest_fixed(norms[:SHIFT], 90)
    rules = {
        f"fixed({fixed_value:.3g}) (90th percentile)": adaclip.fixed(fixed_value),
        "ema(2.0, 0.99)": adaclip.ema(2.0, 0.99),
        "autoclip: percentile(10, 10000)": adaclip.percentile(10.0, 10_000),
        "zscore(0.97, 2.5, 25)": adaclip.zscore(0.97, 2.5, 25),
    }
    fig, axes = plt.subplots(len(rules), 1, figsize=(9, 2.4 * len(rules)), sharex=True)
    for ax, (label, rule) in zip(axes, rules.items(), strict=True):
        trace = adaclip.replay(rule, norms)
        adaclip.tuning.plot_trace(norms, trace, ax=ax, label=label, loss=data["loss"])
        print(label, adaclip.tuning.summarize(trace, shift_at=SHIFT))
    for ax in axes[:-1]:
        ax.set_xlabel("")
    fig.tight_layout()
    fig.savefig(OUT / "tuning_replay.png", dpi=90)

    table = adaclip.tuning.sweep(
        adaclip.ema,
        norms,
        {"multiplier": [1.25, 1.5, 2.0, 3.0, 5.0], "decay": [0.9, 0.95, 0.99, 0.995]},
        shift_at=SHIFT,
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    adaclip.tuning.plot_sweep(table, "multiplier", "decay", "clip_rate", ax=axes[0])
    adaclip.tuning.plot_sweep(table, "multiplier", "decay", "steps_to_adapt", ax=axes[1])
    fig.tight_layout()
    fig.savefig(OUT / "tuning_sweep.png", dpi=90)
    print(adaclip.tuning.format_table(table))


if __name__ == "__main__":
    main()
