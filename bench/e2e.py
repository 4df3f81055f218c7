"""End-to-end benchmark through the embedded broker: latency at a steady rate, then sustained throughput.

1. Latency: the simulator produces `rate` readings/s in real time (event time = wall clock) for
   `seconds`, recorded to Parquet. Afterwards, every recorded reading is joined to its window row in
   ClickHouse: latency = the row's `ingested_at` (when it became queryable) minus the reading's `ts`.
2. Throughput: `burst` readings are produced as fast as possible; the flow's own counter (Prometheus
   endpoint) gives readings/s while it works through the backlog.

The flow runs as `plantpulse run` in its own process, as in production; the broker shares the 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors.broker import EmbeddedBroker, free_port
from connectors.clickhouse import run_sql
from connectors.topics import ensure_topics
from plantpulse.settings import Settings

ROOT = Path(__file__).resolve().parent


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return -1.0
    return 0.0


def run_e2e(rate: int = 50_000, seconds: int = 60, machines: int = 5_000, burst: int = 2_000_000) -> dict:
    work = ROOT / "data" / "e2e"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with EmbeddedBroker(log_dir=work) as broker:
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "DATA_DIR": str(work),
            "METRICS_PORT": str(port),
            "TOPIC_PARTITIONS": "8",
            "LOG_LEVEL": "WARNING",
        }
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap, data_dir=work)
        ensure_topics(settings)
        plantpulse = [sys.executable, "-m", "plantpulse.cli"]
        flow = start_flow(env, work / "flow.log", port)
        try:
            recording = work / "latency.parquet"
            subprocess.run(
                plantpulse + ["sim", "--machines", str(machines), "--rate", str(rate), "--duration", str(seconds),
                              "--seed", "3", "--faults", "none", "--record", str(recording)],
                env=env, check=True, capture_output=True,
            )
            _wait_until_idle(port, settings.idle_close_seconds + 5)
            received_before = _metric(port, "plantpulse_readings_received_total")
            producer = subprocess.Popen(
                plantpulse + ["sim", "--machines", str(machines), "--as-fast-as-possible", "--count", str(burst),
                              "--seed", "4", "--faults", "none"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            samples = []
            started = time.monotonic()
            while True:
                time.sleep(1.0)
                done = _metric(port, "plantpulse_readings_received_total") - received_before
                samples.append((time.monotonic() - started, done))
                if done >= burst or time.monotonic() - started > 600:
                    break
            producer.wait()
            _wait_until_idle(port, settings.idle_close_seconds + 5)
        finally:
            stop_flow(flow, 30)
    elapsed, processed = samples[-1]
    # Steady-state rate: from the first to the last sample where the flow was still working.
    first = next(s for s in samples if s[1] > 0)
    sustained = (processed - first[1]) / max(elapsed - first[0], 1e-6)
    latency = _latency(settings, recording)
    return {
        "latency_run": {"rate_per_s": rate, "seconds": seconds, "machines": machines, **latency,
                        "window_seconds": settings.window_seconds,
                        "allowed_lateness_seconds": settings.allowed_lateness_seconds,
                        "target_p99_ms": settings.window_seconds * 1000 + 3000},
        "throughput_run": {"readings": burst, "sustained_readings_per_s": round(sustained),
                           "seconds_to_process": round(elapsed, 1)},
    }


def start_flow(env: dict[str, str], log: Path, metrics_port: int) -> subprocess.Popen:
    """`plantpulse run` in its own process group, returned once its metrics endpoint answers."""
    flow = subprocess.Popen([sys.executable, "-m", "plantpulse.cli", "run"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    while _metric(metrics_port, "plantpulse_readings_received_total") < 0:
        if flow.poll() is not None:
            raise RuntimeError(f"the flow exited with {flow.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return flow


def stop_flow(flow: subprocess.Popen, timeout_s: float) -> None:
    """A clean stop (SIGINT to the flow's process group), SIGKILL if it takes longer than `timeout_s`."""
    os.killpg(flow.pid, signal.SIGINT)
    try:
        flow.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(flow.pid, signal.SIGKILL)
        flow.wait()


def _wait_until_idle(port: int, quiet_seconds: float) -> None:
    """Until the window row counter has not moved for `quiet_seconds` (all windows closed and written)."""
    last, since = -1.0, time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        time.sleep(0.5)
        current = _metric(port, "plantpulse_windows_emitted_total")
        if current != last:
            last, since = current, time.monotonic()
    time.sleep(2.0)  # one more sink flush interval


def _latency(settings: Settings, recording: Path) -> dict:
    """Latency percentiles over all readings, and over the steady state: the last two windows of the run
    are closed by idleness (IDLE_CLOSE_SECONDS after the stream stops), not by the watermark."""
    window_ms = settings.window_seconds * 1000
    query = f"""
        WITH windows AS (
            SELECT machine_id, window_start, min(ingested_at) AS queryable_at
            FROM window_stats GROUP BY machine_id, window_start
        ),
        readings AS (SELECT machine_id, ts FROM file('{recording}', Parquet) WHERE expected_reason IS NULL),
        joined AS (
            SELECT r.ts AS ts, toUnixTimestamp64Milli(w.queryable_at) - r.ts AS latency
            FROM readings AS r INNER JOIN windows AS w
              ON w.machine_id = r.machine_id
             AND w.window_start = fromUnixTimestamp64Milli(intDiv(r.ts, {window_ms}) * {window_ms}, 'UTC')
        )
        SELECT count(), quantilesExact(0.5, 0.99)(latency),
               countIf(ts < (SELECT max(ts) FROM readings) - {2 * window_ms}),
               quantilesExactIf(0.5, 0.99)(latency, ts < (SELECT max(ts) FROM readings) - {2 * window_ms})
        FROM joined
    """
    _, rows = run_sql(settings, query)
    count, (p50, p99), steady_count, (steady_p50, steady_p99) = rows[0]
    return {
        "readings_joined": int(count),
        "latency_p50_ms": round(p50),
        "latency_p99_ms": round(p99),
        "steady_state_readings": int(steady_count),
        "steady_state_latency_p50_ms": round(steady_p50),
        "steady_state_latency_p99_ms": round(steady_p99),
    }
