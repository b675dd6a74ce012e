"""How much does clipping add to an Adam step? One process, interleaved, medians.

Run from the repository root::

    python benchmarks/bench.py            # full run: 1M, 10M and 100M parameters
    python benchmarks/bench.py --quick    # a smoke run in well under a minute

Every configuration is a jitted ``step(params, opt_state, grads)`` that applies
``optax.chain(clipper, optax.adam(1e-3))`` (or Adam alone) to a 50-leaf float32
tree (25 ``(rows, 256)`` matrices, 256 units each, and 25 vectors), with
``params`` and ``opt_state`` donated. ``--configs`` runs a subset. Repetitions are interleaved
(every configuration once per round, in a shuffled order) and each round's time
is divided by Adam alone's time in the same round, so slow drifts in the load
of a shared machine cancel; the tables report the median over rounds.

Sections (each can be switched off):

- ``step``: time per step as a ratio to Adam alone, at each size, plus two
  reference points: Adam with one extra read of the gradients (a reduction
  over the whole tree, the physical limit of a one-read clip) and
  ``optax.clip_by_global_norm`` + Adam. AGC's limit reads the parameters too
  (``adam + g+w read``); ``clip_by_second_moment``'s reads and writes a
  parameter-sized ``v`` (``adam + v read/write``). The targets' ratios (AGC
  to its limit and to ``optax.adaptive_grad_clip``, rms clipping to
  ``optax.clip_by_block_rms``, ...) are printed as medians of per-round
  ratios.
- ``compile``: trace + lower + compile time of each configuration on two
  500-leaf trees (500 vectors of 1 000; a transformer's leaves), each in a
  fresh process, as a ratio to ``optax.clip_by_global_norm`` + Adam, and
  each adaclip clipper that has an optax counterpart (``COUNTERPARTS``) as a
  ratio to it.
- ``rules``: the clip alone (1M parameters), with its state fast-forwarded to
  step 1e3, 1e4 and 1e5 (counters set to the step, buffers filled): the cost
  of a step must not grow with the step count. Also the state size in bytes.
- ``train``: a full train step of a ~10M-parameter Flax MLP (forward, backward,
  clip and Adam in one jit), with and without clipping.
- ``torch``: when PyTorch is importable, ``torch.nn.utils.clip_grad_norm_`` +
  fused ``torch.optim.Adam`` against fused Adam alone, at the same sizes.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import adaclip  # noqa: E402

N_LEAVES = 50


# --------------------------------------------------------------------------- configurations


def clippers() -> dict[str, Callable[[], optax.GradientTransformation] | None]:
    """Name -> factory of the clip placed before Adam (None: Adam alone)."""
    out: dict[str, Callable[[], optax.GradientTransformation] | None] = {
        "adam": None,
        "adam + 1 read": None,  # special-cased in make_step
        "optax.clip_by_global_norm": lambda: optax.clip_by_global_norm(1.0),
        "global fixed": lambda: adaclip.clip_by_global_norm(1.0),
        "global ema": lambda: adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.99)),
        "global moving_average 1000": lambda: adaclip.clip_by_global_norm(
            adaclip.moving_average(2.0, 1000)
        ),
    }
    if hasattr(adaclip, "zclip"):
        out["zclip"] = lambda: adaclip.zclip()
    if hasattr(adaclip, "autoclip"):
        out["autoclip window 1000"] = lambda: adaclip.autoclip(10.0, 1000)
        out["autoclip window 10000"] = lambda: adaclip.autoclip(10.0, 10_000)
    out["leaf fixed"] = lambda: adaclip.clip_by_leaf_norm(1.0)
    out["leaf ema"] = lambda: adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.99))
    out["value fixed"] = lambda: adaclip.clip_by_value(1.0)
    out["value ema"] = lambda: adaclip.clip_by_value(adaclip.ema(2.0, 0.99))
    if hasattr(adaclip, "clip_by_second_moment"):
        out["adam + v read/write"] = None  # special-cased in make_step
        out["second moment (SPAM)"] = lambda: adaclip.clip_by_second_moment()
    # Blocks and measures, beside their optax counterparts.
    out["unit ema"] = lambda: adaclip.clip_by_unit_norm(adaclip.ema(2.0, 0.99))
    out["adam + g+w read"] = None  # special-cased in make_step
    out["agc"] = lambda: adaclip.agc(0.01)
    out["optax.adaptive_grad_clip"] = lambda: optax.adaptive_grad_clip(0.01)
    out["leaf rms fixed"] = lambda: adaclip.clip_by_leaf_norm(1.0, rms=True)
    out["optax.clip_by_block_rms"] = lambda: optax.clip_by_block_rms(1.0)
    if ONLY:
        keep = set(ONLY) | set(ALWAYS)
        out = {k: v for k, v in out.items() if k in keep}
    return out


# ``--configs``: run only these configurations (and those of ALWAYS, which
# the ratios need).
ONLY: list[str] = []
ALWAYS = ("adam", "adam + 1 read", "optax.clip_by_global_norm")

# adaclip's configuration -> its optax counterpart (same maths), compared
# directly in the step and compile sections.
# (numerator, denominator) step-time ratios that the targets are about.
PAIRS = (
    ("agc", "adam + g+w read"),
    ("optax.adaptive_grad_clip", "agc"),
    ("agc", "adam"),
    ("optax.adaptive_grad_clip", "adam"),
    ("unit ema", "adam + 1 read"),
    ("leaf rms fixed", "adam + 1 read"),
    ("optax.clip_by_block_rms", "leaf rms fixed"),
    ("second moment (SPAM)", "adam + v read/write"),
)
PAIR_RESULTS: dict[int, dict] = {}

COUNTERPARTS = {
    "global fixed": "optax.clip_by_global_norm",
    "agc": "optax.adaptive_grad_clip",
    "leaf rms fixed": "optax.clip_by_block_rms",
}


# Reference points, not clippers: left out of the compile and rules sections.
REFERENCES = ("adam + 1 read", "adam + v read/write", "adam + g+w read")


def is_adaclip_global(name: str) -> bool:
    return name.startswith(("global", "zclip", "autoclip"))


def leaf_shapes(n_params: int, n_leaves: int = N_LEAVES) -> list[tuple[int, ...]]:
    """``n_leaves`` leaves summing to ``n_params``: matrices of 256 columns and vectors."""
    base = n_params // n_leaves
    shapes: list[tuple[int, ...]] = []
    rest = n_params - base * n_leaves
    for i in range(n_leaves):
        if i % 2 == 0 and base >= 256:
            # A (rows, 256) kernel: 256 units for the unit-wise clippers.
            shapes.append((base // 256, 256))
            rest += base % 256
        else:
            shapes.append((base,))
    if rest:
        # What the matrices left over goes to the last vector.
        shapes[-1] = (shapes[-1][0] + rest,) if len(shapes[-1]) == 1 else shapes[-1]
    return shapes


def make_tree(shapes, seed: int, scale: float = 1.0) -> list[jax.Array]:
    key = jax.random.key(seed)
    keys = jax.random.split(key, len(shapes))
    return [scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes, strict=True)]


def make_tx(name: str, factory) -> optax.GradientTransformation:
    adam = optax.adam(1e-3)
    return adam if factory is None else optax.chain(factory(), adam)


def make_step(name: str, tx: optax.GradientTransformation):
    """The jitted step; ``params`` and ``opt_state`` are donated."""
    if name == "adam + 1 read":

        def step(params, opt_state, grads):
            # One extra read of the whole gradient tree (a sum of squares), which
            # Adam must wait for, as it waits for a clip's norm: a factor that is
            # always 1 but that XLA cannot drop. Without that dependence XLA
            # fuses the reduction into Adam's loops, which is much slower on CPU.
            sumsq = sum(jnp.sum(jnp.square(g)) for g in grads)
            one = jnp.where(jnp.isnan(sumsq), 0.0, 1.0)
            grads = [g * one for g in grads]
            updates, adam_state = tx.update(grads, opt_state[0], params)
            return optax.apply_updates(params, updates), (adam_state, sumsq)

        def init(params):
            return (tx.init(params), jnp.zeros([], jnp.float32))

    elif name == "adam + g+w read":

        def step(params, opt_state, grads):
            # The limit of a clip relative to the parameters (AGC): one extra
            # read of the gradients and of the parameters, which Adam waits
            # for, as it waits for the clip's factors (see "adam + 1 read").
            sumsq = sum(jnp.sum(jnp.square(g)) for g in grads)
            sumsq = sumsq + sum(jnp.sum(jnp.square(p)) for p in params)
            one = jnp.where(jnp.isnan(sumsq), 0.0, 1.0)
            grads = [g * one for g in grads]
            updates, adam_state = tx.update(grads, opt_state[0], params)
            return optax.apply_updates(params, updates), (adam_state, sumsq)

        def init(params):
            return (tx.init(params), jnp.zeros([], jnp.float32))

    elif name == "adam + v read/write":

        def step(params, opt_state, grads):
            # The limit of an element-wise clip against a parameter-sized v:
            # one more array read and written in Adam's loop. The gradient
            # Adam sees depends on v element by element (a min that is never
            # active but that XLA cannot drop), as a clipped gradient does.
            adam_state, vs = opt_state
            grads = [jnp.minimum(g, 1e30 + v) for g, v in zip(grads, vs, strict=True)]
            vs = [0.999 * v + 0.001 * g * g for g, v in zip(grads, vs, strict=True)]
            updates, adam_state = tx.update(grads, adam_state, params)
            return optax.apply_updates(params, updates), (adam_state, vs)

        def init(params):
            return (tx.init(params), [jnp.zeros_like(p) for p in params])

    else:

        def step(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        init = tx.init
    return jax.jit(step, donate_argnums=(0, 1)), init


# --------------------------------------------------------------------------- timing helpers


def block(x):
    jax.block_until_ready(x)
    return x


def median(xs):
    return statistics.median(xs)


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.2f}"


# --------------------------------------------------------------------------- sections


def bench_steps(sizes, rounds: int, steps: int, seed: int) -> dict:
    """Per-step time of every configuration, interleaved rounds, at each size."""
    configs = clippers()
    results = {}
    for n_params in sizes:
        shapes = leaf_shapes(n_params)
        grads = make_tree(shapes, seed, scale=1e-3)
        params = make_tree(shapes, seed + 1)
        fns = {}
        for name, factory in configs.items():
            tx = make_tx(name, factory)
            fn, init = make_step(name, tx)
            # Compile once, untimed (the compile section times compilation).
            state = init(params)
            fns[name] = (fn, init, fn.lower(params, state, grads).compile())
            del state
        times: dict[str, list[float]] = {name: [] for name in configs}
        rng = random.Random(seed)
        for _ in range(rounds):
            order = list(configs)
            rng.shuffle(order)
            for name in order:
                _, init, compiled = fns[name]
                state = block(init(params))
                params, state = block(compiled(params, state, grads))  # warm-up
                t0 = time.perf_counter()
                for _ in range(steps):
                    params, state = compiled(params, state, grads)
                block((params, state))
                times[name].append((time.perf_counter() - t0) / steps)
                del state
            gc.collect()
        ratios = {
            name: [t / a for t, a in zip(times[name], times["adam"], strict=True)]
            for name in configs
        }
        results[n_params] = {name: (median(times[name]), median(ratios[name])) for name in configs}
        # Direct comparisons, as medians of per-round ratios (numerator /
        # denominator, both timed in the same round).
        pairs = {}
        for num, den in PAIRS:
            if num in times and den in times:
                pairs[num, den] = median(
                    [a / b for a, b in zip(times[num], times[den], strict=True)]
                )
        PAIR_RESULTS[n_params] = pairs
        del params, grads, fns
        gc.collect()
    return results


def print_steps(results: dict) -> None:
    sizes = list(results)
    names = list(results[sizes[0]])
    head = f"{'configuration':<30}" + "".join(
        f"{_size_name(n) + ' ms':>11}{'x adam':>8}{'x limit':>8}" for n in sizes
    )
    print(head)
    print("-" * len(head))
    for name in names:
        row = f"{name:<30}"
        for n in sizes:
            t, r = results[n][name]
            limit = results[n]["adam + 1 read"][1]
            row += f"{fmt_ms(t):>11}{r:8.3f}{r / limit:8.3f}"
        print(row)
    print()
    for n in sizes:
        opt = results[n]["optax.clip_by_global_norm"][1]
        limit = results[n]["adam + 1 read"][1]
        glob = {k: v[1] for k, v in results[n].items() if is_adaclip_global(k)}
        if glob:
            worst = max(glob, key=glob.get)
            print(
                f"{_size_name(n)}: worst adaclip global clipper + adam = {glob[worst]:.3f}x adam "
                f"({worst}), {glob[worst] / limit:.3f}x the one-read limit; "
                f"optax.clip_by_global_norm + adam / it = {opt / glob[worst]:.2f}"
            )
        for (num, den), r in PAIR_RESULTS.get(n, {}).items():
            print(f"{_size_name(n)}: ({num}) / ({den}) = {r:.3f}  (median of per-round ratios)")
        if "second moment (SPAM)" in results[n]:
            moment = results[n]["second moment (SPAM)"][1]
            v_limit = results[n]["adam + v read/write"][1]
            print(
                f"{_size_name(n)}: clip_by_second_moment + adam = {moment:.3f}x adam, "
                f"{moment / v_limit:.3f}x the limit of adam + one read and write of v"
            )
        if "autoclip window 10000" in results[n]:
            extra = results[n]["autoclip window 10000"][1] - results[n]["global fixed"][1]
            print(
                f"{_size_name(n)}: autoclip window 10000 adds {100 * extra:+.1f}% of an adam step "
                "over the fixed-threshold global clip"
            )
    print()


def _size_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


COMPILE_TREES = ("uniform", "transformer")


def compile_shapes(tree: str, n_leaves: int) -> list[tuple[int, ...]]:
    """The compile section's trees: ``uniform`` is ``n_leaves`` vectors of 1 000
    (many small leaves: XLA fuses all their last reduction stages into one
    kernel), ``transformer`` repeats the 12 leaves of a width-256 transformer
    block (layer norms, attention, MLP; weights and biases) up to ``n_leaves``."""
    if tree == "uniform":
        return [(1000,)] * n_leaves
    d = 256
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,)]
    block += [(4 * d, d), (d,)]
    return [block[i % len(block)] for i in range(n_leaves)]


def compile_one(name: str, tree: str, n_leaves: int) -> float:
    """Trace + lower + compile time of one configuration, from abstract shapes."""
    factory = {k: v for k, v in clippers().items() if k not in REFERENCES}[name]
    tx = make_tx(name, factory)
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in compile_shapes(tree, n_leaves)]
    state = jax.eval_shape(tx.init, params)

    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return time.perf_counter() - t0


def bench_compile(rounds: int, n_leaves: int = 500) -> dict:
    """Compile times, each in a fresh process (nothing cached from an earlier
    compile), interleaved and shuffled; medians of per-round ratios to
    ``optax.clip_by_global_norm``'s time on the same tree in the same round."""
    names = [k for k in clippers() if k not in REFERENCES]
    times = {(n, t): [] for n in names for t in COMPILE_TREES}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(times)
        rng.shuffle(order)
        for name, tree in order:
            out = subprocess.run(
                [sys.executable, __file__, "--compile-one", name, tree, str(n_leaves)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            times[name, tree].append(float(out.split()[-1]))
    results = {}
    for (name, tree), ts in times.items():
        ref = times["optax.clip_by_global_norm", tree]
        ratio = median([t / r for t, r in zip(ts, ref, strict=True)])
        results[name, tree] = (median(ts), ratio)
    pairs = {
        (ours, theirs, tree): median(
            [a / b for a, b in zip(times[ours, tree], times[theirs, tree], strict=True)]
        )
        for ours, theirs in COUNTERPARTS.items()
        for tree in COMPILE_TREES
        if (ours, tree) in times and (theirs, tree) in times
    }
    return results, pairs


def print_compile_pairs(pairs: dict) -> None:
    for (ours, theirs, tree), r in pairs.items():
        print(f"compile, {tree} tree: ({ours}) / ({theirs}) = {r:.2f}  (median per-round ratio)")
    print()


def print_compile(results: dict, n_leaves: int = 500) -> None:
    print(f"compile time (trace + lower + compile, fresh process each), {n_leaves}-leaf trees")
    head = "".join(f"{t + ' s':>14}{'x optax':>9}" for t in COMPILE_TREES)
    print(f"{'configuration':<30}{head}")
    names = dict.fromkeys(name for name, _ in results)
    for name in names:
        cells = [results[name, t] for t in COMPILE_TREES]
        row = "".join(f"{seconds:14.2f}{ratio:9.2f}" for seconds, ratio in cells)
        print(f"{name:<30}{row}")
    print()


def _fast_forward(state, step: int, seed: int):
    """The state with every int32 scalar (a counter) set to ``step`` and every
    float32 array filled with positive values, as after ``step`` steps."""
    rng = np.random.default_rng(seed)

    def fill(x):
        x = jnp.asarray(x)
        if x.dtype == jnp.int32 and x.ndim == 0:
            return jnp.int32(step)
        if x.dtype == jnp.float32:
            return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32)
        return x

    return jax.tree.map(fill, state)


def bench_rules(rounds: int, steps: int, n_params: int = 1_000_000) -> dict:
    """The clip alone, its state at step 1e3, 1e4, 1e5; and the state's size."""
    # adaclip's clippers alone (AGC needs the parameters: it runs in the
    # steps' section only).
    configs = {
        k: v
        for k, v in clippers().items()
        if v is not None and not k.startswith("optax.") and k != "agc"
    }
    shapes = leaf_shapes(n_params)
    grads = make_tree(shapes, 0, scale=1e-3)
    at = (1_000, 10_000, 100_000)
    fns, states, sizes = {}, {}, {}
    for name, factory in configs.items():
        tx = factory()
        state = tx.init(grads)
        sizes[name] = sum(x.nbytes for x in jax.tree.leaves(state))
        fns[name] = jax.jit(tx.update, donate_argnums=(1,)).lower(grads, state).compile()
        for s in at:
            states[name, s] = _fast_forward(state, s, s)
    times = {(name, s): [] for name in configs for s in at}
    rng = random.Random(1)
    keys = list(times)
    for _ in range(rounds):
        rng.shuffle(keys)
        for key in keys:
            fn = fns[key[0]]
            state = jax.tree.map(jnp.copy, states[key])
            _, state = block(fn(grads, state))
            t0 = time.perf_counter()
            for _ in range(steps):
                out, state = fn(grads, state)
            block((out, state))
            times[key].append((time.perf_counter() - t0) / steps)
    return {name: ([median(times[name, s]) for s in at], sizes[name]) for name in configs}


def print_rules(results: dict, n_params: int = 1_000_000) -> None:
    print(f"the clip alone on {_size_name(n_params)} parameters, state fast-forwarded to step:")
    print(f"{'configuration':<30}{'1e3 ms':>9}{'1e4 ms':>9}{'1e5 ms':>9}{'state bytes':>13}")
    for name, (ts, size) in results.items():
        print(f"{name:<30}" + "".join(f"{fmt_ms(t):>9}" for t in ts) + f"{size:13d}")
    print()


def bench_train(rounds: int, steps: int, batch: int, width: int, depth: int) -> dict:
    """A full Flax MLP train step, loss + grad + clip + Adam in one jit."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    model = MLP()
    x = jax.random.normal(jax.random.key(0), (batch, width), jnp.float32)
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    params0 = model.init(jax.random.key(2), x)["params"]
    n_params = sum(p.size for p in jax.tree.leaves(params0))

    def loss_fn(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    configs = {
        "no clip": None,
        "optax.clip_by_global_norm": lambda: optax.clip_by_global_norm(1.0),
        "adaclip global fixed": lambda: adaclip.clip_by_global_norm(1.0),
        "adaclip global ema": lambda: adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.99)),
    }
    if hasattr(adaclip, "autoclip"):
        configs["adaclip autoclip 10000"] = lambda: adaclip.autoclip(10.0, 10_000)
    fns = {}
    for name, factory in configs.items():
        tx = make_tx(name, factory)

        def step(params, opt_state, tx=tx):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        jitted = jax.jit(step, donate_argnums=(0, 1))
        fns[name] = (tx, jitted.lower(params0, tx.init(params0)).compile())
    params = jax.tree.map(jnp.copy, params0)
    times: dict[str, list[float]] = {name: [] for name in configs}
    rng = random.Random(2)
    for _ in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            tx, fn = fns[name]
            state = tx.init(params)
            params, state, _ = block(fn(params, state))
            t0 = time.perf_counter()
            for _ in range(steps):
                params, state, loss = fn(params, state)
            block((params, state, loss))
            times[name].append((time.perf_counter() - t0) / steps)
    ref = times["no clip"]
    return {
        "n_params": n_params,
        "batch": batch,
        "rows": {
            name: (median(ts), median([t / r for t, r in zip(ts, ref, strict=True)]))
            for name, ts in times.items()
        },
    }


def print_train(results: dict) -> None:
    print(
        f"full train step, Flax MLP, {results['n_params'] / 1e6:.1f}M parameters, "
        f"batch {results['batch']} (forward + backward + clip + adam, one jit)"
    )
    print(f"{'configuration':<30}{'ms':>9}{'x no clip':>11}")
    for name, (t, r) in results["rows"].items():
        print(f"{name:<30}{fmt_ms(t):>9}{r:11.3f}")
    print()


def bench_torch(sizes, rounds: int, steps: int) -> dict | None:
    """``clip_grad_norm_`` + fused Adam against fused Adam alone, interleaved."""
    try:
        import torch
    except ImportError:
        return None
    results = {}
    for n_params in sizes:
        shapes = leaf_shapes(n_params)
        gen = torch.Generator().manual_seed(0)
        configs = ("fused adam", "clip_grad_norm_ + fused adam")
        setups = {}
        for name in configs:
            ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
            for p in ps:
                p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
            opt = torch.optim.Adam(ps, lr=1e-3, fused=True)
            setups[name] = (ps, opt)
        times: dict[str, list[float]] = {name: [] for name in configs}
        rng = random.Random(3)

        def run(name, setups=setups):
            ps, opt = setups[name]
            if name != "fused adam":
                torch.nn.utils.clip_grad_norm_(ps, 1.0)
            opt.step()

        for name in configs:
            run(name)  # warm-up, allocates the moments
        for _ in range(rounds):
            order = list(configs)
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                for _ in range(steps):
                    run(name)
                times[name].append((time.perf_counter() - t0) / steps)
        ref = times["fused adam"]
        results[n_params] = {
            name: (median(ts), median([t / r for t, r in zip(ts, ref, strict=True)]))
            for name, ts in times.items()
        }
        del setups
        gc.collect()
    return results


def print_torch(results: dict) -> None:
    import torch

    print(f"PyTorch {torch.__version__} peer (CPU, {torch.get_num_threads()} threads)")
    for n, rows in results.items():
        for name, (t, r) in rows.items():
            print(f"{_size_name(n):>5} {name:<32}{fmt_ms(t)} ms{r:8.3f}x fused adam")
    print()


# --------------------------------------------------------------------------- main


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1M,10M,100M", help="comma-separated parameter counts")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per size")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--quick", action="store_true", help="small and fast: a smoke run")
    p.add_argument(
        "--sections",
        default="step,compile,rules,train,torch",
        help="any of step,compile,rules,train,torch",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-rounds", type=int, default=3, help="rounds of the compile section")
    p.add_argument("--compile-leaves", type=int, default=500, help="leaves of the compile trees")
    p.add_argument(
        "--configs",
        default="",
        help="comma-separated configuration names to run (default: all); "
        + ", ".join(repr(a) for a in ALWAYS)
        + " always run",
    )
    p.add_argument("--compile-one", nargs=3, help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args(argv)
    known = set(clippers())
    ONLY[:] = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(ONLY) - known
    if unknown:
        p.error(f"unknown --configs {sorted(unknown)}; known: {sorted(known)}")
    if args.compile_one:
        name, tree, n_leaves = args.compile_one
        print(f"{compile_one(name, tree, int(n_leaves)):.4f}")
        return
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    rounds, steps = args.rounds, args.steps
    compile_rounds, train = args.compile_rounds, dict(batch=128, width=1024, depth=9)
    if args.quick:
        sizes, rounds, steps, compile_rounds = [100_000], 3, 2, 1
        train = dict(batch=8, width=64, depth=2)
    sections = set(args.sections.split(","))

    print(
        f"adaclip benchmark: jax {jax.__version__}, optax {optax.__version__}, "
        f"backend {jax.default_backend()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{N_LEAVES}-leaf float32 trees, jitted step with donated params and state; "
        f"{rounds} interleaved rounds x {steps} steps; medians of per-round ratios"
    )
    print()
    if "step" in sections:
        # One size at a time, so that a long run shows its results as it goes.
        for n in sizes:
            print_steps(bench_steps([n], rounds, steps, args.seed))
            sys.stdout.flush()
    if "compile" in sections:
        n_leaves = 50 if args.quick else args.compile_leaves
        res, pairs = bench_compile(compile_rounds, n_leaves=n_leaves)
        print_compile(res, n_leaves)
        print_compile_pairs(pairs)
        sys.stdout.flush()
    if "rules" in sections:
        n = 100_000 if args.quick else 1_000_000
        print_rules(bench_rules(rounds, steps, n), n)
        sys.stdout.flush()
    if "train" in sections:
        print_train(bench_train(rounds, steps, **train))
    if "torch" in sections:
        res = bench_torch(sizes, rounds, steps)
        if res is not None:
            print_torch(res)
        else:
            print("PyTorch not installed: peer skipped\n")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
