"""Records of training runs: the Recorder, and the CSV and .npy files it writes and reads."""

from __future__ import annotations

import csv
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from adaclip import _validation

_LEAF_COLUMN = re.compile(r"^(.*)\[(\d+)\]$")
# A number as CSV writers spell it: ASCII digits, one optional sign, point and
# exponent, or nan / inf / infinity (any case).
_CSV_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\Z",
    re.IGNORECASE | re.ASCII,
)


def is_norm_column(name: str) -> bool:
    """Whether a column holds norms: its name (less a ``[i]`` leaf index) ends in ``norm``."""
    match = _LEAF_COLUMN.match(name)
    base = match.group(1) if match else name
    return base.lower().endswith("norm")


def _cell(value: Any) -> str:
    if isinstance(value, np.bool_ | bool):
        return str(int(value))
    if isinstance(value, np.floating | float):
        return repr(float(value)) if np.isfinite(value) else str(float(value))
    return str(value)


def write_csv(path: str | pathlib.Path, columns: Mapping[str, Any]) -> pathlib.Path:
    """Writes equal-length columns as CSV: 1-D as ``name``, 2-D as ``name[0]``, ``name[1]``, ...

    Floats are written exactly (``repr``), booleans as 0/1;
    [`adaclip.tuning.load_record`][adaclip.tuning.load_record] reads the file back.
    """
    path = pathlib.Path(path)
    header, cells = [], []
    lengths = set()
    for name, values in columns.items():
        arr = np.asarray(values)
        lengths.add(len(arr))
        if arr.ndim == 1:
            header.append(name)
            cells.append(arr)
        else:
            flat = arr.reshape(len(arr), -1)
            for i in range(flat.shape[1]):
                header.append(f"{name}[{i}]")
                cells.append(flat[:, i])
    if len(lengths) > 1:
        raise ValueError(f"columns must have equal lengths, got {sorted(lengths)}.")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in range(lengths.pop() if lengths else 0):
            writer.writerow([_cell(c[r]) for c in cells])
    return path


def _refuse_tracers(values: Mapping[str, Any], where: str) -> None:
    """Raises a TypeError naming the first value that holds a JAX tracer."""
    for name, value in values.items():
        if any(_validation.is_traced(leaf) for leaf in jax.tree.leaves(value)):
            raise TypeError(
                f"{where} got a traced value for {name!r}: it was called inside jax.jit, "
                "jax.vmap or another JAX transformation, where it would store one row of "
                "tracers, not one row per step. Return the metrics from the jitted step "
                "and record them outside it."
            )


