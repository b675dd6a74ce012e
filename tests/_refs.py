"""Independent NumPy references (float64 loops) for the threshold rules.

Each function takes a 1-D array of statistics and returns the per-step
thresholds, transcribed from the documented maths, not from adaclip's code.
"""

import numpy as np


def fixed(stats, value):
    return np.full(len(stats), float(value))


def decaying(stats, init_value, decay_rate, transition_steps=1, floor=0.0):
    t = np.arange(len(stats), dtype=np.float64)
    return np.maximum(init_value * decay_rate ** (t / transition_steps), floor)


def moving_average(stats, multiplier, window, feed="raw"):
    history, out = [], []
    for s in stats:
        if not history:
            c = s
        else:
            c = multiplier * np.mean(history[-window:])
        out.append(c)
        history.append(min(s, c) if feed == "clipped" else s)
    return np.array(out)


def ema(stats, multiplier, decay, warmup_steps=0, feed="clipped"):
    e, n, out = 0.0, 0, []
    for s in stats:
        if n == 0 or n < warmup_steps:
            c = s
        else:
            c = multiplier * e / (1.0 - decay**n)
        out.append(c)
        x = min(s, c) if feed == "clipped" else s
        e = decay * e + (1.0 - decay) * x
        n += 1
    return np.array(out)
