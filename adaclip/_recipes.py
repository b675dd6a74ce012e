"""Paper methods as recipes: a clipper, a rule and the original's defaults.

The originals rescale with PyTorch's ``g * c / (norm + 1e-6)``, while
adaclip's clippers use ``g * c / norm`` (so that a fixed threshold equals
``optax.clip_by_global_norm``). For small norms the two differ by more than
float32 rounding, so each recipe folds the original's epsilon into the
threshold it reports: on a clipped step the threshold is the norm the
gradient is clipped *to*, ``c * norm / (norm + 1e-6)``, and the clipper's
``c' / norm`` is then exactly the original's scale. The clippers themselves
are untouched.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adaclip import _validation
from adaclip._base import F32_MAX, ThresholdRule, as_f32, as_rule, increment
from adaclip._clippers import clip_by_global_norm, clip_by_leaf_norm, clip_by_unit_norm
from adaclip._combinators import minimum
from adaclip._ema_rules import ema, zscore
from adaclip._window_rules import percentile as percentile_rule

TORCH_EPS = 1e-6  # the epsilon of torch.nn.utils.clip_grad_norm_ and of the originals.


def _with_eps(rule: ThresholdRule, *, always: bool) -> ThresholdRule:
    """Reports the threshold so that ``c' / norm == c / (norm + eps)`` where clipped.

    ``always=True`` is torch's ``clip_grad_norm_``: the gradient is scaled by
    ``min(1, c / (norm + eps))``, so it is (slightly) scaled whenever
    ``norm + eps > c``. ``always=False`` scales by ``c / (norm + eps)`` only
    when ``norm > c`` (ZClip, AdaGC after warm-up).
    """

    def update_fn(statistic, state):
        c, state = rule.update(statistic, state)
        c = as_f32(c)
        s = as_f32(statistic)
        cut = (s + TORCH_EPS > c) if always else (s > c)
        return jnp.where(cut, c * (s / (s + TORCH_EPS)), c), state

    return ThresholdRule(rule.init, update_fn)


def autoclip(
    percentile: Any = 10.0,
    window: int = 10_000,
    *,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """AutoClip: clip the global norm at a percentile of its recent history.

    $$c_t = \\mathrm{percentile}_p\\left(\\lVert g_{t-w+1}\\rVert, \\dots,
      \\lVert g_t\\rVert\\right),\\qquad
      g_t \\leftarrow g_t \\min\\left(1, \\frac{c_t}{\\lVert g_t\\rVert + 10^{-6}}\\right)$$

    [`adaclip.clip_by_global_norm`][adaclip.clip_by_global_norm] with
    [`adaclip.percentile`][adaclip.percentile] and
    PyTorch's rescaling (Seetharaman et al. 2020, defaults from the paper:
    $p = 10$). The current norm is part of the history, so at step 0 the
    threshold is the first norm itself. With ``window`` at least the number
    of steps taken, the post-clip norms are the original's step for step;
    the threshold metric on a clipped step is the norm clipped to,
    $c_t \\lVert g_t\\rVert / (\\lVert g_t\\rVert + 10^{-6})$. Like the
    original, a step whose norm equals its threshold (always step 0) is
    scaled by $\\lVert g_t\\rVert / (\\lVert g_t\\rVert + 10^{-6})$ and so
    counts as clipped in the metrics.

    **Differences from AutoClip.** The history is the last ``window`` norms
    (the original keeps every norm, with memory and per-step cost growing
    with the step count); a NaN or infinite norm never enters it (in the
    original one NaN makes every later threshold NaN), and the clipper's
    output is zeros (``nonfinite="skip"``; the optimizer after it still
    steps) or passed through (``"propagate"``).

    Args:
        percentile: $p \\in [0, 100]$.
        window: $w$, a Python int >= 1, the number of past norms kept.
        nonfinite: ``"skip"`` (zero the clipper's output) or ``"propagate"``, see
            [`adaclip.clip_by_global_norm`][adaclip.clip_by_global_norm].
        axis_name: the mapped axis the gradients are split over, if any.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad argument.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = optax.chain(adaclip.autoclip(10.0, window=1000), optax.adam(1e-3))
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Seetharaman, Wichern, Pardo, Le Roux. *AutoClip: Adaptive gradient
        clipping for source separation networks*, MLSP 2020.
        [arXiv:2007.14469](https://arxiv.org/abs/2007.14469)
    """
    rule = _autoclip_rule(percentile, window)
    return clip_by_global_norm(rule, nonfinite=nonfinite, axis_name=axis_name)


def _autoclip_rule(percentile: Any = 10.0, window: int = 10_000) -> ThresholdRule:
    """AutoClip's rule as [`adaclip.autoclip`][adaclip.autoclip] applies it
    (the CLI replays it too)."""
    _validation.check_real("percentile", percentile, low=0.0, high=100.0)
    return _with_eps(percentile_rule(percentile, window), always=True)


def zclip(
    alpha: Any = 0.97,
    z_thresh: Any = 2.5,
    warmup_steps: Any = 25,
    max_norm: Any = 1.0,
    mode: str = "zscore",
    clip_option: str = "adaptive_scaling",
    clip_factor: Any = 1.0,
    skip_update_on_spike: bool = False,
    *,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """ZClip: clip global-norm spikes detected by a z-score against an EMA.

    [`adaclip.clip_by_global_norm`][adaclip.clip_by_global_norm] with
    [`adaclip.zscore`][adaclip.zscore] (see it for the maths) under the cap
    ``max_norm``, ZClip's ``max_grad_norm``: the bound applied at step $t$
    is $\\min(c_t, M)$ with $c_t$ the z-score bound on a spike and the norm
    itself otherwise, and the gradient is scaled by
    $\\min(c_t, M) / (\\lVert g_t\\rVert + 10^{-6})$ when the norm exceeds it. The z-score
    rule has no bound yet for the first ``warmup_steps`` finite steps
    (``docs/concepts.md``, "Before a rule has a bound"), so only the cap
    applies then; with ``max_norm=None`` nothing is cut then. Defaults are
    ZClip's (Kumar et al. 2025). With the default cap of 1.0 the recipe
    mostly behaves like fixed clipping at 1.0 when norms are above 1, as the
    original does; pass ``max_norm=None`` for the purely adaptive rule.

    On finite inputs the post-clip norms are the original's step for step
    (during warm-up ZClip uses torch's ``min(1, M / (norm + 1e-6))``, which
    also scales norms within $10^{-6}$ below $M$ by up to $10^{-6}$
    relative; here those are left alone). The threshold metric on a clipped
    step is the norm clipped to, $\\min(c_t, M)\\lVert g_t\\rVert /
    (\\lVert g_t\\rVert + 10^{-6})$.

    **Differences from ZClip.** A NaN or infinite norm never enters the EMA
    (in the original, one NaN makes the mean and variance NaN forever, after
    which no spike is ever detected); the clipper's output is zeros
    (``nonfinite="skip"``; the optimizer after it still steps) or passed
    through (``"propagate"``), and later spikes are still clipped.

    Args:
        alpha: EMA factor in (0, 1).
        z_thresh: z-score threshold, > 0.
        warmup_steps: an int >= 1 (may be traced): the z-score rule has no
            bound yet for the first ``warmup_steps`` finite steps.
        max_norm: the cap $M \\ge 0$, or None for no cap.
        mode: ``"zscore"`` or ``"percentile"``.
        clip_option: ``"adaptive_scaling"`` or ``"mean"``.
        clip_factor: > 0, scales the adaptive bound.
        skip_update_on_spike: keep spikes out of the EMA.
        nonfinite: ``"skip"`` (zero the clipper's output) or ``"propagate"``.
        axis_name: the mapped axis the gradients are split over, if any.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState].

    Raises:
        TypeError, ValueError: a bad argument.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = optax.chain(adaclip.zclip(max_norm=None), optax.adamw(1e-3))
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kumar, Owen, Ashraf, Sarkar. *ZClip: Adaptive Spike Mitigation for LLM
        Pre-Training*, 2025. [arXiv:2504.02507](https://arxiv.org/abs/2504.02507)
    """
    rule = _zclip_rule(
        alpha,
        z_thresh,
        warmup_steps,
        max_norm,
        mode,
        clip_option,
        clip_factor,
        skip_update_on_spike,
    )
    return clip_by_global_norm(rule, nonfinite=nonfinite, axis_name=axis_name)


def _zclip_rule(
    alpha: Any = 0.97,
    z_thresh: Any = 2.5,
    warmup_steps: Any = 25,
    max_norm: Any = 1.0,
    mode: str = "zscore",
    clip_option: str = "adaptive_scaling",
    clip_factor: Any = 1.0,
    skip_update_on_spike: bool = False,
) -> ThresholdRule:
    """ZClip's rule as [`adaclip.zclip`][adaclip.zclip] applies it (the CLI replays it too)."""
    rule = zscore(
        alpha,
        z_thresh,
        warmup_steps,
        mode=mode,
        clip_option=clip_option,
        clip_factor=clip_factor,
        skip_update_on_spike=skip_update_on_spike,
    )
    if max_norm is not None:
        _validation.check_nonnegative("max_norm", max_norm)
        rule = minimum(rule, max_norm)
    return _with_eps(rule, always=False)


class AdaGCState(NamedTuple):
    """State of AdaGC's rule: the ``rule_state`` of [`adaclip.adagc`][adaclip.adagc]'s
    [`adaclip.ClipState`][adaclip.ClipState].

    ``gamma`` holds one reference norm per leaf (in the order of
    ``jax.tree_util.tree_leaves``): during warm-up the smallest post-clip norm
    the leaf had, then an EMA of its post-clip norms, which the leaf is
    clipped at ``ratio`` times. ``count`` is the number of finite steps taken,
    which tells warm-up from the EMA phase.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.adagc(warmup_steps=2)
        >>> state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(3)})
        >>> state.rule_state
        AdaGCState(gamma=Array([0., 0.], dtype=float32), count=Array(0, dtype=int32))
        >>> _, state = tx.update({"a": jnp.full(2, 1.0), "b": jnp.full(3, 1.0)}, state)
        >>> state.rule_state.gamma, int(state.rule_state.count)
        (Array([0.6324553 , 0.77459633], dtype=float32), 1)
    """

    gamma: jax.Array  # float32, (n_leaves,): each leaf's reference norm.
    count: jax.Array  # int32, (): finite steps taken so far.


def _adagc_rule(
    ratio: Any = 1.04, beta: Any = 0.99, warmup_steps: Any = 100, warmup_max_norm: Any = 1.0
) -> ThresholdRule:
    """AdaGC's per-leaf thresholds, with the originals' epsilon folded in.

    During warm-up the whole tree is scaled by ``min(1, M / (G + eps))``
    (``G`` the global norm, from the per-leaf norms) and each leaf's
    threshold is its post-clip norm; after warm-up each leaf is clipped at
    ``ratio * gamma``.
    """
    _validation.check_positive("ratio", ratio)
    _validation.check_real("beta", beta, low=0.0, high=1.0, high_open=True)
    _validation.check_int("warmup_steps", warmup_steps, low=0)
    _validation.check_nonnegative("warmup_max_norm", warmup_max_norm)

    def init_fn(statistic):
        return AdaGCState(
            gamma=jnp.zeros(jnp.shape(statistic), jnp.float32), count=jnp.zeros([], jnp.int32)
        )

    def update_fn(statistic, state):
        s = as_f32(statistic)
        r, b = as_f32(ratio), as_f32(beta)
        first = state.count == 0

        # Warm-up: global clipping; gamma is the running minimum of each
        # leaf's post-clip norm.
        # The global norm from the leaf norms, scaled so it cannot overflow.
        top = jnp.max(s, initial=0.0)
        unit = jnp.where(top > 0, top, 1.0)
        global_norm = unit * jnp.sqrt(jnp.sum(jnp.square(s / unit)))
        coef = jnp.minimum(1.0, as_f32(warmup_max_norm) / (global_norm + TORCH_EPS))
        w_post = s * coef
        w_threshold = jnp.where(coef < 1.0, w_post, s)
        w_gamma = jnp.where(first, w_post, jnp.minimum(state.gamma, w_post))

        # After warm-up: per-leaf clipping at ratio * gamma, gamma fed the
        # clipped norm. (With warmup_steps=0 the first step only sets gamma.)
        bound = jnp.minimum(r * state.gamma, F32_MAX)
        spike = (s > bound) & ~first
        a_threshold = jnp.where(spike, bound * (s / (s + TORCH_EPS)), jnp.maximum(bound, s))
        a_gamma = jnp.where(first, s, b * state.gamma + (1.0 - b) * jnp.minimum(s, bound))

        in_warmup = state.count < warmup_steps
        threshold = jnp.where(in_warmup, w_threshold, a_threshold)
        gamma = jnp.where(in_warmup, w_gamma, a_gamma)
        return threshold, AdaGCState(gamma=gamma, count=increment(state.count))

    return ThresholdRule(init_fn, update_fn)


def adagc(
    ratio: Any = 1.04,
    beta: Any = 0.99,
    warmup_steps: Any = 100,
    warmup_max_norm: Any = 1.0,
    *,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaGC: per-leaf clipping against each leaf's own EMA of clipped norms.

    For the first $W$ = ``warmup_steps`` finite steps the per-leaf rule has
    no bound yet, and a fallback bound stands in (``docs/concepts.md``,
    "Before a rule has a bound"): the whole tree is clipped by its global
    norm $G_t$ at $M$ = ``warmup_max_norm`` (PyTorch's
    $\\min(1, M / (G_t + 10^{-6}))$), and each leaf's reference norm $\\gamma_i$ is the running
    minimum of its post-clip norm. After warm-up, with $r$ = ``ratio`` and
    $\\beta$ = ``beta``, each leaf $i$ is clipped on its own:

    $$g_i \\leftarrow g_i \\cdot \\frac{r\\gamma_i}{\\lVert g_i\\rVert + 10^{-6}}
      \\ \\text{ if } \\lVert g_i\\rVert > r\\gamma_i,\\qquad
      \\gamma_i \\leftarrow \\beta\\gamma_i + (1-\\beta)\\min(\\lVert g_i\\rVert, r\\gamma_i)$$

    so a leaf's threshold can grow by at most a factor $\\beta + (1-\\beta)r$
    a step. Defaults are the paper's (Wang et al. 2025). Built on
    [`adaclip.clip_by_leaf_norm`][adaclip.clip_by_leaf_norm]: the metrics have one entry per leaf;
    the threshold metric is the norm each leaf is clipped to (its post-clip
    norm during warm-up when the global clip cuts, $r\\gamma_i
    \\lVert g_i\\rVert/(\\lVert g_i\\rVert + 10^{-6})$ after warm-up when the
    leaf is clipped, otherwise a value no smaller than its norm). On finite
    inputs the post-clip norms are the original's step for step.

    **The original locks, and so does this recipe.** $\\gamma_i$ can grow by
    at most the factor $\\beta + (1-\\beta)r$ a step (1.0004 at the
    defaults), and during warm-up it is a running minimum. A leaf whose
    gradient is exactly zero at some warm-up step gets $\\gamma_i = 0$ and
    is clipped to zero for ever (a tiny norm, to a tiny level that takes
    thousands of steps to climb back). Zero-initialised layers (LoRA's
    ``B``, adaLN-Zero or ReZero gates: their leaves' gradients are zero at
    step 0) and fully masked first batches do exactly this. The recipe keeps
    this to reproduce AdaGC; to avoid the trap, start AdaGC only once every
    leaf has a nonzero gradient (run a few steps with another clipper
    first), or clip per leaf with an adaptive rule that no zero can pin,
    e.g. ``adaclip.clip_by_leaf_norm(adaclip.ema(2.0, 0.99))`` (see
    ``docs/robustness.md``). With ``warmup_steps=0`` the first step sets
    $\\gamma_i$ to the leaf's norm and clips nothing (a zero first norm
    locks the leaf all the same).

    **Differences from AdaGC.** A NaN or infinite norm in any leaf never
    enters $\\gamma$ (the clipper's output is zeros with
    ``nonfinite="skip"``; the optimizer after it still steps), so later
    spikes are still clipped and thresholds stay finite.

    Args:
        ratio: $r > 0$.
        beta: $\\beta \\in [0, 1)$.
        warmup_steps: $W$, an int >= 0 (may be traced): the per-leaf rule has
            no bound yet for the first $W$ finite steps (``warmup_max_norm``
            stands in).
        warmup_max_norm: $M \\ge 0$, the global threshold during warm-up.
        nonfinite: ``"skip"`` (zero the clipper's output) or ``"propagate"``.
        axis_name: the mapped axis the gradients are split over, if any.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with per-leaf metrics.

    Raises:
        TypeError, ValueError: a bad argument.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = optax.chain(adaclip.adagc(), optax.adamw(1e-3))
        >>> state = tx.init({"w": jnp.zeros(3), "b": jnp.zeros(1)})

    References:
        Wang et al. *AdaGC: Improving Training Stability for Large Language
        Model Pretraining*, 2025. [arXiv:2502.11034](https://arxiv.org/abs/2502.11034)
    """
    rule = _adagc_rule(ratio, beta, warmup_steps, warmup_max_norm)
    return clip_by_leaf_norm(rule, nonfinite=nonfinite, axis_name=axis_name)


def agc(
    clipping: Any = 0.01,
    eps: Any = 1e-3,
    *,
    axis: Any = None,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """AGC: each unit's gradient norm at most ``clipping`` times its parameters'.

    $$g_u \\leftarrow g_u \\cdot \\min\\left(1,
      \\frac{\\lambda \\max(\\lVert w_u \\rVert_2, \\epsilon)}{\\lVert g_u \\rVert_2}\\right)$$

    with $\\lambda$ = ``clipping``, $\\epsilon$ = ``eps`` and the units of
    optax's ``unitwise_norm`` (one per output unit of a dense or convolution
    kernel; a bias or a scale is one unit). This is
    ``clip_by_unit_norm(clipping, relative=True, eps=eps)``, and equals
    ``optax.adaptive_grad_clip(clipping, eps)`` on finite inputs; it adds
    adaclip's metrics (the ratio $\\lVert g_u \\rVert / \\max(\\lVert w_u
    \\rVert, \\epsilon)$ of every unit), NaN safety, and thresholds from any
    rule: ``clipping`` may be a schedule or a rule of the ratio, for example
    AutoClip's percentile, ``agc(adaclip.percentile(10.0, 1000))``. A rule's
    state is per unit, so its size is bounded at ``init``.

    **Differences from optax.** Norms accumulate in float32 (float64 with a
    float64 leaf) whatever the leaf's dtype and never overflow. optax divides
    by $\\max(\\lVert g_u \\rVert, 10^{-6})$, so a gradient whose norm is
    below $10^{-6}$ and above its bound is cut below the bound; here it is
    clipped exactly to it. A NaN or infinite gradient zeroes the step's
    update (``nonfinite="skip"``) instead of spreading NaN.

    Args:
        clipping: $\\lambda \\ge 0$ (a float, a schedule or a rule of the ratio).
        eps: $\\epsilon > 0$, the floor of a unit's parameter norm, so that
            zero-initialised weights still move.
        axis: the units (see [`adaclip.clip_by_unit_norm`][adaclip.clip_by_unit_norm]).
        nonfinite: ``"skip"`` or ``"propagate"``.
        axis_name: the mapped axis the gradients are split over, if any.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with one entry per unit;
        ``update`` needs the parameters.

    Raises:
        TypeError, ValueError: a bad argument; at ``update``, no ``params``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> params = {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])}
        >>> grads = {"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]])}
        >>> tx = adaclip.agc(0.1)
        >>> updates, state = tx.update(grads, tx.init(params), params)
        >>> print(updates["kernel"].round(6))  # column 1 has zero weights: bound 0.1 * eps
        [[6.e-02 6.e-05]
         [8.e-02 8.e-05]]
        >>> ref, _ = optax.adaptive_grad_clip(0.1).update(grads, None, params)
        >>> bool(jnp.allclose(updates["kernel"], ref["kernel"]))
        True

    References:
        Brock et al. *High-Performance Large-Scale Image Recognition Without
        Normalization*, 2021. [arXiv:2102.06171](https://arxiv.org/abs/2102.06171)
    """
    rule = as_rule(clipping, "clipping", allow_inf=True)  # its errors name clipping
    return clip_by_unit_norm(
        rule, axis=axis, relative=True, eps=eps, nonfinite=nonfinite, axis_name=axis_name
    )


def stabilize(
    optimizer: optax.GradientTransformation,
    *,
    multiplier: Any = 1.0,
    decay: Any = 0.99,
    max_step_ratio: Any = 0.03,
    eps: Any = 1e-3,
    nonfinite: str = "skip",
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The recommended default: clip the gradient at its mean, bound each step.

    Wraps ``optimizer`` (any optax optimizer, learning rate included) between
    two clippers:

    $$g_t \\leftarrow g_t \\min\\left(1, \\frac{m\\, \\bar n_t}{\\lVert g_t\\rVert}\\right),
      \\qquad u_t = \\mathrm{optimizer}(g_t),\\qquad
      u_t \\leftarrow u_t \\min\\left(1, \\frac{\\rho \\max(\\lVert w_t\\rVert, \\epsilon)}
      {\\lVert u_t\\rVert}\\right)$$

    with $\\bar n_t$ the bias-corrected EMA of the past *unclipped* global
    norms (``ema(multiplier, decay, feed="raw")``), $m$ = ``multiplier``,
    $\\rho$ = ``max_step_ratio`` and $w_t$ the parameters passed to
    ``update``. It is exactly

    ``optax.chain(clip_by_global_norm(ema(multiplier, decay, feed="raw")),
    optimizer, clip_by_global_norm(max_step_ratio, relative=True, eps=eps))``.

    The first clip keeps a gradient at most ``multiplier`` times its recent
    mean norm: at a stable learning rate it cuts only the upper part of the
    norm's distribution. The second bounds the step itself, learning rate
    included, to ``max_step_ratio`` of the parameters' norm: it acts only
    where the learning rate is so large that a step would move the
    parameters by more than 3%, which is where the best fixed threshold
    falls as $1/\\eta$ (``docs/outcomes.md``). It needs no absolute scale and
    sees the learning rate and its schedule without being told.

    The defaults were chosen by the selection protocol of the outcomes
    benchmark (``docs/outcomes.md``): on its five selection tasks it was
    within 5% of the best hand-tuned fixed threshold in the most cells (12
    of 20, ties broken by the geometric-mean ratio). On the two held-out
    tasks it was within 5% in 4 of 8 cells, against 6 for the best single
    fixed threshold, with far smaller misses (1.28x the best loss at worst,
    against 16x). It does not replace tuning.

    **Zero parameters.** Below ``eps`` the parameters' norm counts as
    ``eps``: all-zero parameters move by at most ``max_step_ratio * eps`` a
    step until their norm reaches ``eps`` (about ``1 / max_step_ratio``
    steps), then by at most ``max_step_ratio`` times their norm, so a model
    initialised at zero starts slowly. Raise ``eps`` to the scale you expect
    the parameters to reach, or use the gradient clip alone, for such a
    model.

    Args:
        optimizer: the optax optimizer to wrap (``optax.adam(1e-3)``, a
            chain, an ``inject_hyperparams`` optimizer).
        multiplier: $m > 0$, the gradient clip in units of the mean norm.
        decay: the EMA's decay in [0, 1).
        max_step_ratio: $\\rho \\ge 0$, the largest step as a share of the
            parameters' norm (a float, a schedule or a rule).
        eps: $\\epsilon > 0$, the floor of the parameters' norm.
        nonfinite: ``"skip"`` or ``"propagate"``, for both clippers.
        axis_name: the mapped axis the gradients are split over, if any.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; its state is the chain's
        (the gradient clip's [`adaclip.ClipState`][adaclip.ClipState], the
        optimizer's, the step clip's), which
        [`adaclip.metrics`][adaclip.metrics] reads as ``0/...`` (the
        gradient) and ``2/...`` (the step). ``update`` needs the parameters.

    Raises:
        TypeError, ValueError: a bad argument, named; at ``update``, no
            ``params``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> params = {"w": jnp.ones(4)}
        >>> tx = adaclip.stabilize(optax.sgd(10.0))
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(4)}, state, params)
        >>> # the step is at most 3% of the parameters' norm (2.0)
        >>> print(round(float(optax.tree.norm(updates)), 6))
        0.06
    """
    # any object with optax's init and update (a GradientTransformation,
    # with or without extra args, or a user's own)
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "stabilize: optimizer must be an optax GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {optimizer!r}"
        )
    step_rule = as_rule(max_step_ratio, "max_step_ratio", allow_inf=True)
    return optax.chain(
        clip_by_global_norm(
            ema(multiplier, decay, feed="raw"), nonfinite=nonfinite, axis_name=axis_name
        ),
        optimizer,
        clip_by_global_norm(
            step_rule, relative=True, eps=eps, nonfinite=nonfinite, axis_name=axis_name
        ),
    )
