"""Incident latency through the broker: from the moment a threshold condition completes to the incident being
on the `incidents` topic and queryable in ClickHouse.

The simulator produces `rate` readings/s in real time (event time = wall clock) for `seconds`, with overheating
and pressure-leak faults on a fraction of the fleet; the flow runs as `plantpulse run` (recovery on, default
settings otherwise), the broker shares the 2 cores. The bench tails the incidents topic and notes when each
`opened` record arrives; after the run, `incident_events.ingested_at` says when each became queryable.

Latency is measured from the incident's `first_seen_ts`: the event time at which the condition had held for
`for_seconds`. The reading that reveals it is the next one of that machine (at most one sampling interval later,
0.1 s at 10 readings/s per machine) and reaches the broker a few ms after its timestamp, so the figures are an
upper bound of the latency from that reading's arrival.

    python -m bench.incident_latency [--rate 50000 --seconds 150 --machines 5000 --runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.e2e import _wait_until_idle, start_flow, stop_flow
from bench.soak import scrape
from connectors.broker import EmbeddedBroker, free_port
from connectors.clickhouse import run_sql
from connectors.topics import ensure_topics, partition_ids
from plantpulse.settings import Settings

ROOT = Path(__file__).resolve().parent
TARGET_P99_MS = 2_000


class IncidentTail(threading.Thread):
    """Follows the incidents topic from the start; records the wall time each `opened` record arrived."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="incident-tail")
        self.settings = settings
        self.arrivals: dict[str, tuple[float, dict]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        consumer = Consumer({**self.settings.kafka_config(), "group.id": "bench-incident-tail", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
        topic = self.settings.incidents_topic
        consumer.assign([TopicPartition(topic, p, 0) for p in partition_ids(self.settings, topic)])
        try:
            while not self.stop.is_set():
                for message in consumer.consume(1000, 0.05):
                    if message.error() is not None or message.value() is None:
                        continue
                    now = time.time()
                    row = orjson.loads(message.value())
                    if row["transition"] == "opened":
                        self.arrivals.setdefault(row["incident_id"], (now, row))
        finally:
            consumer.close()


class Sampler(threading.Thread):
    """The flow's consumer lag (messages behind, all partitions) and event-time lag every 2 s while producing."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="lag-sampler")
        self.port = port
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            metrics = scrape(self.port)
            if metrics:
                self.samples.append((metrics.get("plantpulse_kafka_lag", 0.0),
                                     metrics.get("plantpulse_event_time_lag_seconds", 0.0)))

    def summary(self) -> dict:
        thirds = np.array_split(np.asarray(self.samples or [(0.0, 0.0)]), 3)
        return {"kafka_lag_messages_max_by_third": [int(t[:, 0].max()) if len(t) else None for t in thirds],
                "event_time_lag_s_median_by_third": [round(float(np.median(t[:, 1])), 2) if len(t) else None
                                                     for t in thirds]}


def run_once(rate: int, seconds: int, machines: int, seed: int, recovery: bool = True) -> dict:
    work = ROOT / "data" / "incident_latency"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with EmbeddedBroker(log_dir=work) as broker:
        port = free_port()
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATA_DIR": str(work),
               "METRICS_PORT": str(port), "TOPIC_PARTITIONS": "8", "LOG_LEVEL": "WARNING",
               **({"RECOVERY_DIR": str(work / "recovery")} if recovery else {})}
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap, data_dir=work)
        ensure_topics(settings)
        tail = IncidentTail(settings)
        tail.start()
        plantpulse = [sys.executable, "-m", "plantpulse.cli"]
        flow = start_flow(env, work / "flow.log", port)
        try:
            sampler = Sampler(port)
            sampler.start()
            subprocess.run(
                plantpulse + ["sim", "--machines", str(machines), "--rate", str(rate), "--duration", str(seconds),
                              "--seed", str(seed), "--faults", "overheating,pressure_leak", "--fault-rate", "0.1",
                              "--faults-after", "0"],
                env=env, check=True, capture_output=True,
            )
            sampler.stop.set()
            _wait_until_idle(port, settings.idle_close_seconds + 5)
        finally:
            stop_flow(flow, 60)
            tail.stop.set()
            tail.join(10)
    _, rows = run_sql(settings, """
        SELECT incident_id, kind, toUnixTimestamp64Milli(min(ingested_at)) - toUnixTimestamp64Milli(any(first_seen_ts))
        FROM incident_events WHERE transition = 'opened' GROUP BY incident_id, kind""")
    clickhouse = {incident_id: (kind, latency) for incident_id, kind, latency in rows}
    topic = {i: (row["kind"], arrived * 1000 - row["first_seen_ts"]) for i, (arrived, row) in tail.arrivals.items()}
    threshold = [(row["first_seen_ts"], row["at"], arrived * 1000) for arrived, row in tail.arrivals.values()
                 if row["kind"] == "threshold"]
    # Where the time goes: until the incidents step made the transition (`at`), then until it was on the topic;
    # and the p99 per third of the run, which shows a latency that grows as the run goes on.
    parts = {"to_incident_step": _pct([at - seen for seen, at, _ in threshold]),
             "step_to_topic": _pct([arrived - at for _, at, arrived in threshold])}
    if threshold:
        first, last = min(t[0] for t in threshold), max(t[0] for t in threshold)
        span = max(last - first, 1) / 3
        parts["topic_p99_ms_by_third"] = [
            _pct([arrived - seen for seen, _, arrived in threshold if first + k * span <= seen <= first + (k + 1) * span])
            .get("p99_ms") for k in range(3)
        ]
    return {"threshold_breakdown": parts,
            "threshold": _summary([v for k, v in topic.values() if k == "threshold"],
                                  [v for k, v in clickhouse.values() if k == "threshold"]),
            "anomaly": _summary([v for k, v in topic.values() if k == "anomaly"],
                                [v for k, v in clickhouse.values() if k == "anomaly"]),
            "while_producing": sampler.summary()}


def _pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    data = np.asarray(values, dtype=float)
    return {"n": len(values), "p50_ms": round(float(np.percentile(data, 50))),
            "p99_ms": round(float(np.percentile(data, 99))), "max_ms": round(float(data.max()))}


def _summary(topic_ms: list[float], clickhouse_ms: list[float]) -> dict:
    return {"topic": _pct(topic_ms), "clickhouse": _pct(clickhouse_ms)}


def measure(rate: int = 50_000, seconds: int = 150, machines: int = 5_000, runs: int = 3) -> dict:
    results = [run_once(rate, seconds, machines, seed=11 + r) for r in range(runs)]
    # One more run with recovery off attributes the rest of the p99 (the flow stands still while it snapshots).
    without = run_once(rate, seconds, machines, seed=11, recovery=False)["threshold"]["topic"]

    def median(kind: str, where: str, key: str) -> float | None:
        values = [r[kind][where][key] for r in results if r[kind][where].get("n")]
        return round(statistics.median(values)) if values else None

    return {
        "rate_per_s": rate, "seconds": seconds, "machines": machines, "runs": runs,
        "target_p99_ms": TARGET_P99_MS,
        "threshold_topic_p99_ms_median": median("threshold", "topic", "p99_ms"),
        "threshold_clickhouse_p99_ms_median": median("threshold", "clickhouse", "p99_ms"),
        "threshold_topic_p50_ms_median": median("threshold", "topic", "p50_ms"),
        "threshold_clickhouse_p50_ms_median": median("threshold", "clickhouse", "p50_ms"),
        "anomaly_clickhouse_p99_ms_median": median("anomaly", "clickhouse", "p99_ms"),
        "per_run": results,
        "without_recovery": without,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=150)
    parser.add_argument("--machines", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.rate, args.seconds, args.machines, args.runs), indent=2))


if __name__ == "__main__":
    main()
