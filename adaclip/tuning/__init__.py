"""adaclip.tuning: host-side tools to tune clipping from recorded norms.

Record a run ([`Recorder`][adaclip.tuning.Recorder]), read it back
([`load_record`][adaclip.tuning.load_record]), replay rules over it with
[`adaclip.replay`][adaclip.replay] and summarise, sweep, suggest and plot the
results; [`main`][adaclip.tuning.main] is the ``adaclip`` command line. Nothing
here runs inside a training step, and everything goes through adaclip's public
API.
"""

from adaclip.tuning._cli import main as main
from adaclip.tuning._plots import plot_sweep as plot_sweep
from adaclip.tuning._plots import plot_trace as plot_trace
from adaclip.tuning._records import Recorder as Recorder
from adaclip.tuning._records import load_record as load_record
from adaclip.tuning._suggest import suggest_fixed as suggest_fixed
from adaclip.tuning._suggest import suggest_for_clip_rate as suggest_for_clip_rate
from adaclip.tuning._summaries import format_table as format_table
from adaclip.tuning._summaries import summarize as summarize
from adaclip.tuning._sweeps import sweep as sweep

__all__ = [
    "Recorder",
    "format_table",
    "load_record",
    "main",
    "plot_sweep",
    "plot_trace",
    "suggest_fixed",
    "suggest_for_clip_rate",
    "summarize",
    "sweep",
]
