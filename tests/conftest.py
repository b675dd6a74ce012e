"""Test configuration.

Rank promotion raises, to catch shape bugs early. (Strict dtype promotion, as
equinox uses, is not possible: optax's own Adam mixes Python floats with int32
counts.)"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
