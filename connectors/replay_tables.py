"""CSV and Parquet tables as replay inputs: columns to readings, extra numeric columns to channels, labels.

A file's columns (matched after normalising the name: lower case, each run of characters other than
``a-z0-9_`` becomes ``_``, leading/trailing ``_`` stripped):

- ``machine_id``: optional; without it every row belongs to the file's default machine (see
  `connectors.replay_sources`: the file name).
- ``ts``, or else ``timestamp``, ``datetime`` or ``time``: epoch ms, or ISO 8601 (UTC when without zone).
- ``temperature``, ``pressure``, ``vibration``, ``rpm``, ``power``: the core sensors (any subset).
- ``status`` (default ``running``), ``seq`` (default: the reading's number within its machine in time order,
  counted over all files), ``machine_type``.
- Labels: ``label``, or else ``anomaly``. Numbers: 0 or empty is healthy, anything else the fault
  ``anomaly``. Text: empty, ``normal``, ``0``, ``false`` are healthy, ``1``, ``true`` the fault ``anomaly``,
  anything else names the fault. Each run of one fault of a machine (in time order) is one event.
  ``changepoint`` (SKAB's second label column) is ignored.
- Every other column is a **channel**: it must be numeric (a text column is an error naming it; drop it
  from the file, or fix its values); its normalised name (a leading digit gets the prefix ``c_``, at most 40
  characters) must match ``CHANNEL_NAME_PATTERN``; two columns with one normalised name are an error; at
  most ``MAX_CHANNELS``. A column entirely empty is left out (a sensor that never reported).
- A CSV's separator is ``;``, ``,`` or tab, whichever its header line has most of.

NAB windows: a ``<stem>.windows.json`` beside ``<stem>.csv`` in NAB's ``combined_windows`` format
(``{"<any path>/<stem>.csv": [[start, end], ...]}``, or just the list) labels the file: one event of fault
``anomaly`` per window, and the readings inside a window (both ends included) are the anomalous points.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from plantpulse.schema import CHANNEL_NAME_PATTERN, MACHINE_ID_PATTERN, MAX_CHANNELS, SENSORS

TS_COLUMNS = ("ts", "timestamp", "datetime", "time")
LABEL_COLUMNS = ("label", "anomaly")
KNOWN_COLUMNS = frozenset({"machine_id", "seq", "status", "machine_type", "changepoint", *TS_COLUMNS, *LABEL_COLUMNS})
HEALTHY_LABELS = frozenset({"", "normal", "0", "0.0", "false"})
ANOMALY_LABELS = frozenset({"1", "1.0", "true"})
ANOMALY_FAULT = "anomaly"
SEPARATORS = (",", ";", "\t")
LABELS_SCHEMA = pa.schema([("machine_id", pa.string()), ("fault", pa.string()), ("start_ts", pa.int64()),
                           ("end_ts", pa.int64())])
POINTS_SCHEMA = pa.schema([("machine_id", pa.string()), ("ts", pa.int64()), ("label", pa.bool_())])
CHANNELS_TYPE = pa.map_(pa.string(), pa.float64())
_CHANNEL_NAME = re.compile(CHANNEL_NAME_PATTERN)
_MACHINE_ID = re.compile(MACHINE_ID_PATTERN)


@dataclass
class TableFile:
    """One file's readings (machine_id, ts int64 ms, seq or null, sensors, status, channels), in file order."""

    columns: dict[str, pa.Array | pa.ChunkedArray]
    rows: int
    faults: list[str | None] | None = None  # per row: None healthy, else the fault; None if unlabelled
    machine_types: dict[str, str] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)
    default_machine: str | None = None  # the machine of every row when the file has no machine_id column
    window_ids: np.ndarray | None = None  # NAB windows: per row the window it lies in (-1: none), one event each


