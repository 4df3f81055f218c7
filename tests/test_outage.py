"""Outage test: the S3 endpoint (a moto server) goes away for 20 s in the middle of a run, then returns.

The flow (a real `plantpulse run` process with recovery, lake on s3://) must stop pulling from Kafka
instead of buffering (bounded memory), keep retrying, catch up when S3 is back and lose nothing: the lake
holds every reading exactly once, `window_stats FINAL` equals the reference, alerts are not duplicated.

ClickHouse outages cannot be staged here: the tests use embedded chDB (in-process, nothing to unplug) and
no ClickHouse server runs on these machines. The ClickHouse sink's retry and backpressure are tested with
injected failures in tests/test_clickhouse.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import s3fs
from confluent_kafka import Consumer, TopicPartition

from connectors.broker import free_port
from connectors.lake import read_lake
from connectors.topics import partition_ids
from sim import Simulator, build_fleet, produce
from tests.processes import (
    PLANTPULSE,
    assert_exactly_once,
    flow_env,
    scrape,
    stop,
    wait_until_caught_up,
)

pytestmark = pytest.mark.integration

# Long enough for the lake's retry backoff (0.2 s doubling, capped at 10 s) to reach its cap: the last retries
# of the outage wait the longest the flow ever waits.
OUTAGE_S = 20.0
READINGS = 80_000
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _moto(port: int):  # type: ignore[no-untyped-def]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def _topic_size(settings) -> int:  # type: ignore[no-untyped-def]
    """Messages in the telemetry topic now (sum of high watermarks)."""
    consumer = Consumer(settings.kafka_config() | {"group.id": "outage-test", "enable.auto.commit": False})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(settings.telemetry_topic, p), timeout=10)[1]
                   for p in partition_ids(settings, settings.telemetry_topic))
    finally:
        consumer.close()


def _rss_mb(process: psutil.Process) -> float:
    try:
        family = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in family) / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def test_s3_outage_mid_run_loses_nothing_and_holds_memory(kafka_settings, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = kafka_settings(create_topics=True, partitions=4)
    s3_port = free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    server = _moto(s3_port)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, client_kwargs={"region_name": "us-east-1"})
    fs.call_s3("create_bucket", Bucket="plant-lake")
    recording = tmp_path / "outage.parquet"
    env = flow_env(
        settings,
        tmp_path,
        **CREDENTIALS,
        LAKE_URL="s3://plant-lake/raw",
        S3_ENDPOINT_URL=endpoint,
        MACHINES_FILE=str(tmp_path / "outage.machines.csv"),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        SNAPSHOT_INTERVAL_SECONDS="1",
        LAKE_FILE_MAX_AGE_SECONDS="0",  # write at every snapshot: S3 is needed all the time
        CLICKHOUSE_FLUSH_SECONDS="0.2",
        IDLE_CLOSE_SECONDS="3",
        KAFKA_BATCH_SIZE="2000",
    )
    # 200 machines at 6,000 readings/s (event time = wall time): the producer runs ~13 s, into the outage.
    produced: list = []
    producer = threading.Thread(
        target=lambda: produced.append(produce(settings, Simulator(build_fleet(200, seed=21), seed=21, faults="all",
                                                                   fault_rate=0.2),
                                               rate=6000, count=READINGS, record_path=recording)),
        daemon=True,
    )
    metrics_port = free_port()
    log = tmp_path / "run.log"
    process = subprocess.Popen(PLANTPULSE + ["run"], env={**env, "METRICS_PORT": str(metrics_port)},
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        producer.start()
        watched = psutil.Process(process.pid)
        started = time.monotonic()
        while (scrape(metrics_port) or {}).get("plantpulse_lake_rows_written_total", 0) == 0:
            assert process.poll() is None and time.monotonic() - started < 60, log.read_text()[-2000:]
            time.sleep(0.1)

        server.stop()  # --- outage ---
        outage_start = time.monotonic()
        at_stop = scrape(metrics_port) or {}
        rss_at_stop = _rss_mb(watched)
        samples = []
        while time.monotonic() - outage_start < OUTAGE_S:
            time.sleep(0.5)
            assert process.poll() is None, log.read_text()[-2000:]
            samples.append((scrape(metrics_port) or {}, _rss_mb(watched)))
        in_topic_at_end_of_outage = _topic_size(settings)
        server = _moto(s3_port)  # --- back (moto keeps its buckets across a restart in one process) ---

        producer.join(60)
        assert produced and produced[0].messages >= READINGS
        wait_until_caught_up(metrics_port, process, log)
        final = scrape(metrics_port) or {}
    finally:
        stop(process)

    received = [m.get("plantpulse_readings_received_total", 0) for m, _ in samples]
    # The blocked snapshot stops the worker: after it, nothing more is pulled (at most the polls in flight).
    settled = received[len(received) // 3 :]
    assert max(settled) - min(settled) <= 4 * 2000, f"the flow kept pulling during the outage: {received}"
    assert received[-1] < READINGS, "the whole topic was consumed before the outage: it was not mid-run"
    assert in_topic_at_end_of_outage - received[-1] > 20_000, "the producer's readings must wait in Kafka"
    assert samples[-1][0].get("plantpulse_lake_write_retries_total", 0) > at_stop.get(
        "plantpulse_lake_write_retries_total", 0), "lake writes were not retried"
    peak_rss = max(rss for _, rss in samples)
    print(f"outage: pulled before {received[0]:.0f}, during +{max(settled) - min(settled):.0f}; "
          f"waiting in Kafka {in_topic_at_end_of_outage - received[-1]}; RSS {rss_at_stop:.0f} -> peak {peak_rss:.0f} MB")
    assert peak_rss - rss_at_stop < 200, f"memory grew {peak_rss - rss_at_stop:.0f} MB during the outage"
    assert "retrying" in log.read_text(), "the outage was not logged"
    assert final.get("plantpulse_lake_rows_written_total", 0) > 0

    try:
        readings = pq.read_table(recording).to_pandas()
        lake = read_lake("s3://plant-lake/raw", fs).to_pandas()
    finally:
        server.stop()
    assert_exactly_once(readings, lake, env)
