"""Per-device clipping inside ``jax.shard_map`` without ``axis_name``.

Each device clips its own shard (no collective), with shard_map's default
``check_vma=True``; compared per shard with optax on that shard alone. Runs in
a subprocess with 4 simulated CPU devices, so the other tests keep one device.
"""

from __future__ import annotations

import textwrap

from _subprocess import run_script

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax, adaclip
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((4,), ("d",))
    rng = np.random.default_rng(0)
    g = {"w": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(4,)) * 3, jnp.float32)}
    cases = [
        ("global", lambda: adaclip.clip_by_global_norm(1.0),
         lambda: optax.clip_by_global_norm(1.0)),
        ("leaf", lambda: adaclip.clip_by_leaf_norm(0.5), None),
        ("value", lambda: adaclip.clip_by_value(0.5), lambda: optax.clip(0.5)),
        ("global-ema", lambda: adaclip.clip_by_global_norm(adaclip.ema(1.5, 0.9)), None),
        ("autoclip", lambda: adaclip.autoclip(10.0, window=4), None),
        ("moment", lambda: adaclip.clip_by_second_moment(1.5, b2=0.5, warmup_steps=1), None),
    ]
    gs = jax.device_put(g, NamedSharding(mesh, P("d")))
    for name, make, make_ref in cases:
        tx = make()

        def per_device(g):
            state = tx.init(g)
            for _ in range(3):
                u, state = tx.update(g, state)
            return u, jnp.reshape(state.norm, (1, -1))

        u, norms = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("d"),
                                        out_specs=P("d")))(gs)
        u = jax.tree.map(np.asarray, u)
        for i in range(4):
            shard = {k: v[i:i + 1] for k, v in g.items()}
            ref_tx = make()
            state = ref_tx.init(shard)
            for _ in range(3):
                ref, state = ref_tx.update(shard, state)
            for k in g:
                np.testing.assert_allclose(u[k][i:i + 1], np.asarray(ref[k]), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(norms)[i], np.ravel(state.norm), rtol=1e-6)
            if make_ref is not None:
                ref, _ = make_ref().update(shard, None)
                for k in g:
                    np.testing.assert_allclose(u[k][i:i + 1], np.asarray(ref[k]), rtol=1e-6)
        # And reverse mode through the per-device clip.
        def loss(g):
            u, _ = per_device(g)
            return jax.lax.psum(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(u)), "d")
        grad = jax.jit(jax.shard_map(jax.grad(loss), mesh=mesh, in_specs=P("d"),
                                     out_specs=P("d")))(gs)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(grad))
        print(name, "ok")
    print("OK")
    """
)


def test_per_device_clipping_matches_optax_per_shard():
    run_script(SCRIPT, timeout=900)
