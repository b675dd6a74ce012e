"""adaclip: adaptive gradient clipping for JAX, as composable Optax transformations."""

from importlib import metadata as _metadata

from adaclip._base import ThresholdRule as ThresholdRule
from adaclip._blocks import stacked as stacked
from adaclip._clippers import ClipState as ClipState
from adaclip._clippers import clip_by_global_norm as clip_by_global_norm
from adaclip._clippers import clip_by_leaf_norm as clip_by_leaf_norm
from adaclip._clippers import clip_by_unit_norm as clip_by_unit_norm
from adaclip._clippers import clip_by_value as clip_by_value
from adaclip._combinators import ClampState as ClampState
from adaclip._combinators import WarmupState as WarmupState
from adaclip._combinators import clamp as clamp
from adaclip._combinators import maximum as maximum
from adaclip._combinators import minimum as minimum
from adaclip._combinators import warmup as warmup
from adaclip._ema_rules import EmaState as EmaState
from adaclip._ema_rules import ZScoreState as ZScoreState
from adaclip._ema_rules import ema as ema
from adaclip._ema_rules import zscore as zscore
from adaclip._ema_zscore import EmaZScoreState as EmaZScoreState
from adaclip._ema_zscore import ema_zscore as ema_zscore
from adaclip._log_space import log_space as log_space
from adaclip._metrics import metrics as metrics
from adaclip._quantile import QuantileState as QuantileState
from adaclip._quantile import quantile as quantile
from adaclip._recipes import AdaGCState as AdaGCState
from adaclip._recipes import adagc as adagc
from adaclip._recipes import agc as agc
from adaclip._recipes import autoclip as autoclip
from adaclip._recipes import stabilize as stabilize
from adaclip._recipes import zclip as zclip
from adaclip._replay import Trace as Trace
from adaclip._replay import replay as replay
from adaclip._rolling_rules import RollingZScoreState as RollingZScoreState
from adaclip._rolling_rules import rolling_zscore as rolling_zscore
from adaclip._schedule_rules import FixedState as FixedState
from adaclip._schedule_rules import ScheduleState as ScheduleState
from adaclip._schedule_rules import decaying as decaying
from adaclip._schedule_rules import fixed as fixed
from adaclip._schedule_rules import scheduled as scheduled
from adaclip._second_moment import SecondMomentState as SecondMomentState
from adaclip._second_moment import SpamState as SpamState
from adaclip._second_moment import clip_by_second_moment as clip_by_second_moment
from adaclip._second_moment import spam as spam
from adaclip._skip import SkipState as SkipState
from adaclip._skip import skip_bad_steps as skip_bad_steps
from adaclip._window_rules import PercentileState as PercentileState
from adaclip._window_rules import WindowState as WindowState
from adaclip._window_rules import moving_average as moving_average
from adaclip._window_rules import percentile as percentile

# isort: split
# The host-side tuning tools, a public subpackage that uses only the names above.
from adaclip import tuning as tuning

try:
    __version__ = _metadata.version("adaclip")
except _metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0.0.0"

__all__ = [
    "AdaGCState",
    "ClampState",
    "ClipState",
    "EmaState",
    "EmaZScoreState",
    "FixedState",
    "PercentileState",
    "QuantileState",
    "RollingZScoreState",
    "ScheduleState",
    "SecondMomentState",
    "SkipState",
    "SpamState",
    "ThresholdRule",
    "Trace",
    "WarmupState",
    "WindowState",
    "ZScoreState",
    "adagc",
    "agc",
    "autoclip",
    "clamp",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_by_second_moment",
    "clip_by_unit_norm",
    "clip_by_value",
    "decaying",
    "ema",
    "ema_zscore",
    "fixed",
    "log_space",
    "maximum",
    "metrics",
    "minimum",
    "moving_average",
    "percentile",
    "quantile",
    "replay",
    "rolling_zscore",
    "scheduled",
    "skip_bad_steps",
    "spam",
    "stabilize",
    "stacked",
    "warmup",
    "zclip",
    "zscore",
]
