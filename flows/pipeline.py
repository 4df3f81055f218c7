"""The telemetry processing steps as one composite: raw polls in, sink-ready streams out.

Shared by the live flow (`flows.telemetry`), the benchmark and the tests, so all of them run exactly the
same decode -> shard -> window -> rules logic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Stream, operator

from flows import metrics
from flows.decode import BatchDecoder, DeadLetter, DecodedBatch, ValidationLimits
from flows.fleet import load_machine_types
from flows.rules import ThresholdRule, load_rules
from flows.window_logic import ShardSplitter, ShardWindowLogic, restore_windows
from flows.window_state import ShardWindows, WindowConfig, WindowOutput
from plantpulse.schema import RawBatch
from plantpulse.settings import Settings


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the steps need, resolved once from `Settings` (or built directly by tests)."""

    limits: ValidationLimits
    windows: WindowConfig
    rules: tuple[ThresholdRule, ...]
    machine_types: dict[str, str]
    shards: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            limits=ValidationLimits(
                max_payload_bytes=settings.max_payload_bytes,
                max_future_skew_ms=int(settings.max_future_skew_seconds * 1000),
                max_event_age_ms=int(settings.max_event_age_seconds * 1000),
            ),
            windows=WindowConfig(
                window_ms=settings.window_seconds * 1000,
                lateness_ms=int(settings.allowed_lateness_seconds * 1000),
                idle_close_s=settings.idle_close_seconds,
                stale_after_s=settings.stale_after_seconds,
                dedup_seq_window=settings.dedup_seq_window,
            ),
            rules=tuple(load_rules(settings.rules_file)),
            machine_types=load_machine_types(Path(settings.machines_file)) if settings.machines_file else {},
            shards=settings.state_shards,
        )


@dataclass
class PipelineStreams:
    decoded: Stream[DecodedBatch]
    dead_letters: Stream[DeadLetter]
    dead_letter_batches: Stream[list[DeadLetter]]  # the same dead letters, as the lists they arise in
    window_stats: Stream[pa.Table]
    alerts: Stream[pa.Table]
    machine_state: Stream[pa.Table]


@operator
def process_telemetry(
    step_id: str, raw: Stream[RawBatch], config: PipelineConfig, clock: Callable[[], float] = time.time
) -> PipelineStreams:
    """Decode, validate, window and evaluate rules on a stream of raw polls (a composite operator)."""
    decoder = BatchDecoder(config.limits)

    def decode(batch: RawBatch) -> DecodedBatch:
        decoded = decoder.decode(batch, now_ms=int(clock() * 1000))
        metrics.READINGS_RECEIVED.inc(decoded.received)
        for letter in decoded.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.reason).inc()
        return decoded

    def build_logic(snapshot: bytes | None) -> ShardWindowLogic:
        fresh = ShardWindows(config.windows, list(config.rules), config.machine_types)
        return ShardWindowLogic(restore_windows(fresh, snapshot, clock()), clock)

    decoded = op.map("decode", raw, decode)
    splitter = ShardSplitter(config.shards)
    sharded = op.flat_map("shard", decoded, lambda d: splitter(d.readings))
    outputs = op.key_rm("outputs", op.stateful_batch("windows", sharded, build_logic))
    counted = op.map("count", outputs, _count)
    letter_batches = op.filter(
        "dead_letter_batches",
        op.merge(
            "rejected",
            op.map("invalid", decoded, lambda d: d.dead_letters),
            op.map("late", counted, lambda o: o.dead_letters or []),
        ),
        bool,
    )
    return PipelineStreams(
        decoded=decoded,
        dead_letters=op.flat_map("dead_letters", letter_batches, lambda letters: letters),
        dead_letter_batches=letter_batches,
        window_stats=op.filter_map("window_stats", counted, lambda o: o.window_stats),
        alerts=op.filter_map("alerts", counted, lambda o: o.alerts if o.alerts and o.alerts.num_rows else None),
        machine_state=op.filter_map("machine_state", counted, lambda o: o.machine_state),
    )


def _count(output: WindowOutput) -> WindowOutput:
    metrics.READINGS_ACCEPTED.inc(output.accepted)
    metrics.DUPLICATES.inc(output.duplicates)
    if output.dead_letters:
        metrics.DEAD_LETTERS.labels("late").inc(len(output.dead_letters))
    if output.window_stats is not None:
        metrics.WINDOWS_EMITTED.inc(output.window_stats.num_rows)
        newest = output.window_stats["window_end"].cast("int64").to_numpy().max()
        metrics.EVENT_TIME_LAG.set(time.time() - newest / 1000.0)
    if output.alerts is not None:
        for severity in output.alerts["severity"].to_pylist():
            metrics.ALERTS_RAISED.labels(severity).inc()
    return output
