# %% [markdown]
# # An LSTM reads digits row by row, with and without clipping
#
# scikit-learn's `load_digits` images (8x8 pixels, 1797 of them, shipped with
# the package: nothing is downloaded) are fed to an LSTM one row at a time:
# 8 steps of 8 pixels. Unnormalised pixel values (scaled to 0..255, like raw
# image bytes) and SGD with momentum make the gradients large and spiky, as in
# the classic Keras demonstration of `clipvalue` with an LSTM on Fashion-MNIST.
# We train the same model with no clipping, value clipping
# (`adaclip.clip_by_value`, like Keras `clipvalue`) and global norm clipping
# (`adaclip.clip_by_global_norm`), over a few seeds, and print the test
# accuracy.
#
# Run: `python examples/lstm_digits.py` (one to two minutes on 2 CPU cores);
# `--smoke` runs a few steps only.

# %%
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import adaclip


# %% The model: an LSTM cell unrolled over the 8 rows, then a linear read-out.
class RowLSTM(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        self.cell = nnx.LSTMCell(8, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, images):  # (batch, 8, 8) -> (batch, 10) logits
        zeros = jnp.zeros((images.shape[0], self.hidden))

        def step(carry, row):
            carry, _ = self.cell(carry, row)
            return carry, None

        (_, h), _ = jax.lax.scan(step, (zeros, zeros), images.swapaxes(0, 1))
        return self.head(h)


# %% Data: 1797 images, 1300 to train on and the rest to test.
def load_data():
    digits = load_digits()
    # Pixel values 0..16 scaled to 0..255, like raw image bytes, and not
    # normalised: on purpose, this is what makes the gradients large.
    images = digits.images.astype(np.float32) * (255.0 / 16.0)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    return (images[:1300], labels[:1300]), (images[1300:], labels[1300:])


# %% Training with flax.nnx.Optimizer; the clipper is the first link of the chain.
def train(clipper, steps, seed, data, lr, momentum, batch=64):
    (x_train, y_train), (x_test, y_test) = data
    model = RowLSTM(64, rngs=nnx.Rngs(seed))
    opt = optax.sgd(lr, momentum=momentum or None)
    tx = opt if clipper is None else optax.chain(clipper, opt)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(y_train), batch)
        train_step(model, optimizer, x_train[idx], y_train[idx])
    acc = float(accuracy(model, x_test, y_test))
    m = adaclip.metrics(optimizer.opt_state)
    clip_rate = float(m["clip_rate"]) if m else 0.0
    return acc, clip_rate, time.perf_counter() - start


# %%
def main(argv=None):
    parser = argparse.ArgumentParser(description="LSTM on load_digits, with and without clipping")
    parser.add_argument("--smoke", action="store_true", help="run a few steps only")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    steps, seeds = (5, 1) if args.smoke else (args.steps, args.seeds)

    strategies = {
        "no clipping": lambda: None,
        "value clipping (0.5)": lambda: adaclip.clip_by_value(0.5),
        "norm clipping (1.0)": lambda: adaclip.clip_by_global_norm(1.0),
    }
    data = load_data()
    print(f"sgd({args.lr}, momentum={args.momentum}), {steps} steps of 64 images, {seeds} seed(s)")
    print(
        f"{'strategy':<22} {'test accuracy (per seed)':<25} {'mean':>6} {'clip rate':>9} "
        f"{'time (s)':>9}"
    )
    for name, make in strategies.items():
        results = [
            train(make(), steps, seed, data, args.lr, args.momentum) for seed in range(seeds)
        ]
        accs = " ".join(f"{a:.3f}" for a, _, _ in results)
        rate = np.mean([r for _, r, _ in results])
        elapsed = sum(t for _, _, t in results)
        mean = np.mean([a for a, _, _ in results])
        print(f"{name:<22} {accs:<25} {mean:>6.3f} {rate:>9.1%} {elapsed:>9.1f}")


if __name__ == "__main__":
    main()
