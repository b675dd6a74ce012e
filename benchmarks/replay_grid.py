"""Times a grid of 1_000 rule configurations replayed over a 10_000-step trace.

    PYTHONPATH=. python benchmarks/replay_grid.py            # ema, 40 x 25 grid
    PYTHONPATH=. python benchmarks/replay_grid.py --rule moving_average

Prints the compile time (first call) and the best of a few runs after it.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaclip

RULES = {
    # name -> (rule from two traced hyper-parameters, grid of the first, of the second)
    "ema": (
        lambda a, b: adaclip.ema(a, b),
        np.linspace(1.1, 5.0, 40),
        np.linspace(0.9, 0.999, 25),
    ),
    "moving_average": (
        lambda a, b: adaclip.moving_average(a, 100),
        np.linspace(1.1, 5.0, 40),
        np.zeros(25),
    ),
    "quantile": (
        lambda a, b: adaclip.quantile(a, learning_rate=b),
        np.linspace(0.5, 0.99, 40),
        np.linspace(0.01, 0.5, 25),
    ),
    "zscore": (
        lambda a, b: adaclip.zscore(b, a, 25),
        np.linspace(1.5, 4.0, 40),
        np.linspace(0.9, 0.99, 25),
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rule", default="ema", choices=sorted(RULES))
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    make, xs, ys = RULES[args.rule]
    a, b = (g.reshape(-1).astype(np.float32) for g in np.meshgrid(xs, ys, indexing="ij"))
    rng = np.random.default_rng(0)
    norms = np.exp(rng.normal(0, 0.5, args.steps)).astype(np.float32)
    norms[args.steps // 2 :] *= 4.0

    @jax.jit
    def grid(a, b, norms):
        trace = jax.vmap(lambda a, b: adaclip.replay(make(a, b), norms))(a, b)
        return trace.clipped.mean(axis=1), trace.threshold.mean(axis=1)

    args_ = (jnp.asarray(a), jnp.asarray(b), jnp.asarray(norms))
    start = time.perf_counter()
    jax.block_until_ready(grid(*args_))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rate, _ = jax.block_until_ready(grid(*args_))
        times.append(time.perf_counter() - start)
    print(
        f"{args.rule}: {len(a)} configurations x {args.steps} steps on {jax.devices()[0]}: "
        f"first call (with compile) {first:.2f} s, then best {min(times):.3f} s "
        f"(clip rates {float(rate.min()):.3f}..{float(rate.max()):.3f})"
    )


if __name__ == "__main__":
    main()
