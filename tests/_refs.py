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


def _patience(span):
    """K = ceil(8 * span) steps, in float32 as the rules compute it."""
    return int(np.ceil(np.float32(8) * np.float32(span)))


def _clipped_feed(s, c, run, patience):
    """The documented clipped feed: min(s, c), or s once cut K steps in a row."""
    run = min(run, patience) + 1 if s > c else 0
    return (s if run > patience else min(s, c)), run


def moving_average(stats, multiplier, window, feed="raw"):
    history, out, run = [], [], 0
    for s in stats:
        if not history:
            c = s
        else:
            c = multiplier * np.mean(history[-window:])
        out.append(c)
        if feed == "clipped":
            x, run = _clipped_feed(s, c, run, _patience(window))
        else:
            x = s
        history.append(x)
    return np.array(out)


def ema(stats, multiplier, decay, warmup_steps=0, feed="clipped"):
    e, n, out, run = 0.0, 0, [], 0
    for s in stats:
        if n == 0 or n < warmup_steps:
            c = s
        else:
            c = multiplier * e / (1.0 - decay**n)
        out.append(c)
        if feed == "clipped":
            span = np.float32(1) / (np.float32(1) - np.float32(decay))
            x, run = _clipped_feed(s, c, run, _patience(span))
        else:
            x = s
        e = decay * e + (1.0 - decay) * x
        n += 1
    return np.array(out)
