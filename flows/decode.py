"""Batch decode and validation: one Kafka poll (`RawBatch`) in, one Arrow table of valid readings out.

The fast path hands the whole poll to pyarrow's JSON reader at once and validates with vectorised
checks, so no Python code runs per reading. Only when the reader rejects the batch (a malformed or
mistyped message somewhere in it) does each message get a per-message look to name the culprits; the
rest is then decoded in one go again. Every rejected message becomes a `DeadLetter` with its original
bytes, the reason and its source partition/offset — nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from flows.device_auth import IDENTITY_MISMATCH, SignatureCheck, SignedBodies, Verdicts
from flows.input_guards import BOM, INT64, MAX_NESTING, OBJECT_FIRST, is_utf8, too_deep
from plantpulse.schema import (
    CHANNEL_LIMIT,
    CHANNEL_NAME_PATTERN,
    MACHINE_ID_PATTERN,
    MAX_CHANNELS,
    MAX_SEQ,
    PHYSICAL_LIMITS,
    SCHEMA_VERSION,
    SENSORS,
    STATUSES,
    WIRE_ARROW_SCHEMA,
    BinaryValues,
    RawBatch,
    binary_array,
    channels_array,
)

# Dead-letter reasons (the `reason` header of a dead-letter record).
NOT_JSON = "not_json"
SCHEMA = "schema"
NON_FINITE = "non_finite"
OUT_OF_RANGE = "out_of_range"
BAD_MACHINE_ID = "bad_machine_id"
BAD_STATUS = "bad_status"
TS_FUTURE = "ts_future"
TS_TOO_OLD = "ts_too_old"
OVERSIZED = "oversized"
UNSUPPORTED_VERSION = "unsupported_version"
BAD_CHANNELS = "bad_channels"
LATE = "late"

_REQUIRED = ("machine_id", "ts", "seq", "status")


class DeadLetter(msgspec.Struct, frozen=True):
    """A rejected message: the original bytes and why, with where it came from."""

    value: bytes
    key: bytes | None
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int


class DecodedBatch(msgspec.Struct):
    """Valid readings of one poll (columns: see `DECODED_COLUMNS`) and the rejected ones."""

    readings: pa.Table
    dead_letters: list[DeadLetter]
    received: int


class _LooseReading(msgspec.Struct):
    """Wire shape with every field optional: used only to find which message broke a batch."""

    machine_id: str | None = None
    ts: int | None = None
    seq: int | None = None
    status: str | None = None
    temperature: float | None = None
    pressure: float | None = None
    vibration: float | None = None
    rpm: float | None = None
    power: float | None = None
    v: int | None = None


@dataclass(frozen=True)
class ValidationLimits:
    """What a valid reading must satisfy besides its schema. `max_event_age_ms=0` disables the age check."""

    max_payload_bytes: int = 4096
    max_future_skew_ms: int = 300_000
    max_event_age_ms: int = 7 * 86_400_000


_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=WIRE_ARROW_SCHEMA, unexpected_field_behavior="ignore")
_READ_OPTIONS = pa_json.ReadOptions(use_threads=True, block_size=1 << 18)  # blocks parse in parallel
_LOOSE_DECODER = msgspec.json.Decoder(_LooseReading)
_CHANNEL_NAME = re.compile(CHANNEL_NAME_PATTERN)
_CHANNELS_KEY = b'"channels"'
class _Channels(msgspec.Struct):
    """Only the optional `channels` object of a message (the rest is read by the batch reader)."""

    channels: dict[str, float | None] | None = None


_CHANNELS_DECODER = msgspec.json.Decoder(_Channels)
_CHANNELS_TYPE = pa.map_(pa.string(), pa.float64())
_STATUS_SET = pa.array(STATUSES)


class BatchDecoder:
    """Decodes and validates whole `RawBatch`es.

    >>> import json
    >>> from plantpulse.schema import RawBatch
    >>> good = {"machine_id": "M1", "ts": 1_764_000_000_000, "seq": 1, "status": "running", "rpm": 1500}
    >>> batch = RawBatch("telemetry", 0, [10, 11], [json.dumps(good).encode(), b"{oops"])
    >>> out = BatchDecoder().decode(batch, now_ms=1_764_000_000_000)
    >>> out.readings.num_rows, [(d.reason, d.offset) for d in out.dead_letters]
    (1, [('not_json', 11)])
    """

    def __init__(self, limits: ValidationLimits | None = None, signatures: SignatureCheck | None = None) -> None:
        self.limits = limits or ValidationLimits()
        self.signatures = signatures  # None: readings are accepted unsigned (DEVICE_AUTH=off)

    def decode(self, batch: RawBatch, now_ms: int) -> DecodedBatch:
        """Decode one poll; `now_ms` is the wall clock the timestamp checks compare against."""
        values = batch.values
        dead: list[DeadLetter] = []
        # `joined`: one copy of the candidates, searched for channels and parsed by the batch reader.
        limit = self.limits.max_payload_bytes
        sizes = values.sizes() if isinstance(values, BinaryValues) else np.fromiter(map(len, values), np.int64, len(values))
        oversized = np.flatnonzero(sizes > limit)
        for i in oversized.tolist():
            dead.append(_dead(batch, i, OVERSIZED, f"payload is {sizes[i]} bytes, limit {limit}"))
        candidates = np.flatnonzero(sizes <= limit).tolist() if len(oversized) else list(range(len(values)))
        verdicts = None
        if self.signatures is not None:
            # Before parsing: bytes that no device vouches for are never parsed. The check hands back the signed
            # bodies of the rest, joined: the signature members are not parsed.
            verdicts = self.signatures.check(batch, candidates)
            if verdicts.refused:
                for i, reason, detail in verdicts.refused:
                    dead.append(_dead(batch, i, reason, detail))
                candidates = verdicts.accepted().tolist()
            joined = verdicts.bodies
        elif len(oversized):  # what is over the limit is neither scanned nor copied again
            joined = b"\n".join(values[i] for i in candidates)
        else:
            joined = values.joined() if isinstance(values, BinaryValues) else b"\n".join(values)
        # What is parsed: a signed message's body, never its value (the members of a body that is no closed
        # object would land inside it); a dead letter keeps the value as it came.
        texts: Sequence[bytes] = SignedBodies(values) if verdicts is not None else values
        # Depth is bounded before parsing too: parsers recurse per level (msgspec fails at a depth that depends
        # on the caller's stack), so a deep message is refused here, like an oversized one.
        deep = set(too_deep(texts, joined, candidates)) if candidates else set()
        if deep:
            for i in sorted(deep):
                dead.append(_dead(batch, i, SCHEMA, f"nested deeper than {MAX_NESTING} levels"))
            candidates = [i for i in candidates if i not in deep]
            joined = b"\n".join(texts[i] for i in candidates)
        channels = _read_channels(batch, texts, candidates, dead) if _CHANNELS_KEY in joined else {}
        table = self._parse(batch, texts, candidates, dead, joined)
        readings = self._validate(batch, table, candidates, now_ms, dead, sizes, channels, verdicts)
        return DecodedBatch(readings=readings, dead_letters=dead, received=len(values))

    def _parse(
        self, batch: RawBatch, texts: Sequence[bytes], candidates: list[int], dead: list[DeadLetter], joined: bytes
    ) -> pa.Table:
        """Parse candidates (`texts`: what is parsed of each message; `joined`: the candidates' texts joined by
        newlines) into a wire-schema table; drops (and dead-letters) unparseable ones in place."""
        if not candidates:
            return WIRE_ARROW_SCHEMA.empty_table()
        values = texts
        every = len(candidates) == len(values)
        table = _read_json_lines(values if every else [values[i] for i in candidates], joined)
        if table is not None:
            return table
        keep = []
        for i in candidates:
            problem = _classify_unparseable(values[i])
            if problem is None:
                keep.append(i)
            else:
                dead.append(_dead(batch, i, *problem))
        candidates[:] = keep
        if not keep:
            return WIRE_ARROW_SCHEMA.empty_table()
        table = _read_json_lines([values[i] for i in keep])
        if table is None:
            # The per-message check accepted what the batch reader refused: trust the per-message decode.
            rows = [msgspec.structs.asdict(_LOOSE_DECODER.decode(values[i])) for i in keep]
            table = pa.Table.from_pylist(rows, schema=WIRE_ARROW_SCHEMA)
        return table

    def _validate(
        self, batch: RawBatch, table: pa.Table, rows: list[int], now_ms: int, dead: list[DeadLetter], sizes: np.ndarray,
        channels: dict[int, dict[str, float | None]] | None = None, verdicts: Verdicts | None = None,
    ) -> pa.Table:
        n = table.num_rows
        if n == 0:
            return _decoded_table(table, batch, np.zeros(0, np.int64), [], sizes, channels)
        reasons = np.zeros(n, dtype=np.int8)  # 0 = valid, else index into _REASON_ORDER (first failing wins)

        def fail(mask: np.ndarray, reason: str) -> None:
            code = _REASON_ORDER.index(reason)
            reasons[(reasons == 0) & mask] = code

        version = table["v"]
        fail(_np_bool(pc.and_(pc.is_valid(version), pc.not_equal(version, SCHEMA_VERSION))), UNSUPPORTED_VERSION)
        for name in _REQUIRED:
            fail(_np_bool(pc.is_null(table[name])), SCHEMA)
        machine_ok = pc.match_substring_regex(table["machine_id"], MACHINE_ID_PATTERN)
        fail(~_np_bool(machine_ok, null_as=True), BAD_MACHINE_ID)
        if verdicts is not None:
            signer = verdicts.signers(rows)
            fail(~_np_bool(pc.equal(table["machine_id"], signer), null_as=False), IDENTITY_MISMATCH)
        fail(~_np_bool(pc.is_in(table["status"], value_set=_STATUS_SET), null_as=True), BAD_STATUS)
        for sensor in SENSORS:
            values = table[sensor].to_numpy(zero_copy_only=False)  # nulls become NaN
            valid = _np_bool(pc.is_valid(table[sensor]))
            fail(valid & ~np.isfinite(values), NON_FINITE)
            low, high = PHYSICAL_LIMITS[sensor]
            with np.errstate(invalid="ignore"):
                fail(valid & ((values < low) | (values > high)), OUT_OF_RANGE)
        seq = table["seq"].fill_null(0).to_numpy()
        fail((seq < 0) | (seq >= MAX_SEQ), OUT_OF_RANGE)
        ts = table["ts"].fill_null(now_ms).to_numpy()
        fail(ts > now_ms + self.limits.max_future_skew_ms, TS_FUTURE)
        if self.limits.max_event_age_ms:
            fail(ts < now_ms - self.limits.max_event_age_ms, TS_TOO_OLD)

        bad = np.flatnonzero(reasons)
        if len(bad):
            rows_of_bad = [rows[j] for j in bad.tolist()]
            bad_rows = table.take(pa.array(bad)).to_pylist()
            for row_index, row, code in zip(rows_of_bad, bad_rows, reasons[bad].tolist()):
                reason = _REASON_ORDER[code]
                dead.append(_dead(batch, row_index, reason, _detail(reason, row, now_ms, self.limits)))
            good = np.flatnonzero(reasons == 0)
            table = table.take(pa.array(good))
            rows = [rows[j] for j in good.tolist()]
        return _decoded_table(table, batch, np.asarray(rows, dtype=np.int64), rows, sizes, channels)


_REASON_ORDER = (
    "",
    UNSUPPORTED_VERSION,
    SCHEMA,
    BAD_MACHINE_ID,
    IDENTITY_MISMATCH,
    BAD_STATUS,
    NON_FINITE,
    OUT_OF_RANGE,
    TS_FUTURE,
    TS_TOO_OLD,
)

DECODED_COLUMNS = (
    "machine_id", "ts", "seq", *SENSORS, "status", "kafka_partition", "kafka_offset", "channels", "raw"
)


def _read_channels(
    batch: RawBatch, texts: Sequence[bytes], candidates: list[int], dead: list[DeadLetter]
) -> dict[int, dict[str, float | None]]:
    """The `channels` objects of the candidates that have one, validated; a bad one dead-letters its message
    (`bad_channels`, removed from `candidates` in place). The caller searches the poll's bytes first, so a
    poll without channels costs one scan. `texts`: what is parsed of each message."""
    found: dict[int, dict[str, float | None]] = {}
    refused: set[int] = set()
    for i in candidates:
        text = texts[i]  # once: a signed message's body is cut from its value on each access
        if _CHANNELS_KEY not in text:
            continue
        if not is_utf8(text):
            continue  # the batch parse names it (not_json)
        try:
            channels = _CHANNELS_DECODER.decode(text).channels
        except RecursionError:
            dead.append(_dead(batch, i, SCHEMA, "nested too deeply to read its channels"))
            refused.add(i)
            continue
        except msgspec.ValidationError as error:
            if "channels" in str(error):
                dead.append(_dead(batch, i, BAD_CHANNELS, f"channels: {error}"))
                refused.add(i)
            continue  # another field is wrong: the batch parse names it
        except msgspec.DecodeError:
            try:  # Python's parser accepts NaN/Infinity, which JSON does not (and pyarrow would skip them here)
                parsed = json.loads(text.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue  # not JSON at all: the batch parse names it
            if isinstance(parsed, dict) and "channels" in parsed:
                dead.append(_dead(batch, i, BAD_CHANNELS, "channels: a value is NaN or infinite (not JSON)"))
                refused.add(i)
            continue
        if channels is None:
            continue
        problem = channel_problem(channels)
        if problem:
            dead.append(_dead(batch, i, BAD_CHANNELS, problem))
            refused.add(i)
        elif channels:
            found[i] = channels
    if refused:
        candidates[:] = [i for i in candidates if i not in refused]
    return found


def channel_problem(channels: dict[str, float | None]) -> str:
    """Why a reading's `channels` object is invalid ("" when it is valid).

    >>> channel_problem({"flow": 1.0, "valve_2": None})
    ''
    >>> channel_problem({"Flow Rate": 1.0})
    "channel name 'Flow Rate' does not match ^[a-z][a-z0-9_]{0,39}$"
    >>> channel_problem({"flow": 1e300})
    'channel flow=1e+300 outside [-1e+12, 1e+12]'
    """
    if len(channels) > MAX_CHANNELS:
        return f"{len(channels)} channels, at most {MAX_CHANNELS}"
    for name, value in channels.items():
        if not _CHANNEL_NAME.match(name):
            return f"channel name {name!r} does not match {CHANNEL_NAME_PATTERN}"
        if name in SENSORS:
            return f"channel name {name!r} is a core sensor: send it as the top-level field"
        if value is not None and not (math.isfinite(value) and abs(value) <= CHANNEL_LIMIT):
            return f"channel {name}={value!r} outside [{-CHANNEL_LIMIT:g}, {CHANNEL_LIMIT:g}]"
    return ""


def _decoded_table(
    wire: pa.Table, batch: RawBatch, positions: np.ndarray, rows: list[int], sizes: np.ndarray,
    channels: dict[int, dict[str, float | None]] | None = None,
) -> pa.Table:
    offsets = np.asarray(batch.offsets, dtype=np.int64)[positions] if len(positions) else np.zeros(0, np.int64)
    columns = {
        "machine_id": wire["machine_id"],
        "ts": wire["ts"],
        "seq": wire["seq"],
        **{sensor: wire[sensor] for sensor in SENSORS},
        "status": wire["status"],
        "kafka_partition": pa.array(np.full(len(positions), batch.partition, dtype=np.int32)),
        "kafka_offset": pa.array(offsets),
        "channels": channels_array([channels.get(i) for i in rows]) if channels else pa.nulls(len(rows), _CHANNELS_TYPE),
        "raw": _raw_column(batch.values, rows, sizes[positions]),
    }
    return pa.table(columns)


def _raw_column(values: list[bytes] | BinaryValues, rows: list[int], sizes: np.ndarray) -> pa.Array:
    every = len(rows) == len(values)
    if isinstance(values, BinaryValues):
        return values.array if every else values.array.take(pa.array(rows, pa.int64()))
    return binary_array(values if every else [values[i] for i in rows], sizes)


def _read_json_lines(values: Sequence[bytes], joined: bytes | None = None) -> pa.Table | None:
    """Parse newline-delimited messages in one call (`joined`: them, or their signed bodies, joined by newlines
    already); None when any message spoils the batch."""
    if joined is None:
        joined = b"\n".join(values)
    line_breaks = np.count_nonzero(np.frombuffer(joined, dtype=np.uint8) == ord("\n"))  # 2x bytes.count
    if line_breaks != len(values) - 1 or b"\r" in joined:
        # Raw line breaks are only legal as JSON whitespace (inside strings they must be escaped), so
        # blanking them keeps every document's meaning and restores one line per message.
        joined = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values)
    if OBJECT_FIRST.match(joined) is None or not is_utf8(joined):
        return None  # the per-message look names the culprit
    try:
        table = pa_json.read_json(io.BytesIO(joined), read_options=_READ_OPTIONS, parse_options=_PARSE_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(values) else None


def _classify_unparseable(value: bytes) -> tuple[str, str] | None:
    """Why a single message cannot be decoded, or None when it can."""
    if value.startswith(BOM) or not is_utf8(value):
        return (NOT_JSON, "not UTF-8 JSON text (invalid UTF-8, or a byte-order mark)")
    try:
        reading = _LOOSE_DECODER.decode(value)
    except msgspec.ValidationError as error:
        text = str(error)
        if text.startswith("Number out of range - at `$.") and text.rsplit("`$.", 1)[1].rstrip("`") in SENSORS:
            return (NON_FINITE, f"{text}: beyond float64, so infinite")  # as the batch reader reads it
        return (SCHEMA, text)
    except RecursionError:
        # Deeper than msgspec decodes; the batch reader takes any depth the size limit lets through.
        return None if _read_json_lines([value]) is not None else (SCHEMA, "nested too deeply to decode")
    except msgspec.DecodeError as error:
        try:
            parsed = json.loads(value.decode("utf-8"))  # Python's parser accepts NaN/Infinity, which JSON does not
        except (ValueError, RecursionError):
            return (NOT_JSON, str(error))
        if isinstance(parsed, dict) and any(
            isinstance(parsed.get(s), float) and not math.isfinite(parsed[s]) for s in SENSORS
        ):
            return (NON_FINITE, "sensor value is NaN or infinite")
        return (SCHEMA, str(error))
    for name in ("ts", "seq", "v"):
        number = getattr(reading, name)
        if number is not None and not INT64[0] <= number < INT64[1]:
            return (SCHEMA, f"{name}={str(number)[:40]}... does not fit a 64-bit integer")
    return None


def _np_bool(array: pa.ChunkedArray | pa.Array, null_as: bool = False) -> np.ndarray:
    return array.fill_null(null_as).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _dead(batch: RawBatch, i: int, reason: str, detail: str) -> DeadLetter:
    key = batch.keys[i] if batch.keys is not None else None
    return DeadLetter(
        value=batch.values[i],
        key=key,
        reason=reason,
        detail=detail,
        topic=batch.topic,
        partition=batch.partition,
        offset=batch.offsets[i],
    )


def _detail(reason: str, row: dict, now_ms: int, limits: ValidationLimits) -> str:
    if reason == UNSUPPORTED_VERSION:
        return f"schema version v={row['v']}, supported: {SCHEMA_VERSION}"
    if reason == SCHEMA:
        missing = [name for name in _REQUIRED if row[name] is None]
        return f"missing field(s): {', '.join(missing)}"
    if reason == BAD_MACHINE_ID:
        return f"machine_id={row['machine_id']!r} does not match {MACHINE_ID_PATTERN}"
    if reason == IDENTITY_MISMATCH:
        return f"machine_id={row['machine_id']!r} is not the machine of the key that signed it"
    if reason == BAD_STATUS:
        return f"status={row['status']!r} is not one of {', '.join(STATUSES)}"
    if reason == NON_FINITE:
        return ", ".join(f"{s}={row[s]}" for s in SENSORS if row[s] is not None and not math.isfinite(row[s]))
    if reason == OUT_OF_RANGE:
        parts = [
            f"{s}={row[s]} outside [{PHYSICAL_LIMITS[s][0]}, {PHYSICAL_LIMITS[s][1]}]"
            for s in SENSORS
            if row[s] is not None and not PHYSICAL_LIMITS[s][0] <= row[s] <= PHYSICAL_LIMITS[s][1]
        ]
        if not 0 <= row["seq"] < MAX_SEQ:
            parts.append(f"seq={row['seq']} outside [0, 2**39)")
        return "; ".join(parts)
    if reason == TS_FUTURE:
        return f"ts={row['ts']} is {(row['ts'] - now_ms) / 1000:.0f} s ahead of the wall clock"
    if reason == TS_TOO_OLD:
        return f"ts={row['ts']} is {(now_ms - row['ts']) / 1000:.0f} s old (limit {limits.max_event_age_ms / 1000:.0f} s)"
    return reason
