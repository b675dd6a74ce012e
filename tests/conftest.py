"""Test configuration.

Rank promotion raises, to catch shape bugs early, and dtype promotion is
strict (as in equinox's tests): adaclip's own code never relies on implicit
promotion. Where optax's own code needs standard promotion (its Adam mixes
Python floats with int32 counts), the test wraps that call alone in
``jax.numpy_dtype_promotion("standard")``.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
