"""adaclip: adaptive gradient clipping for JAX, as composable Optax transformations."""

import importlib.metadata

from adaclip._base import ThresholdRule as ThresholdRule
from adaclip._clippers import ClipState as ClipState
from adaclip._clippers import clip_by_global_norm as clip_by_global_norm
from adaclip._clippers import clip_by_leaf_norm as clip_by_leaf_norm
from adaclip._clippers import clip_by_value as clip_by_value
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
from adaclip._plotting import plot_sweep as plot_sweep
from adaclip._plotting import plot_trace as plot_trace
from adaclip._quantile import QuantileState as QuantileState
from adaclip._quantile import quantile as quantile
from adaclip._recipes import adagc as adagc
from adaclip._recipes import autoclip as autoclip
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
from adaclip._skip import SkipState as SkipState
from adaclip._skip import skip_bad_steps as skip_bad_steps
from adaclip._tuning import Recorder as Recorder
from adaclip._tuning import format_table as format_table
from adaclip._tuning import load_record as load_record
from adaclip._tuning import suggest_fixed as suggest_fixed
from adaclip._tuning import suggest_for_clip_rate as suggest_for_clip_rate
from adaclip._tuning import summarize as summarize
from adaclip._tuning import sweep as sweep
from adaclip._window_rules import PercentileState as PercentileState
from adaclip._window_rules import WindowState as WindowState
from adaclip._window_rules import moving_average as moving_average
from adaclip._window_rules import percentile as percentile

try:
    __version__ = importlib.metadata.version("adaclip")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0.0.0"

__all__ = [
    "ClipState",
    "EmaState",
    "EmaZScoreState",
    "FixedState",
    "PercentileState",
    "QuantileState",
    "Recorder",
    "RollingZScoreState",
    "ScheduleState",
    "SkipState",
    "ThresholdRule",
    "Trace",
    "WindowState",
    "ZScoreState",
    "adagc",
    "autoclip",
    "clamp",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_by_value",
    "decaying",
    "ema",
    "ema_zscore",
    "fixed",
    "format_table",
    "load_record",
    "log_space",
    "maximum",
    "metrics",
    "minimum",
    "moving_average",
    "percentile",
    "plot_sweep",
    "plot_trace",
    "quantile",
    "replay",
    "rolling_zscore",
    "scheduled",
    "skip_bad_steps",
    "suggest_fixed",
    "suggest_for_clip_rate",
    "summarize",
    "sweep",
    "warmup",
    "zclip",
    "zscore",
]