class Recorder:
    """Records per-step clip metrics of a training run, to save as CSV or .npy.

    Call `record` after each step with ``adaclip.metrics(opt_state)``
    (and any other scalars, e.g. the loss). Recording keeps device arrays and
    never waits for the device; they are brought to the host when you call
    `arrays` or `save`.

    Metrics record the last *finite* norm on a non-finite step; the recorder
    writes NaN there instead (for every ``norm`` whose ``nonfinite_count``
    went up at that step), so that [`adaclip.replay`][adaclip.replay] over the
    recorded ``norm`` column sees the same sequence the rule saw in training.
    Whether the *first* recorded step was non-finite needs the count before
    it: pass ``initial_metrics=adaclip.metrics(opt_state)`` of the state the
    recording starts from (fresh or restored from a checkpoint). Without it
    the count before the first step is unknown, and the first recorded norm
    is kept as recorded (a recorder started mid-run, after earlier
    non-finite steps, must not mark it).

    ``record`` is host-side: it refuses traced values (a call inside
    ``jax.jit``, ``jax.vmap`` or ``jax.lax.scan`` would store one row of
    tracers). Return the metrics from the jitted step and record them outside.

    Args:
        initial_metrics: the metrics dict of the optimizer state before the
            first recorded step, or None.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> import adaclip.tuning
        >>> tx = adaclip.clip_by_global_norm(adaclip.ema(2.0, 0.9))
        >>> state = tx.init(jnp.zeros(2))
        >>> recorder = adaclip.tuning.Recorder()
        >>> for g in [[3.0, 4.0], [float("nan"), 0.0], [0.6, 0.8]]:
        ...     _, state = tx.update(jnp.array(g), state)
        ...     recorder.record(adaclip.metrics(state), loss=1.0)
        >>> recorder.arrays()["norm"]
        array([ 5., nan,  1.], dtype=float32)
    """

    def __init__(self, *, initial_metrics: Mapping[str, Any] | None = None) -> None:
        self._rows: list[dict[str, Any]] = []
        self._initial_counts: dict[str, np.ndarray] = {}
        if initial_metrics is not None:
            if not isinstance(initial_metrics, Mapping):
                raise TypeError(
                    "initial_metrics must be a dict of metrics (adaclip.metrics(opt_state)), "
                    f"got {initial_metrics!r}."
                )
            _refuse_tracers(initial_metrics, "Recorder(initial_metrics=...)")
            self._initial_counts = {
                name: np.asarray(jax.device_get(value)).astype(np.int64)
                for name, value in initial_metrics.items()
                if name == "nonfinite_count" or name.endswith("/nonfinite_count")
            }

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, metrics: Mapping[str, Any], **extra: Any) -> None:
        """Appends one step: a metrics dict plus extra named scalars or arrays.

        Raises:
            ValueError: the names differ from those of the first step.
            TypeError: a value is a tracer (``record`` called inside
                ``jax.jit``, ``jax.vmap`` or another transformation).
        """
        row = {**metrics, **extra}
        _refuse_tracers(row, "Recorder.record")
        if self._rows and row.keys() != self._rows[0].keys():
            raise ValueError(
                f"every step must record the same names: got {sorted(row)}, "
                f"expected {sorted(self._rows[0])}."
            )
        self._rows.append(row)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recording as NumPy arrays, one per name, steps first.

        A ``step`` column (0, 1, ...) comes first.
        """
        if not self._rows:
            return {"step": np.zeros((0,), np.int64)}
        names = list(self._rows[0])
        stacked = jax.device_get({n: [r[n] for r in self._rows] for n in names})
        out: dict[str, np.ndarray] = {"step": np.arange(len(self._rows))}
        for name in names:
            out[name] = np.stack([np.asarray(v) for v in stacked[name]])
        for name in names:
            if name == "norm" or name.endswith("/norm"):
                count = out.get(name[: -len("norm")] + "nonfinite_count")
                if count is None:
                    continue
                count = count.astype(np.int64)
                # The count before the first recorded step: given, or unknown
                # (then the first step's own count, which marks nothing).
                before = self._initial_counts.get(name[: -len("norm")] + "nonfinite_count")
                bad = np.diff(count, prepend=count[:1] if before is None else before) > 0
                norm = out[name].astype(np.float32)
                norm[bad] = np.nan
                out[name] = norm
        return out

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Writes the recording to ``path``: ``.csv`` or ``.npy`` by suffix.

        CSV has one column per scalar and ``name[i]`` columns for per-leaf
        metrics; ``.npy`` holds a NumPy structured array (one field per name,
        loadable with ``np.load`` without pickle). Read either back with
        [`adaclip.tuning.load_record`][adaclip.tuning.load_record].

        Raises:
            ValueError: an unknown suffix.
        """
        path = pathlib.Path(path)
        data = self.arrays()
        if path.suffix == ".npy":
            fields = [(n, v.dtype, v.shape[1:]) for n, v in data.items()]
            arr = np.zeros(len(data["step"]), dtype=fields)
            for n, v in data.items():
                arr[n] = v
            np.save(path, arr, allow_pickle=False)
        elif path.suffix == ".csv":
            write_csv(path, data)
        else:
            raise ValueError(f"path must end in .csv or .npy, got {str(path)!r}.")
        return path


