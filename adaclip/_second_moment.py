"""Element-wise clipping against a running second moment (SPAM), and the SPAM optimizer."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax import lax

from adaclip import _numerics, _validation
from adaclip._base import (
    F32_MAX,
    PyTree,
    ThresholdLike,
    ThresholdRule,
    as_rule,
    check_schedule,
    increment,
    reported_threshold,
    safe_sqrt,
    saturating_f32,
    step_rule,
)
from adaclip._clippers import NONFINITE, ClipState


class SecondMomentState(NamedTuple):
    """The ``rule_state`` of [`adaclip.clip_by_second_moment`][adaclip.clip_by_second_moment]'s
    [`adaclip.ClipState`][adaclip.ClipState]: its running second moment.

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> tx = adaclip.clip_by_second_moment(warmup_steps=0)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> _, state = tx.update({"w": jnp.array([1.0, -2.0])}, state)
        >>> state.rule_state.nu["w"]
        Array([0.001, 0.004], dtype=float32)
    """

    nu: PyTree  # like the params, float32 (float64 for a float64 leaf): EMA of clipped g**2.
    count: jax.Array  # int32, (): finite steps since ``nu`` was zeroed (the warm-up counter).
    threshold_state: PyTree  # the state of the threshold (a float's or a schedule's).


def _is_inexact(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _moment_dtype(dtype: Any) -> Any:
    """``nu``'s dtype: the wider of float32 and the leaf's."""
    return _numerics.work_dtype(dtype)


def _one_minus(b2: Any) -> Any:
    """``1 - b2`` as optax computes it: in Python's double precision for a
    Python number (then rounded once to the moment's dtype), so that ``nu``
    equals ``optax.adam``'s bit for bit; in the array's dtype when traced."""
    if isinstance(b2, int | float) and not isinstance(b2, bool):
        return 1.0 - float(b2)
    return 1 - jnp.asarray(b2)


def _as(x: Any, dtype: Any) -> jax.Array:
    return jnp.asarray(x).astype(dtype)


def clip_by_second_moment(
    threshold: ThresholdLike = 5000.0,
    *,
    b2: Any = 0.999,
    warmup_steps: Any = 19,
    nonfinite: str = "skip",
) -> optax.GradientTransformationExtraArgs:
    """Clips each element against its own running second moment (SPAM's spike clipping).

    The clipper keeps $v$, an exponential moving average of the squared
    *clipped* gradient (parameter-sized, like Adam's second moment). At step
    $t$, with $v_{t-1}$ the value before the step (not bias-corrected) and
    $\\theta_t$ the threshold,

    $$\\hat g_i = \\begin{cases} \\operatorname{sign}(g_i)\\sqrt{\\theta_t\\, v_{t-1,i}}
    & \\text{if } g_i^2 > \\theta_t\\, v_{t-1,i} \\text{ and } v_{t-1,i} > 0 \\\\
    g_i & \\text{otherwise}\\end{cases}
    \\qquad v_{t,i} = \\beta_2\\, v_{t-1,i} + (1-\\beta_2)\\,\\hat g_i^2 .$$

    Chained before ``optax.adam(b2=...)`` with the same ``b2``, $v$ is Adam's
    ``nu`` (bit for bit, for float32 and float64 parameters): this is SPAM's
    rule (Huang et al. 2025), which clips against Adam's own second moment.
    [`adaclip.spam`][adaclip.spam] is the whole SPAM optimizer, with its
    momentum resets.

    **Warm-up.** No bound yet for the first ``warmup_steps`` finite steps
    (while $v$ is still mostly its zero start): nothing is cut, while $v$ is
    fed (``docs/concepts.md``, "Before a rule has a bound"). SPAM's ``grad_accu_steps``
    $G$ clips from its $G$-th step, i.e. ``warmup_steps = G - 1``; the
    default 19 is SPAM's $G = 20$.

    **Where SPAM breaks, this does not.** An element whose $v$ is exactly 0
    (a weight whose gradient has been 0 so far, or whose $v$ decayed to 0)
    has no bound: SPAM would clip it to $\\sqrt{\\theta \\cdot 0} = 0$, so its
    $v$ never grows and it stays frozen until the next momentum reset
    (forever without resets). Here its first non-zero gradient passes
    and the weight trains. A non-finite gradient never enters $v$ (below).
    $v$ is held at the dtype's largest value rather than overflow to
    ``inf``, which no step could bring back.

    **Metrics.** The state is an [`adaclip.ClipState`][adaclip.ClipState], so
    [`adaclip.metrics`][adaclip.metrics] reads it: ``norm`` is the largest
    second-moment ratio $\\max_i g_i^2 / v_{t-1,i}$ over the elements with
    $v > 0$ (held at the float32 maximum); ``threshold`` is $\\theta_t$ (the
    ratio itself during the warm-up, or with a ``math.inf`` threshold, which
    measures only); ``clipped`` says whether any element was clipped, and
    ``clip_rate`` is the fraction of finite steps with a clipped element.

    **Non-finite steps.** A step with any NaN or infinite gradient element is
    non-finite as a whole: ``nonfinite_count`` goes up and the state is
    otherwise left as it was ($v$, the warm-up counter, the schedule's step
    and the metrics), so no NaN ever reaches $v$. With ``nonfinite="skip"``
    (the default) the step's update is all zeros, with ``"propagate"`` the
    gradients pass through unchanged. An Adam after the clipper still steps
    on the zero update and decays its ``nu`` by $\\beta_2$; $v$ keeps its value,
    so after a skipped step $v$ exceeds that ``nu`` by a share that fades as
    $\\beta_2^k$ (a bound slightly looser than SPAM's, never a NaN one).

    **Cost.** One read of the gradients and of $v$ for the finiteness check
    and the ``norm`` metric (one fused reduction), then an element-wise pass
    that computes $\\hat g$ and the new $v$. On XLA:CPU that pass writes out
    temporaries (see the performance page).
    Complex gradients are rejected (a complex number has no order).

    Args:
        threshold: $\\theta$: a float >= 0 (``math.inf``: measure only) or an
            optax schedule of the step count. Not a rule: a rule's state
            would be needed per element, as large as the parameters.
        b2: the decay of $v$, in [0, 1); Adam's ``b2`` to match its ``nu``.
        warmup_steps: an int >= 0: no bound yet for the first
            ``warmup_steps`` finite steps (SPAM's ``grad_accu_steps - 1``).
        nonfinite: ``"skip"`` or ``"propagate"``.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.ClipState`][adaclip.ClipState] with a
        [`adaclip.SecondMomentState`][adaclip.SecondMomentState] as its ``rule_state``.

    Raises:
        TypeError, ValueError: a bad ``threshold`` (a rule is a ``TypeError``),
            ``b2``, ``warmup_steps`` or ``nonfinite``.

    Examples:
        A spike 100 times the usual size is cut to $\\sqrt{\\theta v}$:

        >>> import jax.numpy as jnp, optax
        >>> import adaclip
        >>> tx = adaclip.clip_by_second_moment(50.0, b2=0.9, warmup_steps=3)
        >>> state = tx.init(jnp.zeros(1))
        >>> for g in [1.0, 1.0, 1.0, 100.0]:
        ...     update, state = tx.update(jnp.array([g]), state)
        >>> update  # sqrt(50 * 0.271) = 3.68
        Array([3.6810324], dtype=float32)
        >>> m = adaclip.metrics(state)
        >>> print(round(float(m["norm"])), float(m["threshold"]), bool(m["clipped"]))
        36900 50.0 True

        SPAM's clipping before Adam (the same ``b2``):

        >>> tx = optax.chain(adaclip.clip_by_second_moment(b2=0.999), optax.adam(1e-3, b2=0.999))

    References:
        Huang et al., 2025. *SPAM: Spike-Aware Adam with Momentum Reset for
        Stable LLM Training*. <https://arxiv.org/abs/2501.06842>
    """
    rule = _threshold_rule(threshold)
    _validation.check_real("b2", b2, low=0.0, high=1.0, high_open=True)
    _validation.check_int("warmup_steps", warmup_steps, low=0)
    _validation.check_choice("nonfinite", nonfinite, NONFINITE)

    def init_fn(params):
        nu = jax.tree.map(
            lambda p: (
                jnp.zeros(jnp.shape(p), _moment_dtype(p.dtype))
                if _is_inexact(p)
                else jnp.zeros([], jnp.float32)
            ),
            params,
        )
        return ClipState(
            norm=jnp.zeros([], jnp.float32),
            threshold=jnp.zeros([], jnp.float32),
            clipped=jnp.zeros([], jnp.bool_),
            clip_rate=jnp.zeros([], jnp.float32),
            nonfinite_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            rule_state=SecondMomentState(
                nu=nu,
                count=jnp.zeros([], jnp.int32),
                threshold_state=rule.init(jnp.zeros([], jnp.float32)),
            ),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        moment = state.rule_state
        leaves, treedef = jax.tree.flatten(updates)
        nus = treedef.flatten_up_to(moment.nu)
        clippable = [_is_inexact(g) for g in leaves]
        if any(
            c and jnp.issubdtype(g.dtype, jnp.complexfloating)
            for g, c in zip(leaves, clippable, strict=True)
        ):
            raise ValueError(
                "clip_by_second_moment cannot clip complex gradients: complex numbers have "
                "no order (optax.clip raises too)."
            )
        pairs = [(g, v) for g, v, c in zip(leaves, nus, clippable, strict=True) if c]
        for g, v in pairs:
            if jnp.shape(g) != jnp.shape(v):
                raise ValueError(
                    "clip_by_second_moment: a gradient leaf of shape "
                    f"{tuple(jnp.shape(g))} meets a second moment of shape {tuple(jnp.shape(v))}; "
                    "init takes the params, whose shapes the gradients must have."
                )

        # One read of g and v: the largest ratio g^2 / v over the elements
        # with v > 0. Written with arithmetic only and no constant arrays
        # (no select, no clamp), which XLA:CPU fuses into the reduction
        # instead of writing arrays out: with s = sign(v) (0 or 1),
        # (g s) g / (v + (1 - s)) is g^2 / v where v > 0 and 0 where v = 0;
        # g - g is NaN exactly for a NaN or infinite element. So the max is
        # NaN exactly on a non-finite step, and +inf only where a finite
        # ratio overflows (it is then held at the float32 maximum). Where
        # XLA may split the max across devices (which can drop a NaN on some
        # backends), a NaN probe (a sum, which never drops it) rides along.
        probe_needed = _numerics._may_span_devices()
        ratio = jnp.zeros([], jnp.float32)
        probe = jnp.zeros([], jnp.float32)
        for g, v in pairs:
            if not g.size:
                continue
            w = jnp.promote_types(_numerics.work_dtype(g.dtype), v.dtype)
            gw, vw = _numerics.convert(g, w), _numerics.convert(v, w)
            s = jnp.sign(vw)
            r = (gw * s) * gw / (vw + (1.0 - s)) + (gw - gw)
            m = lax.reduce(r, jnp.asarray(-jnp.inf, w), lax.max, tuple(range(r.ndim)))
            ratio = jnp.maximum(ratio, saturating_f32(m))
            if probe_needed:
                probe = probe + jnp.sum(gw - gw).astype(jnp.float32)
        stat = jnp.minimum(ratio, F32_MAX) + probe
        theta, threshold_state, finite = step_rule(rule, stat, moment.threshold_state)
        active = moment.count >= warmup_steps
        # The bound that applies: none (inf) in the warm-up or on a bad step.
        bound = jnp.where(active & finite, theta, jnp.inf)
        clipped = finite & (stat > bound)
        reported = saturating_f32(reported_threshold(bound, stat))

        new_leaves, new_nus = list(leaves), list(nus)
        for k, (g, c) in enumerate(zip(leaves, clippable, strict=True)):
            if c:
                new_leaves[k], new_nus[k] = _clip_leaf(g, nus[k], bound, finite)

        finite_steps = (state.count - state.nonfinite_count + 1).astype(jnp.float32)
        clip_rate = state.clip_rate + (clipped.astype(jnp.float32) - state.clip_rate) / finite_steps
        new_state = ClipState(
            norm=jnp.where(finite, stat, state.norm),
            threshold=jnp.where(finite, reported, state.threshold),
            clipped=clipped,
            clip_rate=jnp.where(finite, clip_rate, state.clip_rate),
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
            count=increment(state.count),
            rule_state=SecondMomentState(
                nu=jax.tree.unflatten(treedef, new_nus),
                count=jnp.where(finite, increment(moment.count), moment.count),
                threshold_state=threshold_state,
            ),
        )
        return jax.tree.unflatten(treedef, new_leaves), new_state

    def _clip_leaf(g, v, bound, finite):
        # One element-wise pass: the clipped g and the new v together.
        w = jnp.promote_types(_numerics.work_dtype(g.dtype), v.dtype)
        gw, vw = _numerics.convert(g, w), _numerics.convert(v, w)
        theta = _as(bound, w)
        # No bound (inf: the warm-up, a bad step, measure-only) never cuts;
        # kept out of the product so that its derivative is not inf * 0.
        bounded = jnp.isfinite(theta)
        th = jnp.where(bounded, theta, 0.0)
        limit, g2 = th * vw, gw * gw  # SPAM's comparison: g^2 > theta * v
        # The bound sqrt(theta) sqrt(v) cannot overflow; where theta * v or
        # g^2 does (v held at the dtype's maximum, |g| > ~1e19 in float32)
        # the comparison is made on it instead.
        root = jnp.sqrt(th) * safe_sqrt(vw)
        big = jnp.isinf(limit) | jnp.isinf(g2)
        over = (g2 > limit) | (big & (jnp.abs(gw) > root))
        # A zero threshold cuts every element, v = 0 included; otherwise an
        # element with v = 0 has no bound (SPAM would zero it until its next reset).
        cut = bounded & over & ((vw > 0) | (theta == 0))
        clipped = jnp.where(cut, jnp.sign(gw) * root, gw)
        decay = _as(b2, w)
        new_v = _as(_one_minus(b2), w) * (clipped * clipped) + decay * vw
        new_v = jnp.minimum(new_v, jnp.finfo(w).max)  # no absorbing inf
        # A bad step: zeros ("skip") or g as it came ("propagate"); v as it was.
        out = jnp.where(finite, clipped, jnp.zeros_like(clipped) if nonfinite == "skip" else gw)
        new_v = jnp.where(finite, new_v, vw)
        return _numerics.convert(out, g.dtype), _numerics.convert(new_v, v.dtype)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _threshold_rule(threshold: Any) -> ThresholdRule:
    """A float or a schedule; a rule is refused (its state would be per element)."""
    if isinstance(threshold, ThresholdRule):
        raise TypeError(
            "clip_by_second_moment's threshold must be a number or an optax schedule, got an "
            f"adaclip.ThresholdRule ({threshold!r:.60}): the bound is per element, so a rule's "
            "state would be as large as the parameters. Use a float or a schedule."
        )
    return as_rule(threshold, allow_inf=True)


# --------------------------------------------------------------------------- the SPAM optimizer


class SpamState(NamedTuple):
    """State of [`adaclip.spam`][adaclip.spam].

    Examples:
        >>> import jax.numpy as jnp
        >>> import adaclip
        >>> state = adaclip.spam(1e-3).init({"w": jnp.zeros(2)})
        >>> int(state.count), state.mu["w"]
        (0, Array([0., 0.], dtype=float32))
    """

    count: jax.Array  # int32, (): steps taken (Adam's bias correction; resets keep it).
    mu: PyTree  # like the params, float32 (float64 for a float64 leaf): Adam's first moment.
    clip: ClipState  # the clipper's state; its ``rule_state.nu`` is Adam's second moment.


def _bias_correction(decay: Any, t: jax.Array) -> jax.Array:
    """``1 - decay**t`` in ``t``'s dtype to a few ulps (``-expm1(t log1p(-(1 - decay)))``):
    the plain form loses ~1e-5 of it to rounding in float32 at small ``t`` with
    ``decay = 0.999``."""
    c = _as(_one_minus(decay), t.dtype)
    return -jnp.expm1(t * jnp.log1p(-c))


def _lr_ramp(steps_since_reset: jax.Array, lr_ramp_steps: Any, dtype: Any) -> jax.Array:
    """SPAM's learning-rate factor after a reset: ``1 - CosineDecay(0.99, R)``,
    i.e. ``1 - 0.99 (1 + cos(pi k / (R + 1))) / 2`` for ``k < R``, then 1."""
    k = steps_since_reset.astype(dtype)
    r = _as(lr_ramp_steps, dtype)
    ramp = 1.0 - 0.99 * (1.0 + jnp.cos(jnp.pi * k / (r + 1.0))) / 2.0
    return jnp.where(k < r, ramp, 1.0)


def spam(
    learning_rate: Any,
    *,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-6,
    weight_decay: Any = 0.0,
    threshold: ThresholdLike = 5000.0,
    warmup_steps: Any = 19,
    reset_interval: Any = 500,
    lr_ramp_steps: Any = 150,
    nonfinite: str = "skip",
) -> optax.GradientTransformationExtraArgs:
    """The SPAM optimizer: Adam with second-moment spike clipping and momentum resets.

    Each step $t$ (1-based) runs, per element:

    1. **Reset.** When ``reset_interval`` $\\Delta T > 0$ divides $t$, both
       moments are zeroed ($m = v = 0$) and the clipper's warm-up starts
       again (no bound for the next ``warmup_steps + 1`` steps, as in SPAM,
       which clips only where $t \\bmod \\Delta T \\ge G$). The step count
       of the bias correction is not reset.
    2. **Clip.** $\\hat g$ from
       [`adaclip.clip_by_second_moment`][adaclip.clip_by_second_moment]
       (``threshold``, ``b2``, ``warmup_steps``), whose $v$ is the second moment.
    3. **Adam**, in SPAM's form (``eps`` added to $\\sqrt{v}$ before the
       bias correction, as in ``transformers.AdamW``):
       $m \\leftarrow \\beta_1 m + (1-\\beta_1)\\hat g$,
       $u = -\\eta_t\\, s_t\\, \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}\\,
       \\frac{m}{\\sqrt{v} + \\epsilon}$.
    4. **Learning-rate ramp after a reset**, $s_t$: $k$ steps after a reset
       (the reset step is $k = 0$), $s_t = 1 - 0.99\\,(1 + \\cos(\\pi k /
       (R+1)))/2$ for $k < R$ = ``lr_ramp_steps``, else 1 (SPAM's
       ``1 - CosineDecay(0.99, warmup_steps)``). SPAM calls $R$
       ``warmup_steps``; here that name is the clipper's warm-up.
    5. **Weight decay** as SPAM applies it, after the step and unscaled by
       the ramp: $w \\leftarrow (w + u)(1 - \\eta_t \\lambda)$.

    With the defaults this reproduces the original implementation
    (TianjinYellow/SPAM-Optimizer, ``galore_torch/SPAM.py``, without its
    GaLore ``density`` masks) step for step, except where the original
    breaks: a weight whose $v$ is still 0 when clipping starts (its
    gradient was 0 so far) trains instead of being clipped to 0 until the
    next reset, and
    a non-finite gradient never reaches the moments (see
    [`adaclip.clip_by_second_moment`][adaclip.clip_by_second_moment]). The
    second moment is stored once, in the clipper's state, not twice as
    ``optax.chain(adaclip.clip_by_second_moment(), optax.adam(...))`` would.

    Args:
        learning_rate: $\\eta$, a float or an optax schedule of the step count.
        b1: Adam's first-moment decay, in [0, 1).
        b2: the second-moment decay, in [0, 1).
        eps: added to $\\sqrt{v}$, >= 0.
        weight_decay: $\\lambda$ >= 0 (``update`` then needs ``params``).
        threshold: SPAM's $\\theta$, a float or a schedule.
        warmup_steps: an int >= 0: no bound yet for the first ``warmup_steps``
            finite steps (SPAM's ``grad_accu_steps - 1``).
        reset_interval: SPAM's ``DeltaT``, an int >= 0 (0: never reset).
        lr_ramp_steps: SPAM's ``warmup_steps``: the learning-rate ramp after a reset.
        nonfinite: ``"skip"`` or ``"propagate"``, as for the clipper.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        [`adaclip.SpamState`][adaclip.SpamState]; ``adaclip.metrics`` reads its clipper.

    Raises:
        TypeError, ValueError: a bad argument, named in the message.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import adaclip
        >>> params = {"w": jnp.ones(3)}
        >>> opt = adaclip.spam(1e-3)
        >>> state = opt.init(params)
        >>> grads = {"w": jnp.array([0.1, -0.2, 0.3])}
        >>> updates, state = jax.jit(opt.update)(grads, state, params)
        >>> updates["w"].round(5)  # Adam's first step: about -lr * sign(g)
        Array([-0.001,  0.001, -0.001], dtype=float32)

    References:
        Huang et al., 2025. *SPAM: Spike-Aware Adam with Momentum Reset for
        Stable LLM Training*. <https://arxiv.org/abs/2501.06842>
    """
    if callable(learning_rate):
        check_schedule("learning_rate", learning_rate)
    else:
        _validation.check_nonnegative("learning_rate", learning_rate)
    _validation.check_real("b1", b1, low=0.0, high=1.0, high_open=True)
    _validation.check_nonnegative("eps", eps)
    _validation.check_nonnegative("weight_decay", weight_decay)
    _validation.check_int("reset_interval", reset_interval, low=0)
    _validation.check_int("lr_ramp_steps", lr_ramp_steps, low=0)
    clipper = clip_by_second_moment(
        threshold, b2=b2, warmup_steps=warmup_steps, nonfinite=nonfinite
    )
    decays = _validation.is_traced(weight_decay) or not (
        isinstance(weight_decay, int | float) and weight_decay == 0
    )

    def init_fn(params):
        mu = jax.tree.map(
            lambda p: (
                jnp.zeros(jnp.shape(p), _moment_dtype(p.dtype))
                if _is_inexact(p)
                else jnp.zeros([], jnp.float32)
            ),
            params,
        )
        return SpamState(
            count=jnp.zeros([], jnp.int32), mu=mu, clip=cast(ClipState, clipper.init(params))
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if decays and params is None:
            raise ValueError(
                "spam with weight_decay needs params: call update(grads, state, params)."
            )
        t = increment(state.count)  # 1-based step
        interval = jnp.asarray(reset_interval, jnp.int32)
        every = jnp.maximum(interval, 1)
        reset = (interval > 0) & (t % every == 0)
        # Steps since the last reset (the reset step is 0); none yet: no ramp.
        since = jnp.where((interval > 0) & (t >= interval), t % every, jnp.iinfo(jnp.int32).max)
        zero = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
        clip_state = state.clip
        moment = clip_state.rule_state
        mu = state.mu
        # SPAM clips where t mod DeltaT >= G: after a reset it waits
        # warmup_steps + 1 steps, hence the counter starts at -1.
        moment = moment._replace(
            nu=jax.tree.map(lambda v: jnp.where(reset, jnp.zeros_like(v), v), moment.nu),
            count=jnp.where(reset, -1, moment.count).astype(jnp.int32),
        )
        mu = jax.tree.map(lambda m, z: jnp.where(reset, z, m), mu, zero(mu))
        clipped, new_clip = clipper.update(updates, clip_state._replace(rule_state=moment))
        clip_state = cast(ClipState, new_clip)
        nu = clip_state.rule_state.nu

        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        # Scalars in float64 when a moment is float64 (x64), else float32.
        wide = any(jnp.dtype(m.dtype) == jnp.float64 for m in jax.tree.leaves(mu))
        sdt = jnp.float64 if wide else jnp.float32
        lr = _as(lr, sdt)
        tf = t.astype(sdt)
        step_size = lr * jnp.sqrt(_bias_correction(b2, tf)) / _bias_correction(b1, tf)
        step_size = step_size * _lr_ramp(since, lr_ramp_steps, sdt)
        decay_factor = lr * _as(weight_decay, sdt)

        def leaf(g, m, v, p):
            if not _is_inexact(g):
                return g, m
            w = m.dtype
            gw = _numerics.convert(g, w)
            m = _as(b1, w) * m + _as(_one_minus(b1), w) * gw
            u = -_as(step_size, w) * m / (jnp.sqrt(_numerics.convert(v, w)) + _as(eps, w))
            if decays:
                u = u - _as(decay_factor, w) * (_numerics.convert(p, w) + u)
            return _numerics.convert(u, g.dtype), m

        leaves, treedef = jax.tree.flatten(clipped)
        ms = treedef.flatten_up_to(mu)
        vs = treedef.flatten_up_to(nu)
        ps = treedef.flatten_up_to(params) if params is not None else [None] * len(leaves)
        out = [leaf(g, m, v, p) for g, m, v, p in zip(leaves, ms, vs, ps, strict=True)]
        new_updates = jax.tree.unflatten(treedef, [u for u, _ in out])
        new_mu = jax.tree.unflatten(treedef, [m for _, m in out])
        return new_updates, SpamState(count=t, mu=new_mu, clip=clip_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
