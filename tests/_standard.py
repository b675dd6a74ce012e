"""optax code that needs standard dtype promotion, for the strict test suite.

The tests run with ``jax_numpy_dtype_promotion="strict"`` (tests/conftest.py)
so that adaclip's own code never relies on implicit promotion. optax's own
code does (Adam's bias correction raises a Python float to an int32 count, a
schedule multiplies its int32 step by a float), so exactly those calls are
traced under standard promotion here, and nothing of adaclip's.
"""

import functools

import jax
import optax


def _under(mode: str, init, update) -> optax.GradientTransformationExtraArgs:
    """``init`` and ``update`` traced under ``mode`` dtype promotion."""

    def init_fn(params):
        with jax.numpy_dtype_promotion(mode):
            return init(params)

    def update_fn(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion(mode):
            return update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _promoted(mode: str, tx: optax.GradientTransformation):
    return _under(mode, tx.init, optax.with_extra_args_support(tx).update)


def standard(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its ``init`` and ``update`` traced under standard promotion."""
    return _promoted("standard", tx)


def strict(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` traced under strict promotion again (adaclip inside optax code)."""
    return _promoted("strict", tx)


def multi_steps(inner, every_k_schedule, **kwargs) -> optax.MultiSteps:
    """``optax.MultiSteps`` (its accumulator mixes int32 and float32) around
    ``inner``, which runs strict. Its state is MultiSteps' own."""
    multi = optax.MultiSteps(strict(inner), every_k_schedule, **kwargs)
    wrapped = _under("standard", multi.init, multi.update)
    multi.init, multi.update = wrapped.init, wrapped.update
    return multi


def schedule(fn):
    """An optax schedule called under standard promotion."""

    @functools.wraps(fn)
    def wrapped(count):
        with jax.numpy_dtype_promotion("standard"):
            return fn(count)

    return wrapped


def adam(*args, **kwargs):
    return standard(optax.adam(*args, **kwargs))
