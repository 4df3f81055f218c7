"""The straightforward per-event Bytewax flow the benchmark compares against.

`map` (decode one JSON message) -> `key_on` (machine) -> `fold_window` (event-time tumbling windows)
collecting each window's readings, then the same statistics computed in plain Python at close.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window

from plantpulse.schema import SENSORS, STATUSES, RawBatch, Reading

_DECODER = msgspec.json.Decoder(Reading)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def per_event_window_stats(raw: Stream[RawBatch], window_ms: int, lateness_ms: int) -> Stream[dict]:
    """Window rows (dicts with the flow's column names, timestamps in ms) from per-message steps."""
    messages = op.flat_map("explode", raw, lambda batch: batch.values)
    readings = op.map("decode_one", messages, _DECODER.decode)
    keyed = op.key_on("by_machine", readings, lambda r: r.machine_id)
    # System time is frozen so the watermark is pure event time (max seen - lateness), as in the project's
    # flow when it runs faster than real time; otherwise a slow run would declare events late by wall clock.
    clock = EventClock(
        ts_getter=lambda r: _EPOCH + timedelta(milliseconds=r.ts),
        wait_for_system_duration=timedelta(milliseconds=lateness_ms),
        now_getter=lambda: _EPOCH,
        to_system_utc=lambda _: None,
    )
    windower = TumblingWindower(length=timedelta(milliseconds=window_ms), align_to=_EPOCH)
    windows = fold_window("collect", keyed, clock, windower, list, _append, _merge)
    return op.map("stats", windows.down, lambda item: _stats(item[0], item[1][1], window_ms))


def _append(acc: list, reading: Reading) -> list:
    acc.append(reading)
    return acc


def _merge(a: list, b: list) -> list:
    return a + b


def _stats(machine_id: str, readings: list[Reading], window_ms: int) -> dict:
    readings = sorted(readings, key=lambda r: (r.ts, r.seq))
    window_start = readings[0].ts // window_ms * window_ms
    row: dict = {
        "machine_id": machine_id,
        "window_start": window_start,
        "readings": len(readings),
        "first_ts": readings[0].ts,
        "last_ts": readings[-1].ts,
        "last_seq": readings[-1].seq,
        "first_seq": readings[0].seq,
    }
    for sensor in SENSORS:
        values = [getattr(r, sensor) for r in readings if getattr(r, sensor) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        row[f"{sensor}_count"] = n
        row[f"{sensor}_mean"] = mean
        row[f"{sensor}_min"] = min(values) if n else None
        row[f"{sensor}_max"] = max(values) if n else None
        row[f"{sensor}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else None
        row[f"{sensor}_last"] = values[-1] if n else None
    row["status_last"] = readings[-1].status
    held = dict.fromkeys(STATUSES, 0.0)
    for i, reading in enumerate(readings):
        until = readings[i + 1].ts if i + 1 < len(readings) else window_start + window_ms
        held[reading.status] += (until - reading.ts) / 1000.0
    for status in STATUSES:
        row[f"secs_{status}"] = held[status]
    return row


def build_per_event_flow(batches: Iterable[RawBatch], window_ms: int, lateness_ms: int, sink) -> Dataflow:
    from bytewax.testing import TestingSource

    flow = Dataflow("bench_per_event")
    raw = op.input("in", flow, TestingSource(batches))
    op.output("out", per_event_window_stats(raw, window_ms, lateness_ms), sink)
    return flow