def load_record(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a recording back: a CSV file or a ``.npy`` file.

    A CSV file needs a header row (a UTF-8 byte-order mark before it is
    skipped). Numeric columns become float64 arrays (empty cells become NaN),
    other columns arrays of strings; a cell that Python's ``float`` reads but
    a CSV number is not (``1_000``, non-ASCII digits) is refused. ``name[0]``,
    ``name[1]``, ... columns are gathered into one 2-D array ``name`` of
    shape ``(steps, n_leaves)``. A ``.npy`` file holds either a structured
    array (as [`adaclip.tuning.Recorder.save`][adaclip.tuning.Recorder.save]
    writes) or a plain 1-D or 2-D numeric array, returned as ``{"norm": array}``.

    The file must say unambiguously what each column is: a name appears
    once, a 2-D column ``name[i]`` is numbered ``0, 1, ..., n - 1`` and has no
    1-D column ``name`` beside it. A column of norms (its name ends in
    ``norm``: ``norm``, ``grad_norm``, ``0/norm``, ...) holds no negative value.

    Args:
        path: a ``.csv`` or ``.npy`` file.

    Returns:
        A dict from column names to arrays, in file order.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a table this function understands, a
            column name is duplicated or ambiguous, a numeric cell is not
            spelled as a CSV number, or a norm column holds a negative value
            (the message names the column).

    Examples:
        >>> import pathlib, tempfile
        >>> import adaclip.tuning
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.csv"
        >>> _ = path.write_text("step,grad_norm\\n0,1.5\\n1,\\n2,2.5\\n")
        >>> adaclip.tuning.load_record(path)["grad_norm"]
        array([1.5, nan, 2.5])
    """
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        out = _load_npy(path)
    else:
        out = _load_csv(path)
    for name, values in out.items():
        if is_norm_column(name) and values.dtype.kind in "iuf":
            with np.errstate(invalid="ignore"):
                negative = np.asarray(values < 0)
            if negative.any():
                step = int(np.argwhere(negative)[0][0])
                raise ValueError(
                    f"{path}: column {name!r} holds norms but has a negative value "
                    f"{values[step].tolist()!r} at row {step}."
                )
    return out


def _load_npy(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a NumPy array file without objects ({e}).") from None
    if arr.dtype.names:
        return {n: np.asarray(arr[n]) for n in arr.dtype.names}
    if arr.dtype.kind not in "iufb" or arr.ndim not in (1, 2):
        raise ValueError(
            f"{path}: expected a 1-D or 2-D numeric array, got shape {arr.shape} "
            f"and dtype {arr.dtype}."
        )
    return {"norm": arr}


def _load_csv(path: pathlib.Path) -> dict[str, np.ndarray]:
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            rows = list(csv.reader(f))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable CSV file ({e}).") from None
    if not rows or not rows[0]:
        raise ValueError(f"{path}: empty file, expected a header row.")
    header = [h.strip() for h in rows[0]]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{path}: column {name!r} appears more than once in the header.")
        seen.add(name)
    body_lines = [i + 2 for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(
                f"{path}: line {body_lines[i]} has {len(r)} fields, the header has {len(header)}."
            )
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j].strip() for r in body]
        try:
            columns[name] = np.asarray([float(c) if c else np.nan for c in cells], np.float64)
        except ValueError:
            columns[name] = np.asarray(cells, dtype=str)
            continue
        # float() also takes Python's own spellings ("1_000", non-ASCII digits):
        # a CSV number is plain ASCII, anything else is refused, never guessed.
        for i, c in enumerate(cells):
            if c and not _CSV_NUMBER.match(c):
                raise ValueError(
                    f"{path}: line {body_lines[i]}, column {name!r}: {c!r} is not a CSV "
                    "number (digits, '.', an exponent, nan or inf; no '_' separators)."
                )
    out: dict[str, Any] = {}
    leaves: dict[str, dict[int, np.ndarray]] = {}
    for name, values in columns.items():
        match = _LEAF_COLUMN.match(name)
        if match and values.dtype.kind == "f":
            parts = leaves.setdefault(match.group(1), {})
            if int(match.group(2)) in parts:
                raise ValueError(
                    f"{path}: per-leaf column {match.group(1)}[{int(match.group(2))}] "
                    "appears more than once in the header."
                )
            parts[int(match.group(2))] = values
            out.setdefault(match.group(1), None)  # keeps file order
        else:
            out[name] = values
    for name, parts in leaves.items():
        if name in columns:
            raise ValueError(
                f"{path}: column {name!r} is ambiguous: the header has both {name!r} and "
                f"per-leaf columns {name}[i]."
            )
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(
                f"{path}: per-leaf columns {name}[i] must be numbered 0..{len(parts) - 1}, "
                f"got indices {sorted(parts)}."
            )
        out[name] = np.stack([parts[i] for i in range(len(parts))], axis=1)
    return out
