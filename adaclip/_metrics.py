"""Reading clip metrics out of any optimizer state."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from adaclip import _blocks
from adaclip._clippers import ClipState
from adaclip._find import find_states
from adaclip._skip import SkipState

METRIC_NAMES = ("norm", "threshold", "clipped", "clip_rate", "nonfinite_count")
SKIP_METRIC_NAMES = (
    "skipped",
    "skip_count",
    "nonfinite_skip_count",
    "spike_skip_count",
    "loss_skip_count",
    "skip_reason",
)
LOSS_METRIC_NAMES = ("loss", "loss_threshold")


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _short_names(paths: list[tuple]) -> list[str]:
    """Names made of dict keys and sequence indices (partition labels, chain
    positions), leaving out the parts that every path shares."""
    kept = [
        [
            _key_name(k)
            for k in p
            if isinstance(k, jax.tree_util.DictKey | jax.tree_util.SequenceKey)
        ]
        for p in paths
    ]
    if len({len(k) for k in kept}) == 1:
        columns = list(zip(*kept, strict=True))
        differ = [len(set(col)) > 1 for col in columns]
        kept = [[c for c, d in zip(k, differ, strict=True) if d] for k in kept]
    return ["/".join(k) for k in kept]


def _unwrap(value: Any) -> jax.Array:
    """The array inside a metric field (flax ``nnx`` wraps state in Variables)."""
    leaves = jax.tree.leaves(value)
    if len(leaves) != 1:
        raise ValueError(f"expected one array in a clip metric, found {len(leaves)}.")
    return leaves[0]


def _prefixes(paths: list[tuple]) -> list[str]:
    """One key prefix per state: none for a single state, else a short path."""
    if len(paths) == 1:
        return [""]
    prefixes = _short_names(paths)
    if len(set(prefixes)) != len(prefixes) or "" in prefixes:
        prefixes = [jax.tree_util.keystr(path) for path in paths]
    return [p + "/" for p in prefixes]


# The metrics that have one entry per block (split by leaf with ``params``).
BLOCK_METRIC_NAMES = ("norm", "threshold", "clipped", "clip_rate")


def _by_leaf(state: ClipState, params: Any, prefix: str) -> dict[str, jax.Array]:
    """A per-leaf or unit-wise clipper's metrics, one entry per leaf and
    metric, keyed ``"<metric>/<leaf path>"`` and shaped like the leaf's kept
    axes."""
    described = _blocks.decode(state.blocks)
    known = {_blocks.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = [name for name, _, _ in described if name not in known]
    if missing:
        raise ValueError(
            f"params does not hold the leaves this clipper was initialised with: "
            f"{missing[:3]} not found. Pass the parameters given to init, got a tree "
            f"with {len(known)} leaves."
        )
    out: dict[str, jax.Array] = {}
    for metric in BLOCK_METRIC_NAMES:
        values = jnp.ravel(_unwrap(getattr(state, metric)))
        start = 0
        for name, shape, _ in described:
            n = math.prod(shape)
            out[f"{prefix}{metric}/{name}"] = jnp.reshape(values[start : start + n], shape)
            start += n
    out[prefix + "nonfinite_count"] = _unwrap(state.nonfinite_count)
    return out


def metrics(opt_state: Any, params: Any = None) -> dict[str, jax.Array]:
    """The clip and skip metrics of every adaclip state inside an optimizer state.

    Finds every [`adaclip.ClipState`][adaclip.ClipState], however deeply nested:
    ``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps``,
    ``optax.partition``, ``optax.masked`` and a ``flax.nnx.Optimizer``'s
    ``opt_state`` all work. Jittable: no host transfer happens here.

    With one clipper the keys are the metric names: ``norm`` (the statistic
    of the last finite step: L2 norm, or max |g| for value clipping),
    ``threshold``, ``clipped``, ``clip_rate`` (fraction of finite steps
    clipped) and ``nonfinite_count``. With several clippers each key is
    prefixed by the clipper's position, e.g. ``"0/norm"`` and ``"1/norm"`` in
    a chain, ``"hidden/norm"`` under ``optax.partition``; where those do not
    tell clippers apart the full tree path is used.

    Every [`adaclip.SkipState`][adaclip.SkipState] of
    [`adaclip.skip_bad_steps`][adaclip.skip_bad_steps] adds its counters:
    ``skipped`` (the last step), ``skip_count``, and by reason
    ``nonfinite_skip_count``, ``spike_skip_count`` and ``loss_skip_count``
    (they sum to ``skip_count``), ``skip_reason`` of the last step (0 not
    skipped, 1 non-finite statistic or loss, 2 clip statistic beyond its
    bound, 3 loss beyond its threshold) and, where it has a loss rule,
    ``loss`` and ``loss_threshold``. Several skip states are prefixed the
    same way as clippers.

    Args:
        opt_state: any pytree containing adaclip clip or skip states.

    Returns:
        A flat ``dict`` from names to arrays (empty if there is no clipper).

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = optax.chain(adaclip.clip_by_global_norm(1.0), optax.sgd(0.1))
        >>> params = {"w": jnp.zeros(2)}
        >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
        >>> m = adaclip.metrics(state)
        >>> float(m["norm"]), float(m["threshold"]), bool(m["clipped"])
        (5.0, 1.0, True)

        Per-leaf entries, by path:

        >>> tx = adaclip.clip_by_leaf_norm(1.0)
        >>> params = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
        >>> grads = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.zeros(2)}}
        >>> _, state = tx.update(grads, tx.init(params))
        >>> m = adaclip.metrics(state, params)
        >>> sorted(m)[:3]
        ['clip_rate/dense/bias', 'clip_rate/dense/kernel', 'clipped/dense/bias']
        >>> float(m["norm/dense/kernel"]), bool(m["clipped/dense/bias"])
        (4.0, False)
    """
    out: dict[str, jax.Array] = {}
    found = find_states(opt_state, ClipState)
    for prefix, (_, state) in zip(_prefixes([p for p, _ in found]), found, strict=True):
        if params is not None and state.blocks is not None:
            out.update(_by_leaf(state, params, prefix))
            continue
        for name in METRIC_NAMES:
            out[prefix + name] = _unwrap(getattr(state, name))
    skips = find_states(opt_state, SkipState)
    for prefix, (_, state) in zip(_prefixes([p for p, _ in skips]), skips, strict=True):
        names = SKIP_METRIC_NAMES
        if state.loss_rule_state is not None:
            names = names + LOSS_METRIC_NAMES
        for name in names:
            out[prefix + name] = _unwrap(getattr(state, name))
    return out