def column_name(name: str) -> str:
    """A column's name as matched and as a channel's name.

    >>> column_name("Volume Flow RateRMS"), column_name(" Accelerometer1RMS "), column_name("2nd stage (bar)")
    ('volume_flow_raterms', 'accelerometer1rms', 'c_2nd_stage_bar')
    """
    normal = re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")
    if normal[:1].isdigit():
        normal = f"c_{normal}"
    return normal[:40].rstrip("_")


def machine_id_from(name: str) -> str:
    """A machine id (`MACHINE_ID_PATTERN`) from a file's name or relative path: characters the pattern does not
    allow (``/`` among them) become ``_``; at most the last 64 characters.

    >>> machine_id_from("valve2/0"), machine_id_from("ambient temperature"), machine_id_from("_x")
    ('valve2_0', 'ambient_temperature', 'x')
    """
    normal = re.sub(r"[^A-Za-z0-9_.:-]+", "_", name)[-64:]
    normal = re.sub(r"^[^A-Za-z0-9]+", "", normal)
    if not _MACHINE_ID.fullmatch(normal):  # fullmatch: Python's `$` would let a trailing newline through
        raise ValueError(f"replay: cannot make a machine id from {name!r}; give the file a machine_id column")
    return normal


def read_table_file(path: Path, default_machine: str) -> TableFile:
    """Read one CSV/Parquet file (module docstring); `default_machine` when it has no machine_id column.

    Whatever the file holds, the outcome is its readings or a ValueError naming the file (the CLI prints it
    as one line): a damaged or hostile file (bytes that are not UTF-8, numbers no column type holds) must not
    end the replay with a traceback from the CSV reader (tests/test_hostile_input.py fuzzes this)."""
    try:
        return _read_table_file(path, default_machine)
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise ValueError(f"replay: cannot read {path}: {error}") from error


def _read_table_file(path: Path, default_machine: str) -> TableFile:
    table = _read(path)
    names: dict[str, str] = {}  # normalised name -> original column
    for original in table.column_names:
        normal = column_name(original)
        if not normal:
            raise ValueError(f"replay: {path} column {original!r} has no usable name (letters, digits, _)")
        if normal in names:
            raise ValueError(f"replay: {path} columns {names[normal]!r} and {original!r} both mean {normal!r}")
        names[normal] = original

    def get(name: str) -> pa.ChunkedArray:
        return table[names[name]]

    n = table.num_rows
    ts_name = next((name for name in TS_COLUMNS if name in names), None)
    if ts_name is None:
        raise ValueError(f"replay: {path} lacks column(s) ['ts'] (or one of {list(TS_COLUMNS[1:])}); "
                         "see `plantpulse replay --help`")
    if "machine_id" in names:
        machine_ids = get("machine_id").cast(pa.string())
        if machine_ids.null_count:
            raise ValueError(f"replay: {path} column machine_id has {machine_ids.null_count} empty value(s)")
        # The ids go where the flow's go (windows, alerts, ClickHouse): held to the pattern the decoder enforces.
        bad = pc.invert(pc.match_substring_regex(machine_ids, MACHINE_ID_PATTERN))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise ValueError(f"replay: {path} row {row + 1}: machine_id {machine_ids[row].as_py()[:80]!r} does not "
                             f"match {MACHINE_ID_PATTERN}")
    else:
        machine_ids = pa.chunked_array([pa.array([default_machine] * n, pa.string())])
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "machine_id": machine_ids,
        "ts": pa.array(epoch_ms(get(ts_name), f"{path} column {names[ts_name]}"), pa.int64()),
        "seq": get("seq").cast(pa.int64()) if "seq" in names else pa.nulls(n, pa.int64()),
    }
    channels: dict[str, pa.ChunkedArray] = {}
    for normal, original in names.items():
        if normal in KNOWN_COLUMNS:
            continue
        column = table[original]
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type) or pa.types.is_null(column.type)):
            raise ValueError(f"replay: {path} column {original!r} is not numeric ({column.type}): every column "
                             "besides machine_id, ts, seq, status, machine_type and the labels is a sensor channel "
                             "and must hold numbers; drop it from the file")
        if normal in SENSORS:
            columns[normal] = column.cast(pa.float64())
        elif column.null_count < n:
            if not _CHANNEL_NAME.match(normal):
                raise ValueError(f"replay: {path} column {original!r} gives no valid channel name ({normal!r})")
            channels[normal] = column
    if len(channels) > MAX_CHANNELS:
        raise ValueError(f"replay: {path} has {len(channels)} channel columns, at most {MAX_CHANNELS} are allowed "
                         f"({', '.join(channels)})")
    for sensor in SENSORS:
        columns.setdefault(sensor, pa.nulls(n, pa.float64()))
    status = get("status").cast(pa.string()) if "status" in names else pa.array(["running"] * n, pa.string())
    columns["status"] = pc.fill_null(status, "running")
    columns["channels"] = _channels_column(channels, n)
    label_name = next((name for name in LABEL_COLUMNS if name in names), None)
    faults = _faults(get(label_name)) if label_name else None
    windows = path.with_name(f"{path.stem}.windows.json")
    if windows.exists():
        if faults is not None:
            raise ValueError(f"replay: {path} has both a label column ({names[label_name or '']!r}) and {windows.name}")
        window_ids = _window_ids(np.asarray(columns["ts"]), nab_windows(windows, path.name))
        faults = [ANOMALY_FAULT if k >= 0 else None for k in window_ids.tolist()]
    types: dict[str, str] = {}
    if "machine_type" in names:
        types = dict(zip(machine_ids.to_pylist(), get("machine_type").cast(pa.string()).to_pylist()))
    return TableFile(columns, n, faults, types, sorted(channels), None if "machine_id" in names else default_machine,
                     window_ids if windows.exists() else None)


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace")
    separator = max(SEPARATORS, key=header.count)  # ties: ",", the first
    try:
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=separator))
    except pa.ArrowInvalid as error:
        raise ValueError(f"replay: cannot read {path} as CSV (separator {separator!r}): {error}") from error


