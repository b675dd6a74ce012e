"""Test configuration.

Rank promotion raises, to catch shape bugs early, and every test runs with
strict dtype promotion (as equinox's tests do): adaclip's own code never
relies on implicit promotion. Where optax's own code needs standard
promotion (Adam's bias correction, schedules of the int32 step), the test
wraps that call alone (tests/_standard.py). The doctests of ``adaclip/``
show user code with optax as it is, so they run with standard promotion.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield
