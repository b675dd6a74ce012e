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
