"""The public transformations that the contract suite runs over.

Add every new public transformation (a clipper with a new rule, a recipe)
here so that the contract tests cover it.
"""

import optax

import adaclip

RULES = {
    "float": lambda: 1.0,
    "schedule": lambda: optax.linear_schedule(2.0, 0.5, 100),
    "fixed": lambda: adaclip.fixed(1.0),
    "scheduled": lambda: adaclip.scheduled(optax.exponential_decay(2.0, 10, 0.9)),
    "decaying": lambda: adaclip.decaying(2.0, 0.9, transition_steps=5, floor=0.1),
    "moving_average": lambda: adaclip.moving_average(1.5, 4),
    "ema": lambda: adaclip.ema(1.5, 0.9, warmup_steps=2),
    "ema_raw": lambda: adaclip.ema(1.5, 0.9, feed="raw"),
    "percentile": lambda: adaclip.percentile(50.0, 4),
    "zscore": lambda: adaclip.zscore(0.9, 1.5, 3),
    "quantile": lambda: adaclip.quantile(0.5, initial=2.0),
    "rolling_zscore": lambda: adaclip.rolling_zscore(2.0, 4, min_history=2),
    "rolling_zscore_clipped": lambda: adaclip.rolling_zscore(1.5, 5, feed="clipped", ddof=1),
    "ema_zscore": lambda: adaclip.ema_zscore(2.0, 0.9, feed="raw"),
    "log_space": lambda: adaclip.log_space(adaclip.ema_zscore(3.0, 0.9), offset=1.0, floor=1e-2),
}

CLIPPERS = {
    "global": adaclip.clip_by_global_norm,
    "leaf": adaclip.clip_by_leaf_norm,
    "value": adaclip.clip_by_value,
}

# name -> zero-argument factory of an optax transformation.
TRANSFORMS = {
    f"{cname}-{rname}": (lambda c=clipper, r=rule: c(r()))
    for cname, clipper in CLIPPERS.items()
    for rname, rule in RULES.items()
}

# Combinators and recipes: one clipper each (the rules are covered above).
TRANSFORMS.update(
    {
        "global-clamp": lambda: adaclip.clip_by_global_norm(
            adaclip.clamp(adaclip.ema(1.5, 0.9), 0.5, adaclip.decaying(10.0, 0.9))
        ),
        "leaf-minimum": lambda: adaclip.clip_by_leaf_norm(
            adaclip.minimum(adaclip.percentile(80.0, 3), adaclip.quantile(0.9), 5.0)
        ),
        "value-maximum": lambda: adaclip.clip_by_value(
            adaclip.maximum(adaclip.moving_average(1.2, 3), 0.5)
        ),
        "global-warmup": lambda: adaclip.clip_by_global_norm(
            adaclip.warmup(adaclip.zscore(0.9, 1.5, 2, mode="percentile"), 3, during=1.0)
        ),
        "autoclip": lambda: adaclip.autoclip(10.0, window=8),
        "zclip": lambda: adaclip.zclip(warmup_steps=3),
        "zclip-nocap": lambda: adaclip.zclip(
            0.9, 1.5, 3, max_norm=None, clip_option="mean", skip_update_on_spike=True
        ),
        "adagc": lambda: adaclip.adagc(warmup_steps=3),
    }
)
