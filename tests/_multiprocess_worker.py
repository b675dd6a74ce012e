"""One of two processes of a ``jax.distributed`` run; run by tests/test_multiprocess.py.

``python _multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR``

Each process owns 4 simulated CPU devices; together they form one global mesh
of 8 devices, with gloo as the CPU collectives. Every gradient leaf is sharded
over that mesh along its first axis (``NamedSharding``), so no process holds a
whole leaf, and each transformation's ``update`` runs under plain
``jax.jit``. Per step, the process gathers the global updates and metrics with
``process_allgather`` and writes them to ``OUT_DIR/process_<id>.npz``; the
test compares both processes' files with an independent NumPy reference.

The test imports this module for ``gradients`` and the constants, so JAX is
imported only in ``main`` (after the device count is set).
"""

import os
import sys

import numpy as np

LOCAL_DEVICES = 4
STEPS = 6
# The transformations, by name: clipper, rule ("fixed" or EMA multiplier and
# decay) and threshold.
FIXED_GLOBAL, EMA_GLOBAL, FIXED_LEAF, FIXED_VALUE = 2.0, (1.5, 0.9), 1.5, 0.8
NAMES = ("global-fixed", "global-ema", "leaf-fixed", "value-fixed")
SHAPES = {"b": (8,), "v": (16, 3), "w": (24, 5)}


def gradients(step):
    """The same global gradients in every process (and in the test)."""
    rng = np.random.default_rng(1000 + step)
    scale = 4.0 if step == 3 else 1.0  # one spike
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def main():
    process_id, num_processes, port, out_dir = sys.argv[1:5]
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}"
    ).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import adaclip

    transformations = {
        "global-fixed": adaclip.clip_by_global_norm(FIXED_GLOBAL),
        "global-ema": adaclip.clip_by_global_norm(adaclip.ema(*EMA_GLOBAL)),
        "leaf-fixed": adaclip.clip_by_leaf_norm(FIXED_LEAF),
        "value-fixed": adaclip.clip_by_value(FIXED_VALUE),
    }
    assert tuple(transformations) == NAMES
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    assert jax.process_count() == int(num_processes)
    assert jax.local_device_count() == LOCAL_DEVICES
    devices = np.array(jax.devices())
    assert devices.size == LOCAL_DEVICES * int(num_processes)
    mesh = Mesh(devices, ("d",))
    sharded = NamedSharding(mesh, P("d"))

    def global_tree(tree):
        return {
            k: jax.make_array_from_callback(v.shape, sharded, lambda idx, v=v: v[idx])
            for k, v in tree.items()
        }

    params = global_tree({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    results = {}
    for name, tx in transformations.items():
        state = jax.jit(tx.init)(params)
        update = jax.jit(tx.update)
        per_step = []
        for step in range(STEPS):
            grads = global_tree(gradients(step))
            updates, state = update(grads, state)
            # The updates keep the gradients' sharding: no process gathers a leaf.
            for leaf in jax.tree.leaves(updates):
                assert not leaf.is_fully_addressable
                assert leaf.sharding.is_equivalent_to(sharded, leaf.ndim)
            per_step.append({"updates": updates, "metrics": adaclip.metrics(state)})
        # One gather of every step's global arrays.
        gathered = multihost_utils.process_allgather(per_step, tiled=True)
        for step, tree in enumerate(gathered):
            for kind, values in tree.items():
                for k, v in values.items():
                    results[f"{name}/{step}/{kind}/{k}"] = np.asarray(v)
    np.savez(os.path.join(out_dir, f"process_{process_id}.npz"), **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
