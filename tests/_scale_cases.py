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


def _optional_rules():
    out = {}
    if hasattr(adaclip, "percentile"):
        out["percentile"] = lambda: adaclip.percentile(50.0, 6)
    if hasattr(adaclip, "zscore"):
        out["zscore"] = lambda: adaclip.zscore(warmup_steps=5)
        out["zscore_pct_skip"] = lambda: adaclip.zscore(
            0.9, 2.0, 4, mode="percentile", skip_update_on_spike=True
        )
    if hasattr(adaclip, "quantile"):
        out["quantile"] = lambda: adaclip.quantile(0.5, learning_rate=0.3)
    if hasattr(adaclip, "clamp"):
        out["clamp"] = lambda: adaclip.clamp(adaclip.ema(1.5, 0.9), lower=0.2, upper=20.0)
    if hasattr(adaclip, "minimum") and hasattr(adaclip, "maximum"):
        out["min_max"] = lambda: adaclip.minimum(
            adaclip.maximum(adaclip.moving_average(1.5, 4), adaclip.fixed(0.5)),
            adaclip.ema(3.0, 0.8),
        )
    if hasattr(adaclip, "warmup"):
        out["warmup"] = lambda: adaclip.warmup(adaclip.moving_average(1.5, 3), 4, 2.0)
    return out


RULES = {**_optional_rules(), **_CONTRACT_RULES}


def _recipes():
    out = {}
    if hasattr(adaclip, "autoclip"):
        out["autoclip"] = lambda **kw: adaclip.autoclip(percentile=10.0, window=16, **kw)
    if hasattr(adaclip, "zclip"):
        out["zclip"] = lambda **kw: adaclip.zclip(warmup_steps=6, **kw)
        out["zclip_nocap"] = lambda **kw: adaclip.zclip(warmup_steps=6, max_norm=None, **kw)
    if hasattr(adaclip, "adagc"):
        out["adagc"] = lambda **kw: adaclip.adagc(warmup_steps=5, **kw)
    return out


RECIPES = _recipes()

# Rules whose first steps pass everything through; a spike is only clipped
# once this many finite steps have been seen (used by the fuzz suite).
WARMUP = {"zscore": 5, "zscore_pct_skip": 4, "warmup": 4}
RECIPE_WARMUP = {"zclip": 6, "zclip_nocap": 6, "adagc": 5}


def names():
    """Every transformation name: ``"<clipper>-<rule>"`` and recipe names."""
    return sorted(f"{c}-{r}" for c in CLIPPERS for r in RULES) + sorted(RECIPES)


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
    by_rule = [f"global-{r}" for r in extra if r in RULES]
    recipes = [r for r in RECIPES if r != "zclip_nocap"]
    return sorted(by_clipper + by_rule) + sorted(recipes)
