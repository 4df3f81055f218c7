"""The telemetry reading: wire schema (JSON, version 1) and the decoded Arrow schema.

A reading on the `telemetry` topic is one JSON object, keyed by `machine_id`::

    {"v": 1, "machine_id": "M00042", "ts": 1764000000000, "seq": 1234,
     "temperature": 71.3, "pressure": 5.02, "vibration": 2.41, "rpm": 1480.0,
     "power": 36.8, "status": "running"}

- `v` (int, optional, default 1): schema version. Other versions are dead-lettered.
- `machine_id` (str): matches `MACHINE_ID_PATTERN`.
- `ts` (int): event time in **milliseconds since the Unix epoch, UTC**.
- `seq` (int): per-machine sequence number, increasing, `0 <= seq < 2**39`.
- `temperature` (degC), `pressure` (bar), `vibration` (mm/s RMS), `rpm` (1/min), `power` (kW):
  numbers, or `null` when the sensor dropped out. Must be finite and within `PHYSICAL_LIMITS`.
- `status` (str): one of `STATUSES`.
- `channels` (object, optional): further sensors of the machine by name, e.g.
  `{"accelerometer1rms": 0.21, "volume_flow_raterms": 32.0}`. Names match `CHANNEL_NAME_PATTERN` (lower-case,
  digits, `_`; not a core sensor's name), at most `MAX_CHANNELS` of them; values are numbers with
  `|value| <= CHANNEL_LIMIT`, or `null` when that sensor dropped out. A message breaking this is
  dead-lettered with reason `bad_channels`. The windows keep count, mean, min, max, std and last per
  channel (`channel_*` map columns) and the generic model spec builds features per channel.

Extra fields are allowed and ignored. This module imports nothing of PlantPulse's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 1
SENSORS: tuple[str, ...] = ("temperature", "pressure", "vibration", "rpm", "power")
STATUSES: tuple[str, ...] = ("running", "idle", "stopped", "maintenance", "fault")
MACHINE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_SEQ = 2**39
CHANNEL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAX_CHANNELS = 32
CHANNEL_LIMIT = 1e12  # a channel has no known unit: only values no sensor can give are refused
CHANNEL_STATS: tuple[str, ...] = ("count", "mean", "min", "max", "std", "last")

# Values outside these bounds cannot come from a working sensor on our machine types.
PHYSICAL_LIMITS: dict[str, tuple[float, float]] = {
    "temperature": (-50.0, 400.0),
    "pressure": (0.0, 400.0),
    "vibration": (0.0, 200.0),
    "rpm": (0.0, 60_000.0),
    "power": (0.0, 10_000.0),
}


class Reading(msgspec.Struct, omit_defaults=False):
    """One reading as it travels on the wire (schema version 1)."""

    machine_id: str
    ts: int
    seq: int
    status: str
    temperature: float | None = None
    pressure: float | None = None
    vibration: float | None = None
    rpm: float | None = None
    power: float | None = None
    v: int = SCHEMA_VERSION


# What the JSON decoder is told: every field nullable so that a missing field becomes a null that the
# validator names, instead of a parse error for the whole batch.
WIRE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("v", pa.int64()),
        pa.field("machine_id", pa.string()),
        pa.field("ts", pa.int64()),
        pa.field("seq", pa.int64()),
        *(pa.field(name, pa.float64()) for name in SENSORS),
        pa.field("status", pa.string()),
    ]
)

# A valid reading after decoding, as kept by the flow and written to the raw lake.
READING_ARROW_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        *(pa.field(name, pa.float64()) for name in SENSORS),
        pa.field("status", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("channels", pa.map_(pa.string(), pa.float64())),  # extra named sensors (issue 15), last
    ]
)


def _ts_field(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.timestamp("ms", tz="UTC"), nullable=nullable)


# One row per (machine, window): the flow's window statistics. Std is the population standard deviation
# (ddof=0); `<sensor>_last` is the value of the latest (ts, seq) reading where that sensor was not null;
# `secs_<status>` counts the seconds each status held: a reading's status holds until the next reading of the
# same window, the last one until the window's end.
WINDOW_STATS_ARROW_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("machine_type", pa.string(), nullable=False),
        _ts_field("window_start"),
        _ts_field("window_end"),
        pa.field("readings", pa.uint32(), nullable=False),
        _ts_field("first_ts"),
        _ts_field("last_ts"),
        pa.field("last_seq", pa.int64(), nullable=False),
        pa.field("first_seq", pa.int64(), nullable=False),  # seq of the window's first reading (by ts)
        *(
            field
            for sensor in SENSORS
            for field in (
                pa.field(f"{sensor}_count", pa.uint32(), nullable=False),
                pa.field(f"{sensor}_mean", pa.float64()),
                pa.field(f"{sensor}_min", pa.float64()),
                pa.field(f"{sensor}_max", pa.float64()),
                pa.field(f"{sensor}_std", pa.float64()),
                pa.field(f"{sensor}_last", pa.float64()),
            )
        ),
        pa.field("status_last", pa.string(), nullable=False),
        *(pa.field(f"secs_{status}", pa.float64(), nullable=False) for status in STATUSES),
        _ts_field("emitted_at"),
        # Extra channels (issue 15, hence last): the same statistics per channel name, as maps.
        *(pa.field(f"channel_{stat}", pa.map_(pa.string(), pa.uint32() if stat == "count" else pa.float64()))
          for stat in CHANNEL_STATS),
    ]
)

# One row per raised alert. `alert_id` is derived from (machine, rule, window) so a re-raised alert replaces.
ALERT_ARROW_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("machine_type", pa.string(), nullable=False),
        pa.field("rule_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "threshold" | "anomaly" | "sensor" (a faulty instrument)
        pa.field("severity", pa.string(), nullable=False),  # "info" | "warning" | "critical"
        pa.field("sensor", pa.string(), nullable=False),  # for "sensor" alerts: the faulty sensors, comma-joined
        _ts_field("window_start"),
        _ts_field("window_end"),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        _ts_field("raised_at"),
    ]
)

# Incidents (issue 13). One row per transition of an incident: the `incident_events` table, the JSON record on
# the `incidents` topic (timestamps as epoch milliseconds there) and what `plantpulse notify` routes. Each row
# also carries the incident's whole state after the transition, so the newest row of an incident (highest
# `version`) is its current state: the `incidents` table is the same rows under ReplacingMergeTree(version).
INCIDENT_STATUSES = ("open", "acknowledged", "resolved")
INCIDENT_TRANSITIONS = ("opened", "escalated", "acknowledged", "commented", "resolved")
RESOLVE_REASONS = ("quiet", "stale", "manual")
INCIDENT_ARROW_SCHEMA = pa.schema(
    [
        pa.field("incident_id", pa.string(), nullable=False),  # "<machine>/<rule or model>/<opening window start ms>"
        pa.field("version", pa.uint32(), nullable=False),  # 1 for "opened", +1 per transition
        pa.field("event_id", pa.string(), nullable=False),  # "<incident_id>#<version>": the idempotency key
        # One of INCIDENT_TRANSITIONS; in the `incidents` table (current state) also "updated": a new detection
        # window or peak value, which is not a transition and so goes neither to incident_events nor the topic.
        pa.field("transition", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # effective status after it: INCIDENT_STATUSES
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("machine_type", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),  # from MACHINES_FILE; "" when unknown
        # the threshold rule's id, "anomaly" (the machine's model) or sensor_stuck|sensor_dropout|sensor_spike
        pa.field("rule_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "threshold" | "anomaly" | "sensor"
        pa.field("severity", pa.string(), nullable=False),  # highest so far: "info" | "warning" | "critical"
        pa.field("sensor", pa.string(), nullable=False),
        _ts_field("opened_window_start"),  # event time: the window of the first detection
        _ts_field("first_seen_ts"),  # event time the condition first completed
        _ts_field("last_seen_ts"),  # event time of the latest detection
        pa.field("detections", pa.uint32(), nullable=False),
        pa.field("peak_value", pa.float64(), nullable=False),  # most extreme value (threshold) or score (anomaly)
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("message", pa.string(), nullable=False),  # the latest detection's message
        _ts_field("opened_at"),  # wall clock
        pa.field("acknowledged_by", pa.string()),
        _ts_field("acknowledged_at", nullable=True),
        pa.field("resolved_by", pa.string()),  # "plantpulse" for automatic resolution
        _ts_field("resolved_at", nullable=True),
        pa.field("resolved_reason", pa.string()),  # RESOLVE_REASONS
        pa.field("actor", pa.string(), nullable=False),  # who made this transition ("plantpulse" when automatic)
        pa.field("note", pa.string(), nullable=False),  # why: the operator's note, or the automatic reason
        _ts_field("at"),  # wall clock of this transition
    ]
)

# Latest known state per machine; `state` is "ok" or "stale" (silent for longer than STALE_AFTER_SECONDS);
# `seq_resets` counts the machine's sequence counter restarts so far (added in issue 12, hence last).
MACHINE_STATE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("machine_type", pa.string(), nullable=False),
        _ts_field("last_ts"),
        pa.field("last_seq", pa.int64(), nullable=False),
        *(pa.field(sensor, pa.float64()) for sensor in SENSORS),
        pa.field("status", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        _ts_field("updated_at"),
        pa.field("seq_resets", pa.uint32(), nullable=False),
    ]
)

# One row per scored (machine, window): the online anomaly model's verdict on that window's features.
# `threshold` is null while the model warms up; `top_features` is a JSON list of [feature, contribution]
# pairs, largest first, saying what drove the score.
ANOMALY_SCORE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("machine_type", pa.string(), nullable=False),
        _ts_field("window_start"),
        _ts_field("window_end"),
        pa.field("model", pa.string(), nullable=False),  # the model spec's name, e.g. "pump"
        pa.field("detector", pa.string(), nullable=False),  # e.g. "robust_zscore", "half_space_trees"
        pa.field("score", pa.float64(), nullable=False),
        pa.field("threshold", pa.float64()),
        pa.field("warming_up", pa.bool_(), nullable=False),
        pa.field("is_anomaly", pa.bool_(), nullable=False),  # score above threshold, after warm-up
        pa.field("alert_raised", pa.bool_(), nullable=False),  # this window raised an `anomaly` alert
        pa.field("top_features", pa.string(), nullable=False),
        _ts_field("scored_at"),
    ]
)

# A rejected message as kept in the lake's `quarantine/` prefix: the original bytes and why. `value` is
# the original whole up to QUARANTINE_MAX_VALUE_BYTES, else its prefix; `original_bytes` and
# `original_sha256` always describe the whole original (so `original_bytes > length(value)` means cut).
# Both were added in issue 12, at the end so older files keep their column order.
QUARANTINE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("value", pa.binary(), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("source_topic", pa.string(), nullable=False),
        pa.field("source_partition", pa.int32(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("quarantined_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("original_bytes", pa.int64(), nullable=False),
        pa.field("original_sha256", pa.string(), nullable=False),
    ]
)


# Messages that were not accepted as readings (dead letters of any reason, `late`, `duplicate`) and readings
# that began a new sequence epoch (`seq_reset`): one row each, identified by where the message was read.
# machine_id is "" and ts/seq null where the message did not yield them. Feeds the data_quality table.
READING_ISSUE_REASONS_OF_FLOW: tuple[str, ...] = ("duplicate", "late", "seq_reset")
READING_ISSUE_ARROW_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC")),
        pa.field("seq", pa.int64()),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("detected_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


class BinaryValues(Sequence[bytes]):
    """Message bodies held as one Arrow binary array instead of one Python object each.

    A recording read from Parquet has its messages in Arrow already; the decode step joins, measures and stores
    them from the array's buffers (`joined`, `sizes`, `array`), while indexing still gives `bytes`.

    >>> values = BinaryValues(pa.array([b'{"a": 1}', b"{}"]))
    >>> len(values), values[1], values.joined(), values.sizes().tolist()
    (2, b'{}', b'{"a": 1}\\n{}', [8, 2])
    """

    __slots__ = ("array",)

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if array.type != pa.binary():
            array = array.cast(pa.binary())
        self.array: pa.BinaryArray = array

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return self.array[index].to_pylist()
        return self.array[index].as_py()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.array.to_pylist())

    def __reduce__(self) -> tuple[type[BinaryValues], tuple[pa.BinaryArray]]:
        return (BinaryValues, (self.array,))

    def sizes(self) -> np.ndarray:
        """Each message's length in bytes."""
        offsets = np.frombuffer(self.array.buffers()[1], dtype=np.int32)[self.array.offset:][: len(self) + 1]
        return np.diff(offsets).astype(np.int64)

    def joined(self) -> bytes:
        """The messages joined by newlines, as `b"\\n".join(values)` gives."""
        if not len(self):
            return b""
        one_list = pa.ListArray.from_arrays(pa.array([0, len(self)], pa.int32()), self.array)
        return pc.binary_join(one_list, b"\n")[0].as_py()


