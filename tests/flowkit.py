"""Small helpers to run the pipeline composite on in-memory raw batches (one worker or a cluster)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import bytewax.operators as op
import pandas as pd
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.decode import DeadLetter, ValidationLimits
from flows.pipeline import PipelineConfig, process_telemetry
from flows.rules import ThresholdRule, load_rules
from flows.window_state import WindowConfig
from models.spec import ModelSpecs
from plantpulse.schema import SENSORS, RawBatch
from plantpulse.settings import PACKAGED_RULES_FILE


@dataclass
class FlowResult:
    window_stats: pd.DataFrame
    alerts: pd.DataFrame
    machine_state: pd.DataFrame
    dead_letters: list[DeadLetter] = field(default_factory=list)
    anomaly_scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    incident_events: pd.DataFrame = field(default_factory=pd.DataFrame)  # transitions, in emission order
    incident_states: pd.DataFrame = field(default_factory=pd.DataFrame)  # every version
    reading_issues: pd.DataFrame = field(default_factory=pd.DataFrame)  # dead letters, duplicates, seq resets


def config(
    window_ms: int = 10_000,
    lateness_ms: int = 2_000,
    shards: int = 8,
    rules: list[ThresholdRule] | None = None,
    machine_types: dict[str, str] | None = None,
    limits: ValidationLimits | None = None,
    models: ModelSpecs | None = None,
    **window_options: float,
) -> PipelineConfig:
    return PipelineConfig(
        limits=limits or ValidationLimits(max_event_age_ms=0),
        windows=WindowConfig(window_ms=window_ms, lateness_ms=lateness_ms, **window_options),
        rules=tuple(load_rules(PACKAGED_RULES_FILE) if rules is None else rules),
        machine_types=machine_types or {},
        shards=shards,
        models=models,
    )


def batches_of(messages: list[bytes], size: int, partition: int = 0, topic: str = "telemetry") -> list[RawBatch]:
    return [
        RawBatch(topic, partition, list(range(i, i + len(messages[i : i + size]))), messages[i : i + size])
        for i in range(0, len(messages), size)
    ]


def run_pipeline(batches: list[RawBatch], cfg: PipelineConfig, workers: int = 1, clock=time.time) -> FlowResult:
    stats: list[pa.Table] = []
    alerts: list[pa.Table] = []
    states: list[pa.Table] = []
    dead: list[DeadLetter] = []
    scores: list[pa.Table] = []
    events: list[pa.Table] = []
    versions: list[pa.Table] = []
    issues: list[pa.Table] = []
    flow = Dataflow("test_pipeline")
    streams = process_telemetry("process", op.input("in", flow, TestingSource(batches)), cfg, clock=clock)
    op.output("stats", streams.window_stats, TestingSink(stats))
    op.output("alerts", streams.alerts, TestingSink(alerts))
    op.output("state", streams.machine_state, TestingSink(states))
    op.output("dead", streams.dead_letters, TestingSink(dead))
    op.output("scores", streams.anomaly_scores, TestingSink(scores))
    op.output("incident_events", streams.incident_transitions, TestingSink(events))
    op.output("incident_states", streams.incident_states, TestingSink(versions))
    op.output("reading_issues", streams.reading_issues, TestingSink(issues))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return FlowResult(
        _frame(stats), _frame(alerts), _frame(states), dead, _frame(scores), _frame(events), _frame(versions),
        _frame(issues),
    )


def _frame(tables: list[pa.Table]) -> pd.DataFrame:
    """Concatenate output tables into pandas, timestamps as epoch milliseconds."""
    if not tables:
        return pd.DataFrame()
    table = pa.concat_tables(tables)
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names).to_pandas()


def encode(reading: dict) -> bytes:
    return json.dumps(reading).encode()


def readings_frame(readings: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(readings)
    for sensor in SENSORS:
        if sensor not in frame:
            frame[sensor] = float("nan")
        frame[sensor] = frame[sensor].astype("float64")
    return frame


def write_rules(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