def epoch_ms(column: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    """Epoch milliseconds from numbers (epoch ms), timestamps or ISO 8601 text (UTC when without zone)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # An empty cell or NaN would become an arbitrary int64 in NumPy's cast: refuse them, like empty text.
        empty = column.null_count
        if pa.types.is_floating(column.type):
            empty += pc.sum(pc.is_nan(column)).as_py() or 0
        if empty:
            raise ValueError(f"replay: {what} has {empty} empty timestamp(s)")
        try:
            return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        except pa.ArrowInvalid as error:  # a fraction of a millisecond, inf, or beyond the int64 range
            raise ValueError(f"replay: {what} is not whole epoch milliseconds: {error}") from error
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return np.asarray(column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64()).to_numpy(), dtype=np.int64)
    text = column.cast(pa.string())
    try:
        parsed = pc.cast(text, pa.timestamp("ms"))
    except pa.ArrowInvalid as exc:
        try:  # finer than ms ("2014-04-20 22:00:00.000000"): parse at ns, keep ms
            parsed = pc.cast(pc.cast(text, pa.timestamp("ns")), pa.timestamp("ms"), safe=False)
        except pa.ArrowInvalid:
            raise ValueError(f"replay: {what} is neither epoch ms nor ISO 8601: {exc}") from exc
    if parsed.null_count:
        raise ValueError(f"replay: {what} has {parsed.null_count} empty timestamp(s)")
    return np.asarray(parsed.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _channels_column(channels: dict[str, pa.ChunkedArray], n: int) -> pa.Array:
    """A `channels` map per row: every channel of the file, a missing value as NaN (like `channels_array`)."""
    if not channels:
        return pa.nulls(n, CHANNELS_TYPE)
    names = sorted(channels)
    k = len(names)
    values = np.column_stack([
        np.asarray(channels[name].cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        for name in names
    ]).ravel()
    keys = pc.take(pa.array(names, pa.string()), pa.array(np.tile(np.arange(k), n)))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, keys, pa.array(values, pa.float64()))


def _faults(column: pa.ChunkedArray) -> list[str | None]:
    """Per row: None when healthy, else the fault's name."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        flags = np.asarray(pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)) != 0
        return [ANOMALY_FAULT if flag else None for flag in flags.tolist()]
    out: list[str | None] = []
    for value in column.cast(pa.string()).to_pylist():
        text = "" if value is None else value.strip()
        lowered = text.lower()
        out.append(None if lowered in HEALTHY_LABELS else ANOMALY_FAULT if lowered in ANOMALY_LABELS else text)
    return out


def nab_windows(path: Path, data_name: str) -> list[tuple[int, int]]:
    """The (start, end) epoch-ms windows of `data_name` (a CSV's file name) in a NAB windows file."""
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"replay: cannot read the windows file {path}: {error}") from error
    if isinstance(content, dict):
        keys = [key for key in content if PurePosixPath(key).name == data_name]
        if len(keys) != 1:
            raise ValueError(f"replay: {path} should have one entry for {data_name!r}, has {len(keys)} "
                             f"(keys: {sorted(content)[:5]})")
        content = content[keys[0]]
    if not isinstance(content, list) or not all(isinstance(w, list) and len(w) == 2 for w in content):
        raise ValueError(f"replay: {path}: the windows must be a list of [start, end] pairs")
    if not content:
        return []
    bounds = epoch_ms(pa.array([str(v) for w in content for v in w], pa.string()), f"{path} windows")
    windows = sorted(zip(bounds[0::2].tolist(), bounds[1::2].tolist()))
    if any(end < start for start, end in windows):
        raise ValueError(f"replay: {path} has a window that ends before it starts")
    return windows