class RawBatch(msgspec.Struct, frozen=True):
    """Undecoded messages pulled from one Kafka partition in one poll: the unit the flow decodes at once.

    `offsets[i]` is the Kafka offset of `values[i]`; `keys[i]` its message key (or None). A device's
    signature travels in its value (`plantpulse.device_signing`).
    Sources that do not read Kafka (benchmarks, replays) use partition -1 and their own row numbers;
    a recording's polls carry `BinaryValues`.
    """

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes] | BinaryValues
    keys: list[bytes | None] | BinaryValues | None = None


def binary_array(values: list[bytes], sizes: np.ndarray | None = None) -> pa.Array:
    """Arrow binary array over one joined buffer: one copy per batch instead of one object per message.

    `sizes` (the lengths of `values`) may be passed when the caller has them already.
    """
    if sizes is None:
        sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"binary_array: {len(values)} messages hold {offsets[-1]} bytes, over the 2 GiB array limit")
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(values), [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(values))]
    )


def channels_array(rows: list[dict[str, float | None] | None]) -> pa.MapArray:
    """A `channels` column from one dict (or None: no channels) per reading; None values become NaN.

    >>> channels_array([{"flow": 1.5}, None, {"a": None}]).to_pylist()
    [[('flow', 1.5)], None, [('a', nan)]]
    """
    cleaned = [None if row is None else [(k, float("nan") if v is None else float(v)) for k, v in row.items()]
               for row in rows]
    return pa.array(cleaned, type=pa.map_(pa.string(), pa.float64()))


