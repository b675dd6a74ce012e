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


def standard(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its ``init`` and ``update`` traced under standard promotion."""

    def init_fn(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return optax.with_extra_args_support(tx).update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def strict(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` traced under strict promotion again (adaclip inside optax code)."""

    def init_fn(params):
        with jax.numpy_dtype_promotion("strict"):
            return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("strict"):
            return optax.with_extra_args_support(tx).update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def multi_steps(inner, every_k_schedule, **kwargs) -> optax.MultiSteps:
    """``optax.MultiSteps`` (its accumulator mixes int32 and float32) around
    ``inner``, which runs strict. Its state is MultiSteps' own."""
    multi = optax.MultiSteps(strict(inner), every_k_schedule, **kwargs)
    init, update = multi.init, multi.update

    def init_fn(params):
        with jax.numpy_dtype_promotion("standard"):
            return init(params)

    def update_fn(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return update(updates, state, params, **extra_args)

    multi.init, multi.update = init_fn, update_fn
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
