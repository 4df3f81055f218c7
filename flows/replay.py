"""The replay flow: recorded readings through the live flow's window, rule and model steps, as fast as possible.

Inputs (see `connectors.replay_sources`) arrive either as raw messages (a simulator recording: they go
through `process_telemetry`, decode and validation included, exactly as on Kafka) or as decoded reading
tables (the Parquet lake, a CSV/Parquet file: they enter at `analyse_readings`). Either way the window,
rule and anomaly-model code is the live flow's own; only the clock and the sharding differ: a replay has no
wall-clock silence, so windows close by event time and at the end of the input, never by idleness; and it
runs on one worker with one state shard, so each model call scores every machine's windows of a batch at
once (results are per machine, so the shard count does not change them: `tests/test_anomaly_flow.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from flows.pipeline import AnalysisStreams, PipelineConfig, PipelineStreams, analyse_readings, process_telemetry
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    ANOMALY_SCORE_ARROW_SCHEMA,
    WINDOW_STATS_ARROW_SCHEMA,
    RawBatch,
)

NEVER_S = 1e12  # idle close / staleness: not by wall clock in a replay
# One shard: with one worker, more shards only split each batch into more, smaller window and model calls
# (measured: 32 shards -> 1 shard takes a 100-machine replay from ~60k to ~300k readings/s).
REPLAY_SHARDS = 1


@dataclass
class ReplayOutput:
    window_stats: pa.Table
    scores: pa.Table
    alerts: pa.Table


class _IterPartition(StatelessSourcePartition):
    def __init__(self, items: Iterator, progress: Callable[[object], None] | None) -> None:
        self.items = items
        self.progress = progress

    def next_batch(self) -> list:
        item = next(self.items)  # StopIteration ends the input
        if self.progress is not None:
            self.progress(item)
        return [item]


class IterableSource(DynamicSource):
    """A bounded input read once, on the first worker: a replay is one ordered stream."""

    def __init__(self, items: Iterable, progress: Callable[[object], None] | None = None) -> None:
        self.items = items
        self.progress = progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _IterPartition:
        return _IterPartition(iter(self.items if worker_index == 0 else ()), self.progress)


class _CollectPartition(StatelessSinkPartition):
    def __init__(self, out: list) -> None:
        self.out = out

    def write_batch(self, items: list) -> None:
        self.out.extend(items)


class CollectSink(DynamicSink):
    """Keeps every table in a list (replay results are per window, small next to the readings)."""

    def __init__(self, out: list) -> None:
        self.out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CollectPartition:
        return _CollectPartition(self.out)


def replay_config(config: PipelineConfig) -> PipelineConfig:
    """`config` for a replay: wall-clock closing switched off, one state shard (one worker runs it all), and
    no device signature checks: a replay reads files (the lake holds readings the live flow verified; a
    recording holds no headers), not devices."""
    windows = replace(config.windows, idle_close_s=NEVER_S, stale_after_s=NEVER_S)
    return replace(config, windows=windows, shards=REPLAY_SHARDS, device_keys=None)


def replay(
    items: Iterable[RawBatch] | Iterable[pa.Table],
    config: PipelineConfig,
    *,
    raw: bool,
    progress: Callable[[object], None] | None = None,
) -> ReplayOutput:
    """Run the replay flow over `items` (raw polls if `raw`, else decoded reading tables)."""
    config = replay_config(config)
    flow = Dataflow("plantpulse_replay")
    source = op.input("replay_in", flow, IterableSource(items, progress))
    streams: PipelineStreams | AnalysisStreams
    if raw:
        streams = process_telemetry("process", source, config)
    else:
        streams = analyse_readings("analyse", source, config)
    windows: list[pa.Table] = []
    scores: list[pa.Table] = []
    alerts: list[pa.Table] = []
    op.output("windows_out", streams.window_stats, CollectSink(windows))
    op.output("scores_out", streams.anomaly_scores, CollectSink(scores))
    op.output("alerts_out", streams.alerts, CollectSink(alerts))
    cli_main(flow, workers_per_process=1)
    return ReplayOutput(
        window_stats=_concat(windows, WINDOW_STATS_ARROW_SCHEMA),
        scores=_concat(scores, ANOMALY_SCORE_ARROW_SCHEMA),
        alerts=_concat(alerts, ALERT_ARROW_SCHEMA),
    )


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
