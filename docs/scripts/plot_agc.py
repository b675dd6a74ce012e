"""Trains an MLP without normalisation at a high learning rate, with and
without AGC. Writes docs/img/agc.png:

    python docs/scripts/plot_agc.py

scikit-learn's ``load_digits`` (shipped with the package, nothing is
downloaded), raw pixel values 0..16, a 64-128-128-128-128-10 ReLU MLP with
He initialisation and no normalisation layer, SGD with momentum 0.9 at
learning rate 0.2, batch 64, 600 steps. Four runs from the same
initialisation and batches:

- no clipping (``clip_by_unit_norm(math.inf, relative=True,
  nonfinite="propagate")``: monitor mode, which records each unit's ratio
  and changes nothing);
- ``optax.adaptive_grad_clip(0.01)``;
- ``adaclip.agc(0.01)``;
- ``adaclip.agc(adaclip.minimum(0.01, adaclip.percentile(90.0, 200)))``:
  AGC whose bound per unit is the smaller of 0.01 and the 90th percentile of
  that unit's last 200 ratios.

Left: the training loss. Middle: the largest and the median unit ratio
``||G_u|| / max(||W_u||, 1e-3)`` of the third hidden layer's kernel. Right:
the share of that layer's units clipped at each step, and the share whose
adaptive bound is below 0.01. The script prints each run's test accuracy,
the first step at which optax's and adaclip's losses differ by more than
1e-4 relative, and (not drawn) the test accuracy of AGC with a percentile
bound and no 0.01 ceiling (p = 50 and 90). Runs in about 40 seconds on 2
CPU cores.
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import adaclip  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img"
SIZES = (64, 128, 128, 128, 128, 10)
STEPS, BATCH, LR = 600, 64, 0.2
WATCH = "layer2/w"  # the layer whose units the middle and right panels show
ADAPTIVE = "agc(minimum(0.01, percentile(90, 200)))"
SMOOTH = 20


def smooth(x: np.ndarray) -> np.ndarray:
    """The mean of the last ``SMOOTH`` values (fewer at the start); NaN stays NaN."""
    c = np.cumsum(np.concatenate([[0.0], x]))
    n = np.minimum(np.arange(1, len(x) + 1), SMOOTH)
    return (c[1:] - c[np.arange(1, len(x) + 1) - n]) / n


def load():
    digits = load_digits()
    x = digits.data.astype(np.float32)  # raw pixels 0..16: large inputs, on purpose
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return (jnp.asarray(x[:1400]), jnp.asarray(y[:1400])), (x[1400:], y[1400:])


def init(seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), len(SIZES) - 1)
    return {
        f"layer{i}": {
            "w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a),
            "b": jnp.zeros(b),
        }
        for i, (k, a, b) in enumerate(zip(keys, SIZES[:-1], SIZES[1:], strict=True))
    }


def forward(params, x):
    n = len(SIZES) - 1
    for i in range(n):
        x = x @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def train(clip, train_set, batches):
    """The losses and, where ``clip`` is an adaclip clipper, the watched
    layer's per-unit ratio, threshold and clipped flags at every step."""
    x_train, y_train = train_set
    tx = optax.chain(clip, optax.sgd(LR, momentum=0.9))
    watched = isinstance(clip.init(init()), adaclip.ClipState)

    def body(carry, idx):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
        updates, state = tx.update(grads, state, params)
        out = {"loss": loss}
        if watched:
            m = adaclip.metrics(state, params)
            for k in ("norm", "threshold", "clipped"):
                out[k] = m[f"{k}/{WATCH}"]
        return (optax.apply_updates(params, updates), state), out

    @jax.jit
    def run(params):
        return jax.lax.scan(body, (params, tx.init(params)), batches)

    (params, _), trace = run(init())
    return params, jax.tree.map(np.asarray, trace)