def _window_ids(ts: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    """Per reading: the index of the window (both ends included) it lies in, or -1."""
    if not windows:
        return np.full(len(ts), -1, dtype=np.int64)
    starts = np.array([s for s, _ in windows], dtype=np.int64)
    ends = np.array([e for _, e in windows], dtype=np.int64)
    k = np.searchsorted(starts, ts, side="right") - 1
    return np.where((k >= 0) & (ts <= ends[np.maximum(k, 0)]), k, -1)


def labels_and_points(machine_ids: np.ndarray, ts: np.ndarray, faults: np.ndarray, labelled: np.ndarray,
                      window_ids: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Events (each run of one fault of a machine in time order; a NAB window, `window_ids` >= 0, is one
    event even when it touches the next) and points (every labelled reading, in time order per machine) of
    readings already sorted by (machine, ts); `faults` holds None when healthy."""
    machine_ids, ts, faults, window_ids = machine_ids[labelled], ts[labelled], faults[labelled], window_ids[labelled]
    anomalous = np.array([f is not None for f in faults], dtype=bool)
    same_machine = np.r_[False, machine_ids[1:] == machine_ids[:-1]]
    same_fault = np.r_[False, (faults[1:] == faults[:-1]) & (window_ids[1:] == window_ids[:-1])] & same_machine
    starts = np.flatnonzero(anomalous & ~same_fault)
    segments = np.r_[np.flatnonzero(~same_fault), len(ts)]  # where each run (healthy ones too) begins
    lasts = segments[np.searchsorted(segments, starts, side="right")] - 1
    labels = pa.table({"machine_id": pa.array(machine_ids[starts].tolist(), pa.string()),
                       "fault": pa.array(faults[starts].tolist(), pa.string()),
                       "start_ts": pa.array(ts[starts], pa.int64()),
                       "end_ts": pa.array(ts[lasts] if len(lasts) else np.zeros(0, np.int64), pa.int64())},
                      schema=LABELS_SCHEMA)
    points = pa.table({"machine_id": pa.array(machine_ids.tolist(), pa.string()), "ts": pa.array(ts, pa.int64()),
                       "label": pa.array(anomalous)}, schema=POINTS_SCHEMA)
    return labels, points
