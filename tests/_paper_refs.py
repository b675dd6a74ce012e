"""NumPy transcriptions of the original methods (plain float64 loops).

Written from the semantics in REFERENCES.md (AutoClip, ZClip, AdaGC, geometric
quantile tracking), not from adaclip's code. Each takes the pre-clip norms
(1-D, or ``(steps, n_leaves)`` for AdaGC) and returns the post-clip norms the
original produces, and where useful the thresholds.
"""

import numpy as np

EPS = 1e-6  # torch's clip_grad_norm_ epsilon, used by all three originals.


def torch_clip(norm, max_norm):
    """Post-clip norm of ``torch.nn.utils.clip_grad_norm_(params, max_norm)``."""
    return norm * min(1.0, max_norm / (norm + EPS))


def autoclip(norms, p):
    """AutoClip: append the norm to the history, clip at its p-th percentile."""
    history, post, thresholds = [], [], []
    for g in norms:
        history.append(float(g))
        c = np.percentile(history, p)
        thresholds.append(c)
        post.append(torch_clip(g, c))
    return np.array(post), np.array(thresholds)


def zclip(
    norms,
    alpha=0.97,
    z_thresh=2.5,
    warmup_steps=25,
    max_grad_norm=1.0,
    mode="zscore",
    clip_option="adaptive_scaling",
    clip_factor=1.0,
    skip_update_on_spike=False,
    eps=1e-6,
):
    """ZClip's step(): warm-up buffer, then EMA z-score with optional cap.

    Returns the post-clip norms and the adaptive bound of each step before
    the cap (the norm itself where there is none: warm-up, no spike)."""
    buffer, initialized, mean, var = [], False, None, None
    post, bounds = [], []
    for g in norms:
        g = float(g)
        if not initialized:
            buffer.append(g)
            if len(buffer) >= warmup_steps:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
                initialized = True
                buffer = []
            post.append(g if max_grad_norm is None else torch_clip(g, max_grad_norm))
            bounds.append(g)
            continue
        std = var**0.5
        clip_val = None
        if mode == "percentile":
            level = mean + z_thresh * std
            if g > level:
                clip_val = level
        else:
            z = (g - mean) / (std + eps)
            if z > z_thresh:
                if clip_option == "adaptive_scaling":
                    clip_val = clip_factor * (mean + z_thresh * std / (z / z_thresh))
                else:
                    clip_val = mean
        bound = clip_val if clip_val is not None else g
        bounds.append(bound)
        if max_grad_norm is not None:
            bound = min(bound, max_grad_norm)
        post.append(g * bound / (g + EPS) if g > bound else g)
        if clip_val is not None and skip_update_on_spike:
            continue
        x = clip_val if clip_val is not None else g
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2
    return np.array(post), np.array(bounds)


def adagc(leaf_norms, ratio=1.04, beta=0.99, warmup_steps=100, warmup_max_norm=1.0):
    """AdaGC: global clipping in warm-up (gamma = running min of post-clip
    norms), then per-tensor clipping at ratio * gamma with an EMA of the
    clipped norm. Returns post-clip leaf norms, shape (steps, n_leaves)."""
    leaf_norms = np.asarray(leaf_norms, np.float64)
    gamma = None
    out = []
    for t, n in enumerate(leaf_norms):
        if t < warmup_steps:
            total = np.sqrt(np.sum(n**2))
            coef = min(1.0, warmup_max_norm / (total + EPS))
            post = n * coef
            gamma = post.copy() if gamma is None else np.minimum(gamma, post)
        elif gamma is None:  # no warm-up at all: the first step sets gamma.
            post, gamma = n.copy(), n.copy()
        else:
            bound = ratio * gamma
            post = np.array(
                [n[i] * bound[i] / (n[i] + EPS) if n[i] > bound[i] else n[i] for i in range(len(n))]
            )
            gamma = beta * gamma + (1 - beta) * np.minimum(n, bound)
        out.append(post)
    return np.array(out)


def quantile(stats, target, learning_rate=0.2, initial=1.0):
    """Geometric quantile tracking: thresholds C_t before each update."""
    c, out = float(initial), []
    for g in stats:
        out.append(c)
        below = 1.0 if g <= c else 0.0
        c = c * np.exp(-learning_rate * (below - target))
    return np.array(out)


def window_percentile(stats, p, window):
    """np.percentile of the last `window` statistics, the current one included."""
    stats = np.asarray(stats, np.float64)
    return np.array(
        [np.percentile(stats[max(0, t - window + 1) : t + 1], p, axis=0) for t in range(len(stats))]
    )


def spam(
    params,
    grad_fn,
    steps,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-6,
    weight_decay=0.0,
    warmup_steps=150,
    threshold=5000,
    delta_t=500,
    grad_accu_steps=20,
    dtype=np.float64,
):
    """SPAM's ``AdamW.step`` (TianjinYellow/SPAM-Optimizer, ``galore_torch/SPAM.py``),
    dense parameters (no ``density`` masks), one parameter group.

    ``params`` is a list of arrays, ``grad_fn(params, t)`` the gradients at
    1-based step ``t``. Element arithmetic is done in ``dtype`` (torch's
    float32 tensors, or float64); scalars (step size, ramp) in Python floats,
    as torch's ``alpha=`` arguments are. ``warmup_steps`` is SPAM's name for
    the learning-rate ramp after a reset. Returns the parameters after every
    step and the clip masks of every step.
    """
    b1, b2 = betas
    p = [np.array(x, dtype) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    total_step, current_step = 0, warmup_steps + 1
    trajectory, masks = [], []

    def dr(k):
        if k >= warmup_steps:
            return 0.0
        return 0.99 * (1.0 + np.cos(np.pi * k / (warmup_steps + 1))) / 2.0

    for _ in range(steps):
        scale = 1.0 - dr(current_step)
        grads = [np.array(g, dtype) for g in grad_fn([x.copy() for x in p], total_step + 1)]
        step_masks = []
        for i, g in enumerate(grads):
            if (total_step + 1) % delta_t == 0:  # (delta_t = 0 raises, as in the original)
                m[i], v[i] = np.zeros_like(g), np.zeros_like(g)
            step = total_step + 1  # the per-parameter step, never reset
            mask = np.zeros(g.shape, bool)
            if threshold != 0:
                c = total_step + 1
                if c >= grad_accu_steps and c % delta_t >= grad_accu_steps:
                    mask = g**2 > dtype(threshold) * v[i]
                    g = np.where(mask, np.sign(g) * np.sqrt(v[i] * dtype(threshold)), g)
            step_masks.append(mask)
            m[i] = m[i] * dtype(b1) + g * dtype(1.0 - b1)
            v[i] = v[i] * dtype(b2) + g * g * dtype(1.0 - b2)
            denom = np.sqrt(v[i]) + dtype(eps)
            step_size = lr * np.sqrt(1.0 - b2**step) / (1.0 - b1**step)
            p[i] = p[i] + dtype(-step_size * scale) * (m[i] / denom)
            if weight_decay > 0:
                p[i] = p[i] + dtype(-lr * weight_decay) * p[i]
        total_step += 1
        current_step += 1
        if total_step != 0 and (total_step + 1) % delta_t == 0:
            current_step = 0
        trajectory.append([x.copy() for x in p])
        masks.append(step_masks)
    return trajectory, masks
