"""Reading clip metrics out of any optimizer state."""

from __future__ import annotations

from typing import Any

import jax

from adaclip._clippers import ClipState

METRIC_NAMES = ("norm", "threshold", "clipped", "clip_rate", "nonfinite_count")


def _find_clip_states(tree: Any) -> list[tuple[tuple, ClipState]]:
    is_clip = lambda x: isinstance(x, ClipState)  # noqa: E731
    found = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_clip)[0]
    return [(path, leaf) for path, leaf in found if is_clip(leaf)]


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


def metrics(opt_state: Any) -> dict[str, jax.Array]:
    """The clip metrics of every adaclip clipper inside an optimizer state.

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

    Args:
        opt_state: any pytree containing adaclip clip states.

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
    """
    found = _find_clip_states(opt_state)
    if len(found) == 1:
        prefixes = [""]
    else:
        prefixes = _short_names([path for path, _ in found])
        if len(set(prefixes)) != len(prefixes) or "" in prefixes:
            prefixes = [jax.tree_util.keystr(path) for path, _ in found]
        prefixes = [p + "/" for p in prefixes]
    out: dict[str, jax.Array] = {}
    for prefix, (_, state) in zip(prefixes, found, strict=True):
        for name in METRIC_NAMES:
            out[prefix + name] = _unwrap(getattr(state, name))
    return out
