"""The one registry of transformations that the parametrized suites run over.

One row per transformation: ``CASES[name]`` is a :class:`Case` whose
``build(**clipper_kwargs)`` returns the optax transformation (clipper
keyword arguments such as ``axis_name=`` or ``nonfinite=`` pass through).
Each suite selects its rows by tag with :func:`names`, so that a new rule
is one row here (plus one test file for its reference semantics):

- ``contract``: the optax contract, differentiation, donation and usage
  suites (every rule under every clipper, the combinators, the recipes);
- ``scale``: the robustness suites (accumulation, checkpoints, fuzzing,
  pytrees): every rule under global-norm clipping, three rule families under
  the other clippers, every recipe;
- ``multidevice``: the multi-device suite (every clipper with two adaptive
  rules, the other stateful rules under global-norm clipping, the recipes);
- ``hlo``: the compiled-program guard;
- ``clipper``: every clipper with every rule that is not a combinator (the
  state-property suite);
- ``rule``: the suites that take the rule alone (``Case.rule``), one row
  per rule.

``Case.inject`` lists the hyper-parameters that
``optax.inject_hyperparams`` can change at run time (the inject suite).
Hyper-parameters are small (short windows and warm-ups) so a few dozen steps
cover every phase of a rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax
from _standard import schedule

import adaclip

G = adaclip.clip_by_global_norm


@dataclasses.dataclass(frozen=True)
class Inject:
    """``factory(**initial)`` is injected; each of ``changes`` is set in turn."""

    factory: Callable[..., Any]
    initial: dict
    changes: dict
    # Extra keyword arguments of ``update`` at step ``i`` (e.g. the loss).
    extra: Callable[[int], dict] = lambda i: {}


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[..., optax.GradientTransformationExtraArgs]
    tags: frozenset[str]
    rule: Callable[[], Any] | None = None  # the rule alone (clipper rows)
    warmup: int = 0  # finite steps after which the rule bounds the statistic
    inject: tuple[Inject, ...] = ()


CLIPPERS = {
    "global": adaclip.clip_by_global_norm,
    "leaf": adaclip.clip_by_leaf_norm,
    "value": adaclip.clip_by_value,
    # One unit per leaf on the suites' vectors, several on their matrices.
    "unit": adaclip.clip_by_unit_norm,
}

# rule name -> (zero-argument factory, warm-up length).
RULES = {
    "float": (lambda: 1.0, 0),
    "schedule": (lambda: schedule(optax.linear_schedule(2.0, 0.5, 100)), 0),
    "fixed": (lambda: adaclip.fixed(1.0), 0),
    "scheduled": (lambda: adaclip.scheduled(schedule(optax.exponential_decay(2.0, 10, 0.9))), 0),
    "decaying": (lambda: adaclip.decaying(2.0, 0.9, transition_steps=5, floor=0.1), 0),
    "moving_average": (lambda: adaclip.moving_average(1.5, 4), 4),
    "ema": (lambda: adaclip.ema(1.5, 0.9, warmup_steps=2), 2),
    "ema_raw": (lambda: adaclip.ema(1.5, 0.9, feed="raw"), 0),
    "percentile": (lambda: adaclip.percentile(50.0, 4), 4),
    "zscore": (lambda: adaclip.zscore(0.9, 1.5, 3), 3),
    "quantile": (lambda: adaclip.quantile(0.5, initial=2.0), 0),
    "rolling_zscore": (lambda: adaclip.rolling_zscore(2.0, 4, min_history=2), 2),
    "rolling_zscore_clipped": (
        lambda: adaclip.rolling_zscore(1.5, 5, feed="clipped", ddof=1),
        2,
    ),
    "ema_zscore": (lambda: adaclip.ema_zscore(2.0, 0.9, min_weight=0.3, feed="raw"), 0),
    "log_space": (
        lambda: adaclip.log_space(
            adaclip.ema_zscore(3.0, 0.9, min_weight=0.0), offset=1.0, floor=1e-2
        ),
        0,
    ),
    # Combinators.
    "clamp": (
        lambda: adaclip.clamp(adaclip.ema(1.5, 0.9), 0.5, adaclip.decaying(10.0, 0.9)),
        0,
    ),
    "minimum": (
        lambda: adaclip.minimum(adaclip.percentile(80.0, 3), adaclip.quantile(0.9), 5.0),
        3,
    ),
    "maximum": (lambda: adaclip.maximum(adaclip.moving_average(1.2, 3), 0.5), 3),
    "min_max": (
        lambda: adaclip.minimum(
            adaclip.maximum(adaclip.moving_average(1.5, 4), adaclip.fixed(0.5)),
            adaclip.ema(3.0, 0.8),
        ),
        4,
    ),
    "warmup": (
        lambda: adaclip.warmup(adaclip.zscore(0.9, 1.5, 2, mode="percentile"), 3, during=1.0),
        3,
    ),
    "zscore_pct_skip": (
        lambda: adaclip.zscore(0.9, 2.0, 4, mode="percentile", skip_update_on_spike=True),
        4,
    ),
}

# The rules that every clipper runs in the contract suites (combinators run
# under one clipper each, below).
_ELEMENTARY = [r for r in RULES if r not in ("clamp", "minimum", "maximum", "min_max", "warmup")]
_ELEMENTARY.remove("zscore_pct_skip")


def _tags(clipper: str, rule: str) -> set[str]:
    tags = set()
    if rule in _ELEMENTARY:
        tags.update(("contract", "clipper"))
    if clipper == "global" or rule in ("ema", "moving_average", "percentile"):
        tags.add("scale")
    if rule in ("ema", "moving_average") or (
        clipper == "global"
        and rule in ("fixed", "scheduled", "percentile", "zscore", "quantile", "min_max")
    ):
        tags.add("multidevice")
    # (Not unit-percentile: its sorted window over the hlo test's 4353 units
    # needs temporaries of window x units, beyond that test's leaf-size bound,
    # though nothing gradient-sized.)
    if rule in ("float", "ema", "moving_average", "percentile", "zscore") and (
        clipper,
        rule,
    ) != ("unit", "percentile"):
        tags.add("hlo")
    if clipper == "global" and rule in _ELEMENTARY:
        tags.add("rule")
    return tags


# Injectable hyper-parameters: (clipper-rule row) -> specs.
_INJECT = {
    "global-float": (
        Inject(lambda threshold: G(threshold), {"threshold": 1.0}, {"threshold": 0.3}),
    ),
    "leaf-float": (
        Inject(
            lambda threshold: adaclip.clip_by_leaf_norm(threshold),
            {"threshold": 1.0},
            {"threshold": 0.3},
        ),
    ),
    "value-float": (
        Inject(
            lambda threshold: adaclip.clip_by_value(threshold),
            {"threshold": 1.0},
            {"threshold": 0.3},
        ),
    ),
    "unit-float": (
        Inject(
            lambda threshold: adaclip.clip_by_unit_norm(threshold),
            {"threshold": 1.0},
            {"threshold": 0.3},
        ),
    ),
    "unit-ema": (
        Inject(
            lambda multiplier, decay, warmup_steps: adaclip.clip_by_unit_norm(
                adaclip.ema(multiplier, decay, warmup_steps=warmup_steps)
            ),
            dict(multiplier=2.0, decay=0.9, warmup_steps=2),
            dict(multiplier=0.2, decay=0.3, warmup_steps=50),
        ),
    ),
    "global-fixed": (
        Inject(lambda value: G(adaclip.fixed(value)), {"value": 1.0}, {"value": 0.3}),
    ),
    "global-scheduled": (
        Inject(
            lambda start, end: G(
                adaclip.scheduled(schedule(optax.linear_schedule(start, end, 20)))
            ),
            dict(start=2.0, end=0.5),
            dict(start=0.7, end=0.1),
        ),
    ),
    "global-decaying": (
        Inject(
            lambda init_value, decay_rate, transition_steps, floor: G(
                adaclip.decaying(
                    init_value, decay_rate, transition_steps=transition_steps, floor=floor
                )
            ),
            dict(init_value=3.0, decay_rate=0.8, transition_steps=2, floor=0.0),
            dict(init_value=10.0, decay_rate=0.5, transition_steps=7, floor=8.0),
        ),
    ),
    "global-ema": (
        Inject(
            lambda multiplier, decay, warmup_steps: G(
                adaclip.ema(multiplier, decay, warmup_steps=warmup_steps)
            ),
            dict(multiplier=2.0, decay=0.9, warmup_steps=2),
            dict(multiplier=0.2, decay=0.3, warmup_steps=50),
        ),
    ),
    "leaf-ema_raw": (
        Inject(
            lambda multiplier, decay: adaclip.clip_by_leaf_norm(
                adaclip.ema(multiplier, decay, feed="raw")
            ),
            dict(multiplier=2.0, decay=0.9),
            dict(multiplier=0.2, decay=0.3),
        ),
    ),
    "global-moving_average": (
        Inject(
            lambda multiplier: G(adaclip.moving_average(multiplier, 4)),
            dict(multiplier=2.0),
            dict(multiplier=0.1),
        ),
    ),
    "global-percentile": (
        Inject(lambda p: G(adaclip.percentile(p, 6)), dict(p=90.0), dict(p=10.0)),
    ),
    "global-zscore": (
        Inject(
            lambda alpha, z_thresh, warmup_steps, clip_factor: G(
                adaclip.zscore(alpha, z_thresh, warmup_steps, clip_factor=clip_factor)
            ),
            dict(alpha=0.9, z_thresh=2.5, warmup_steps=3, clip_factor=1.0),
            dict(alpha=0.3, z_thresh=0.5, clip_factor=0.3, warmup_steps=50),
        ),
    ),
    "global-quantile": (
        Inject(
            lambda target, learning_rate, initial: G(
                adaclip.quantile(target, learning_rate=learning_rate, initial=initial)
            ),
            dict(target=0.5, learning_rate=0.2, initial=2.0),
            dict(target=0.05, learning_rate=2.0),  # initial only matters at init
        ),
    ),
    "global-rolling_zscore": (
        Inject(
            lambda sigma, min_history: G(adaclip.rolling_zscore(sigma, 4, min_history=min_history)),
            dict(sigma=3.0, min_history=2),
            # min_history stays injected; once the window is full, changing it
            # (to at most the window: more could never act) changes nothing.
            dict(sigma=0.1),
        ),
    ),
    "global-ema_zscore": (
        Inject(
            lambda sigma, decay, min_weight, std_floor: G(
                adaclip.ema_zscore(
                    sigma, decay, min_weight=min_weight, std_floor=std_floor, feed="raw"
                )
            ),
            dict(sigma=3.0, decay=0.9, min_weight=0.0, std_floor=1e-6),
            dict(sigma=0.1, decay=0.3, std_floor=100.0, min_weight=0.999),
        ),
    ),
    "global-log_space": (
        Inject(
            lambda sigma, offset, floor: G(
                adaclip.log_space(
                    adaclip.ema_zscore(sigma, 0.9, min_weight=0.0, feed="raw"),
                    offset=offset,
                    floor=floor,
                )
            ),
            dict(sigma=0.5, offset=1.0, floor=1e-2),
            dict(offset=5.0, sigma=0.1, floor=50.0),
        ),
    ),
    "global-clamp": (
        Inject(
            lambda lower, upper: G(adaclip.clamp(adaclip.ema(2.0, 0.9), lower, upper)),
            dict(lower=0.1, upper=50.0),
            dict(lower=40.0),
        ),
        Inject(
            lambda lower, upper: G(adaclip.clamp(adaclip.ema(2.0, 0.9), lower, upper)),
            dict(lower=0.1, upper=50.0),
            dict(upper=0.5),
        ),
    ),
    "global-min_max": (
        Inject(
            lambda a, b: G(adaclip.maximum(adaclip.minimum(adaclip.ema(2.0, 0.9), a), b)),
            dict(a=50.0, b=0.1),
            dict(a=0.5, b=5.0),
        ),
    ),
    "global-warmup": (
        Inject(
            lambda steps, during: G(adaclip.warmup(adaclip.ema(1.5, 0.9), steps, during)),
            dict(steps=100, during=50.0),
            dict(during=0.2, steps=2),
        ),
    ),
}


def _clipper_case(clipper: str, rule: str) -> Case:
    make_rule, warmup = RULES[rule]
    return Case(
        build=lambda **kw: CLIPPERS[clipper](make_rule(), **kw),
        tags=frozenset(_tags(clipper, rule)),
        rule=make_rule,
        warmup=warmup,
        inject=_INJECT.get(f"{clipper}-{rule}", ()),
    )


CASES: dict[str, Case] = {}
for _c in CLIPPERS:
    for _r in _ELEMENTARY:
        CASES[f"{_c}-{_r}"] = _clipper_case(_c, _r)
# Combinators: under the clippers that the suites run them with.
for _name in (
    "global-clamp",
    "leaf-minimum",
    "value-maximum",
    "global-warmup",
    "global-min_max",
    "global-zscore_pct_skip",
):
    _c, _r = _name.split("-", 1)
    _case = _clipper_case(_c, _r)
    _tags_of = set(_case.tags)
    if _r in ("clamp", "minimum", "maximum", "warmup"):
        _tags_of.add("contract")
    CASES[_name] = dataclasses.replace(_case, tags=frozenset(_tags_of))

_ALL = frozenset({"contract", "scale", "multidevice", "hlo"})


def _loss(i: int) -> dict:
    # A loss spike every second step, as the inject suite's gradients.
    return {"loss": jnp.float32(1.0 + 5.0 * (i % 2) + 0.01 * i)}


CASES.update(
    {
        # Measures relative to the parameters and the RMS (the suites that
        # pass params to ``update`` run them: contract, donation, jax.grad,
        # inject, usage).
        "agc": Case(
            build=lambda **kw: adaclip.agc(0.01, **kw),
            tags=frozenset({"contract"}),
            inject=(
                Inject(
                    lambda clipping, eps: adaclip.agc(clipping, eps),
                    dict(clipping=0.05, eps=1e-3),
                    dict(clipping=0.5, eps=2.0),
                ),
            ),
        ),
        "agc-percentile": Case(
            build=lambda **kw: adaclip.agc(adaclip.percentile(50.0, 4), **kw),
            tags=frozenset({"contract"}),
            warmup=4,
        ),
        "global-relative-ema": Case(
            build=lambda **kw: G(adaclip.ema(1.5, 0.9), relative=True, **kw),
            tags=frozenset({"contract"}),
            inject=(
                Inject(
                    lambda multiplier, eps: G(adaclip.ema(multiplier, 0.9), relative=True, eps=eps),
                    dict(multiplier=1.5, eps=1e-3),
                    dict(multiplier=0.2, eps=3.0),
                ),
            ),
        ),
        "leaf-relative-zscore": Case(
            build=lambda **kw: adaclip.clip_by_leaf_norm(
                adaclip.zscore(0.9, 1.5, 3), relative=True, eps=0.1, **kw
            ),
            tags=frozenset({"contract"}),
            warmup=3,
        ),
        "leaf-rms-float": Case(
            build=lambda **kw: adaclip.clip_by_leaf_norm(0.5, rms=True, **kw),
            tags=frozenset({"contract", "scale"}),
        ),
        "global-rms-quantile": Case(
            build=lambda **kw: G(adaclip.quantile(0.5, initial=2.0), rms=True, **kw),
            tags=frozenset({"contract", "multidevice"}),
        ),
        "unit-rms-ema": Case(
            build=lambda **kw: adaclip.clip_by_unit_norm(
                adaclip.ema(1.5, 0.9), axis=0, rms=True, **kw
            ),
            tags=frozenset({"contract", "scale", "multidevice"}),
        ),
        "autoclip": Case(
            build=lambda **kw: adaclip.autoclip(10.0, window=8, **kw),
            tags=_ALL,
            warmup=1,
            inject=(
                Inject(
                    lambda percentile: adaclip.autoclip(percentile, window=8),
                    dict(percentile=90.0),
                    dict(percentile=5.0),
                ),
            ),
        ),
        "zclip": Case(
            build=lambda **kw: adaclip.zclip(warmup_steps=3, **kw),
            tags=_ALL,
            warmup=3,
            inject=(
                Inject(
                    lambda alpha, z_thresh, warmup_steps, max_norm, clip_factor: adaclip.zclip(
                        alpha, z_thresh, warmup_steps, max_norm=max_norm, clip_factor=clip_factor
                    ),
                    dict(alpha=0.9, z_thresh=2.5, warmup_steps=3, max_norm=100.0, clip_factor=1.0),
                    dict(alpha=0.3, z_thresh=0.5, clip_factor=0.3, max_norm=0.5, warmup_steps=50),
                ),
            ),
        ),
        "zclip-nocap": Case(
            build=lambda **kw: adaclip.zclip(
                0.9, 1.5, 3, max_norm=None, clip_option="mean", skip_update_on_spike=True, **kw
            ),
            tags=frozenset({"contract", "scale"}),
            warmup=3,
        ),
        "adagc": Case(
            build=lambda **kw: adaclip.adagc(warmup_steps=3, **kw),
            tags=_ALL,
            warmup=3,
            inject=(
                Inject(
                    lambda ratio, beta, warmup_steps, warmup_max_norm: adaclip.adagc(
                        ratio, beta, warmup_steps, warmup_max_norm
                    ),
                    dict(ratio=1.04, beta=0.99, warmup_steps=2, warmup_max_norm=1.0),
                    dict(ratio=0.5, beta=0.2, warmup_steps=50, warmup_max_norm=0.1),
                ),
            ),
        ),
        # Element blocks: second-moment clipping (SPAM). Its threshold is a
        # float or a schedule (a rule's state would be parameter-sized), so
        # these rows stand for the rule axis; no axis_name (element-wise).
        "moment-float": Case(
            build=lambda **kw: adaclip.clip_by_second_moment(8.0, b2=0.9, warmup_steps=2, **kw),
            tags=frozenset({"contract", "scale"}),
            warmup=2,
            inject=(
                Inject(
                    lambda threshold, b2, warmup_steps: adaclip.clip_by_second_moment(
                        threshold, b2=b2, warmup_steps=warmup_steps
                    ),
                    dict(threshold=8.0, b2=0.9, warmup_steps=2),
                    dict(threshold=1.5, b2=0.3, warmup_steps=50),
                ),
            ),
        ),
        "moment-schedule": Case(
            build=lambda **kw: adaclip.clip_by_second_moment(
                schedule(optax.linear_schedule(20.0, 4.0, 30)), b2=0.9, warmup_steps=1, **kw
            ),
            tags=frozenset({"contract", "scale"}),
            warmup=1,
        ),
        # The step-skipping wrapper: only its loss rule's hyper-parameters
        # are run here (tests/test_skip.py covers the rest).
        "skip_bad_steps-loss_rule": Case(
            build=lambda **kw: adaclip.skip_bad_steps(
                optax.chain(G(1.0, **kw), optax.sgd(1.0)),
                loss_rule=adaclip.rolling_zscore(3.0, 6, min_history=2),
            ),
            tags=frozenset(),
            inject=(
                Inject(
                    lambda sigma, min_history: adaclip.skip_bad_steps(
                        optax.chain(G(1.0), optax.sgd(1.0)),
                        loss_rule=adaclip.rolling_zscore(sigma, 6, min_history=min_history),
                    ),
                    dict(sigma=3.0, min_history=2),
                    # min_history stays injected; once the window is full, changing it
                    # (to at most the window: more could never act) changes nothing.
                    dict(sigma=0.1),
                    extra=_loss,
                ),
            ),
        ),
    }
)


def names(tag: str) -> list[str]:
    """The rows tagged ``tag``, sorted."""
    return sorted(n for n, c in CASES.items() if tag in c.tags)


def make(name: str, **clipper_kwargs) -> optax.GradientTransformationExtraArgs:
    """Builds the transformation ``name`` with e.g. ``axis_name=...``."""
    return CASES[name].build(**clipper_kwargs)


# Longest warm-up among the robustness rows: after this many finite steps
# every rule bounds the statistic (the fuzz suite's spike property).
MAX_WARMUP = max(CASES[n].warmup for n in names("scale"))