def main() -> None:
    train_set, (x_test, y_test) = load()
    batches = jnp.asarray(np.random.default_rng(1).integers(0, 1400, (STEPS, BATCH)))
    runs = {
        # Monitor mode: records each unit's ratio and changes nothing, NaN included.
        "no clipping": adaclip.clip_by_unit_norm(math.inf, relative=True, nonfinite="propagate"),
        "optax.adaptive_grad_clip(0.01)": optax.adaptive_grad_clip(0.01),
        "adaclip.agc(0.01)": adaclip.agc(0.01),
        ADAPTIVE: adaclip.agc(adaclip.minimum(0.01, adaclip.percentile(90.0, 200))),
    }
    traces, accuracy = {}, {}
    for name, clip in runs.items():
        params, traces[name] = train(clip, train_set, batches)
        accuracy[name] = float(np.mean(np.argmax(forward(params, x_test), -1) == y_test))
        loss = traces[name]["loss"]
        bad = np.flatnonzero(~np.isfinite(loss))
        nan = f", first NaN loss at step {bad[0]}" if bad.size else ""
        print(
            f"{name:42s} test accuracy {accuracy[name]:.3f}, mean loss of the last 100 steps "
            f"{np.mean(loss[-100:]):.4f}{nan}"
        )
    # Not drawn: percentile bounds without the 0.01 ceiling.
    for p in (50.0, 90.0):
        name = f"agc(percentile({p:g}, 200))"
        params, trace = train(adaclip.agc(adaclip.percentile(p, 200)), train_set, batches)
        acc = float(np.mean(np.argmax(forward(params, x_test), -1) == y_test))
        print(
            f"{name:42s} test accuracy {acc:.3f}, mean loss of the last 100 steps "
            f"{np.mean(trace['loss'][-100:]):.4f} (not drawn)"
        )
    a = traces["optax.adaptive_grad_clip(0.01)"]["loss"]
    b = traces["adaclip.agc(0.01)"]["loss"]
    rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-30)
    print(
        f"optax vs adaclip.agc: largest relative loss difference over the first 20 steps "
        f"{rel[:20].max():.1e}; first step above 1e-4: {int(np.argmax(rel > 1e-4))}"
    )

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4.0), dpi=100)
    t = np.arange(STEPS)
    styles = {
        "no clipping": dict(color="0.5"),
        "optax.adaptive_grad_clip(0.01)": dict(color="C0", lw=3.0, alpha=0.45),
        "adaclip.agc(0.01)": dict(color="C1", ls="--", lw=1.0),
        ADAPTIVE: dict(color="C2", lw=1.0),
    }
    for name, trace in traces.items():
        loss = trace["loss"]
        label = f"{name}: test acc. {accuracy[name]:.3f}"
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            label += f" (NaN from step {bad[0]})"
        ax.plot(t, smooth(loss), label=label, **styles[name])
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 1e2)
    ax.set_xlabel("step")
    ax.set_title(f"training loss ({SMOOTH}-step mean), SGD + momentum, lr {LR}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, lw=0.5, which="both")

    for name, color in [("no clipping", "0.5"), ("adaclip.agc(0.01)", "C1")]:
        ratio = traces[name]["norm"]
        bx.plot(t, ratio.max(axis=-1), color=color, lw=1.0, label=f"{name}: largest unit")
        bx.plot(t, np.median(ratio, axis=-1), color=color, lw=1.0, ls=":", label="... median unit")
    bx.axhline(0.01, color="k", lw=0.8, ls="--", label=r"$\lambda = 0.01$")
    bx.set_yscale("log")
    bx.set_ylim(1e-8, 1e6)
    bx.set_xlabel("step")
    bx.set_title(rf"$\|G_u\| / \max(\|W_u\|, \epsilon)$ of the units of {WATCH}", fontsize=10)
    bx.legend(fontsize=7, loc="lower left")
    bx.grid(alpha=0.3, lw=0.5, which="both")

    tight = (traces[ADAPTIVE]["threshold"] < 0.01 * (1 - 1e-6)).mean(axis=-1)
    for name, color in [("adaclip.agc(0.01)", "C1"), (ADAPTIVE, "C2")]:
        share = traces[name]["clipped"].mean(axis=-1)
        cx.plot(t, smooth(share), color=color, lw=1.0, label=f"{name}: units clipped")
    cx.plot(t, smooth(tight), color="C3", lw=1.0, label="adaptive run: units whose bound is < 0.01")
    cx.set_ylim(0, 1.02)
    cx.set_xlabel("step")
    cx.set_ylabel("share of the layer's 128 units")
    cx.set_title(f"clipping in {WATCH} ({SMOOTH}-step mean)", fontsize=10)
    cx.legend(fontsize=7, loc="upper right")
    cx.grid(alpha=0.3, lw=0.5)

    fig.tight_layout()
    fig.savefig(OUT / "agc.png")
    plt.close(fig)
    fixed = traces["adaclip.agc(0.01)"]["clipped"].mean()
    print(
        f"{WATCH}: mean share of units clipped, adaclip.agc {fixed:.3f}, "
        f"adaptive {traces[ADAPTIVE]['clipped'].mean():.3f}; adaptive bound < 0.01 for "
        f"{tight.mean():.3f} of units on average, {tight[-100:].mean():.3f} over the last 100 steps"
    )
    print("wrote", OUT / "agc.png")


if __name__ == "__main__":
    main()