def channel_columns(column: pa.ChunkedArray | pa.Array) -> dict[str, np.ndarray]:
    """A `channels` map column as one float array per channel name (NaN where a row lacks that channel).

    >>> {k: v.tolist() for k, v in channel_columns(channels_array([{"b": 1.0}, None, {"a": 2.0, "b": 3.0}])).items()}
    {'b': [1.0, nan, 3.0], 'a': [nan, nan, 2.0]}
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    n = len(column)
    offsets = column.offsets.to_numpy()
    rows = np.repeat(np.arange(n), np.diff(offsets))
    keys_array, items_array = column.keys, column.items
    if len(keys_array) != len(rows):  # a sliced array: its children are the unsliced ones
        keys_array, items_array = keys_array.slice(offsets[0], len(rows)), items_array.slice(offsets[0], len(rows))
    keys = np.asarray(keys_array.to_numpy(zero_copy_only=False), dtype=object)
    values = np.asarray(items_array.to_numpy(zero_copy_only=False), dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(keys.tolist()):
        series = out[name] = np.full(n, np.nan)
        hit = keys == name
        series[rows[hit]] = values[hit]
    return out


def window_channels(table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """Channel -> statistic (`CHANNEL_STATS`) -> one value per row of a window-stats table (NaN where the
    row's window had no such channel; count 0).

    >>> types = {s: pa.map_(pa.string(), pa.uint32() if s == "count" else pa.float64()) for s in CHANNEL_STATS}
    >>> stats = {f"channel_{s}": pa.array([[("flow", 2)], None], types[s]) for s in CHANNEL_STATS}
    >>> out = window_channels(pa.table(stats))
    >>> out["flow"]["mean"].tolist(), out["flow"]["count"].tolist()
    ([2.0, nan], [2.0, 0.0])
    """
    if "channel_mean" not in table.column_names:
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    n = table.num_rows
    for stat in CHANNEL_STATS:
        for name, values in channel_columns(table[f"channel_{stat}"]).items():
            out.setdefault(name, {})[stat] = np.nan_to_num(values, nan=0.0) if stat == "count" else values
    for per_stat in out.values():
        for stat in CHANNEL_STATS:
            per_stat.setdefault(stat, np.full(n, 0.0 if stat == "count" else np.nan))
    return out
