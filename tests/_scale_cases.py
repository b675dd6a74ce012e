"""Every rule and recipe, buildable with clipper keyword arguments.

The scale and robustness tests (multi-device, checkpoints, accumulation,
fuzzing) run over this registry. It takes the rules of ``tests/_cases.py``
and adds the rules and recipes of the public API that are present, so the
parametrisations grow with the library. Hyper-parameters are small (short
windows and warm-ups) so a few dozen steps cover every phase of a rule.
"""

import optax
from _cases import CLIPPERS
from _cases import RULES as _CONTRACT_RULES

import adaclip


def _more_rules():
    return {
        "zscore_pct_skip": lambda: adaclip.zscore(
            0.9, 2.0, 4, mode="percentile", skip_update_on_spike=True
        ),
        "clamp": lambda: adaclip.clamp(adaclip.ema(1.5, 0.9), lower=0.2, upper=20.0),
        "min_max": lambda: adaclip.minimum(
            adaclip.maximum(adaclip.moving_average(1.5, 4), adaclip.fixed(0.5)),
            adaclip.ema(3.0, 0.8),
        ),
        "warmup": lambda: adaclip.warmup(adaclip.moving_average(1.5, 3), 4, 2.0),
    }


RULES = {**_CONTRACT_RULES, **_more_rules()}


RECIPES = {
    "autoclip": lambda **kw: adaclip.autoclip(percentile=10.0, window=16, **kw),
    "zclip": lambda **kw: adaclip.zclip(warmup_steps=6, **kw),
    "zclip_nocap": lambda **kw: adaclip.zclip(warmup_steps=6, max_norm=None, **kw),
    "adagc": lambda **kw: adaclip.adagc(warmup_steps=5, **kw),
}

# Longest warm-up in the registry: after this many finite steps every rule
# bounds the statistic (used by the fuzz suite's spike property).
MAX_WARMUP = 6


def names():
    """Every rule under global-norm clipping, every clipper with the stateful
    core rules, and every recipe.

    Rules are element-wise on the statistic, so the clipper hardly matters
    to them; the per-leaf and value clippers run with three rule families
    (EMA, ring buffer, sorted window).
    """
    by_rule = [f"global-{r}" for r in RULES]
    by_clipper = [
        f"{c}-{r}" for c in ("leaf", "value") for r in ("ema", "moving_average", "percentile")
    ]
    return sorted(by_rule + by_clipper) + sorted(RECIPES)


def make(name, **clipper_kwargs) -> optax.GradientTransformationExtraArgs:
    """Builds the transformation ``name`` with e.g. ``axis_name=...``."""
    if name in RECIPES:
        return RECIPES[name](**clipper_kwargs)
    clipper, rule = name.split("-", 1)
    return CLIPPERS[clipper](RULES[rule](), **clipper_kwargs)


def default_multidevice_names():
    """Every clipper, every recipe, and the stateful rules.

    Only the statistic depends on how the gradients are spread over devices;
    rules are element-wise on it. So each clipper runs with two adaptive rules
    (an EMA with warm-up, a ring buffer), the other rules under global-norm
    clipping, and each recipe as it is.
    """
    by_clipper = [f"{c}-{r}" for c in CLIPPERS for r in ("ema", "moving_average")]
    extra = ("fixed", "scheduled", "percentile", "zscore", "quantile", "min_max")
    by_rule = [f"global-{r}" for r in extra]
    recipes = [r for r in RECIPES if r != "zclip_nocap"]
    return sorted(by_clipper + by_rule) + sorted(recipes)
