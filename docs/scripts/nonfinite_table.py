"""Runs optax, a torch-style clip and adaclip on bad gradients; writes a table.

Each case is one gradient step with a fixed threshold. The optax and adaclip
columns run the libraries; the torch column evaluates the formula of
``torch.nn.utils.clip_grad_norm_`` (``g * min(1, c / (norm + 1e-6))``, the
norm computed in the gradient's dtype) with NumPy, since torch is not a
dependency here. The table goes between the markers in docs/nonfinite.md:

    python docs/scripts/nonfinite_table.py          # print it
    python docs/scripts/nonfinite_table.py --write  # update docs/nonfinite.md
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np
import optax

import adaclip

PAGE = pathlib.Path(__file__).resolve().parents[1] / "nonfinite.md"
START, END = "<!-- nonfinite-table:start -->", "<!-- nonfinite-table:end -->"

# (description, gradient, threshold)
CASES = [
    ("a NaN element", np.array([3.0, np.nan, 4.0], np.float32), 1.0),
    ("an Inf element", np.array([3.0, np.inf, 4.0], np.float32), 1.0),
    ("float32 elements of 1e20 (norm ≈ 1.4e20)", np.array([1e20, 1e20], np.float32), 1.0),
    ("float16, norm 7.1e4 > 65504", np.array([5e4, 5e4], np.float16), 1.0),
    ("threshold 0, zero gradient", np.zeros(2, np.float32), 0.0),
    ("norm 5, threshold 1 (ordinary)", np.array([3.0, 4.0], np.float32), 1.0),
]


def fmt(x: np.ndarray) -> str:
    x = np.asarray(x, np.float64)
    return "[" + ", ".join(f"{v:.3g}" for v in x) + "]"


def torch_style(g: np.ndarray, c: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        norm = np.sqrt(np.sum(np.square(g)))  # in g's dtype, as torch does
        coef = min(np.float32(c) / (np.float32(norm) + np.float32(1e-6)), np.float32(1.0))
        return (g * np.asarray(coef, g.dtype)).astype(g.dtype)


def optax_clip(g: np.ndarray, c: float) -> np.ndarray:
    tx = optax.clip_by_global_norm(c)
    out, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)))
    return np.asarray(out)


def adaclip_clip(g: np.ndarray, c: float) -> tuple[np.ndarray, dict]:
    tx = adaclip.clip_by_global_norm(c)
    out, state = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)))
    m = adaclip.metrics(state)
    return np.asarray(out), {k: np.asarray(v) for k, v in m.items()}


def table() -> str:
    rows = [
        "| gradient | `optax.clip_by_global_norm` | torch `clip_grad_norm_` (formula) "
        "| `adaclip.clip_by_global_norm` | adaclip metrics after the step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, g, c in CASES:
        out, m = adaclip_clip(g, c)
        metrics = (
            f"norm {float(m['norm']):.3g}, nonfinite_count {int(m['nonfinite_count'])}, "
            f"clipped {bool(m['clipped'])}"
        )
        rows.append(
            f"| {name} | {fmt(optax_clip(g, c))} | {fmt(torch_style(g, c))} | {fmt(out)} "
            f"| {metrics} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update docs/nonfinite.md")
    args = parser.parse_args()
    text = table()
    if not args.write:
        print(text)
        return
    page = PAGE.read_text()
    head, rest = page.split(START)
    _, tail = rest.split(END)
    PAGE.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(f"updated {PAGE}")


if __name__ == "__main__":
    main()
