"""Per-step cost of ``percentile`` (AutoClip's rule) relative to a fixed threshold.

Times one jitted ``update`` of ``clip_by_global_norm(percentile(10, w))`` for
w = 1_000 and 10_000 against ``clip_by_global_norm(fixed(1.0))`` on the same
gradients, in one process, with the variants interleaved in every repetition
and the median of the per-repetition ratios taken. The percentile window is
filled first (the steady state, where every step evicts a value). Run:

    python benchmarks/percentile_cost.py [--params 1000000] [--reps 31]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import adaclip


def _grads(n_params: int, key: jax.Array) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    width = max(1, int((n_params / 2) ** 0.5))
    return {
        "w1": jax.random.normal(k1, (width, width)),
        "w2": jax.random.normal(k2, (width, width)),
        "b": jax.random.normal(k3, (width,)),
    }


def _timed(step, grads, state, iters: int) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(iters):
        updates, state = step(grads, state)
    jax.block_until_ready((updates, state))
    return (time.perf_counter() - start) / iters, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()

    grads = _grads(args.params, jax.random.PRNGKey(0))
    n = sum(x.size for x in jax.tree.leaves(grads))
    variants = {
        "fixed(1.0)": adaclip.clip_by_global_norm(adaclip.fixed(1.0)),
        "percentile(10, 1_000)": adaclip.clip_by_global_norm(adaclip.percentile(10.0, 1_000)),
        "percentile(10, 10_000)": adaclip.clip_by_global_norm(adaclip.percentile(10.0, 10_000)),
    }
    steps, states = {}, {}
    for name, tx in variants.items():
        # Donate the state so the ring buffer is updated in place, as in training.
        steps[name] = jax.jit(tx.update, donate_argnums=1)
        state = jax.tree.map(jnp.copy, tx.init(grads))  # no shared buffers to donate
        if "percentile" in name:  # fill the window: the steady state evicts every step
            fill = jax.jit(
                lambda s, tx=tx: jax.lax.fori_loop(
                    0, 10_000, lambda i, s: tx.update(grads, s)[1], s
                )
            )
            state = fill(state)
        _, state = _timed(steps[name], grads, state, 3)  # compile and warm up
        states[name] = state

    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name in variants:  # interleaved
            t, states[name] = _timed(steps[name], grads, states[name], args.iters)
            times[name].append(t)

    base = times["fixed(1.0)"]
    print(f"device: {jax.devices()[0].device_kind}; gradient elements: {n:,}")
    print(f"reps: {args.reps} x {args.iters} steps; medians over reps")
    for name in variants:
        med = statistics.median(times[name])
        # The ratio within each repetition (the variants ran back to back), then
        # its median: robust to load that drifts during the run.
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        extra = statistics.median(t - b for t, b in zip(times[name], base, strict=True))
        print(
            f"  {name:24s} {med * 1e6:9.1f} us/step   ratio to fixed: {ratio:5.2f}"
            f"   extra: {extra * 1e6:+7.1f} us"
        )


if __name__ == "__main__":
    main()
