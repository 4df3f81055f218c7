"""The command line as users run it: broker, run (with a recovery store), sim, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from connectors.broker import free_port
from tests.processes import PLANTPULSE, flow_env, scrape

pytestmark = pytest.mark.integration


def _stop(process: subprocess.Popen) -> int:
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def test_broker_command_prints_its_address_and_stops_on_ctrl_c() -> None:
    port = free_port()
    process = subprocess.Popen(PLANTPULSE + ["broker", "--port", str(port)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}"
    finally:
        assert _stop(process) == 0


def test_run_initialises_recovery_store_and_resumes_from_it(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=2)
    recovery = tmp_path / "recovery"
    env = flow_env(
        settings, tmp_path, RECOVERY_DIR=str(recovery), RECOVERY_PARTITIONS="3", SNAPSHOT_INTERVAL_SECONDS="1"
    )
    produced = subprocess.run(
        PLANTPULSE + ["sim", "--machines", "20", "--as-fast-as-possible", "--count", "4000", "--seed", "2"],
        env=env, capture_output=True, text=True,
    )
    assert produced.returncode == 0, produced.stderr
    for attempt in range(2):  # the second start resumes from the store the first one wrote
        port = free_port()
        process = subprocess.Popen(PLANTPULSE + ["run"], env={**env, "METRICS_PORT": str(port)},
                                   stdout=(tmp_path / f"run-{attempt}.log").open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.3)
                samples = scrape(port)
                if attempt == 0 and samples and samples.get("plantpulse_readings_received_total", 0) >= 4000:
                    time.sleep(2.5)  # let a snapshot (1 s epochs) record the offsets
                    break
                if attempt == 1 and samples is not None:
                    time.sleep(2.0)
                    break
            assert process.poll() is None, (tmp_path / f"run-{attempt}.log").read_text()[-2000:]
            received = (scrape(port) or {}).get("plantpulse_readings_received_total", -1.0)
        finally:
            assert _stop(process) == 0
        if attempt == 0:
            assert received == 4000
            assert len(list(recovery.glob("part-*.sqlite3"))) == 3
        else:
            # Resumed at the snapshotted offsets: the readings are not pulled from Kafka again.
            assert received == 0


def test_bad_arguments_and_unreachable_services_exit_with_one_line() -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    for args in (["sim", "--machines", "3", "--count", "5"], ["run"]):
        result = subprocess.run(PLANTPULSE + args, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("plantpulse: ")


def test_sim_record_only_needs_no_kafka_and_keeps_the_first_minutes_healthy(tmp_path: Path) -> None:
    """`--record-only` writes a labelled recording with Kafka unreachable; `--faults-after` delays every
    fault onset (checked on the labels against the recording's own first timestamps)."""
    import pyarrow.parquet as pq

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "DATA_DIR": str(tmp_path)}
    path = tmp_path / "run.parquet"
    args = ["sim", "--machines", "40", "--duration", "900", "--seed", "3", "--faults", "overheating,bearing_wear",
            "--fault-rate", "0.5", "--faults-after", "300", "--record-only", "--record", str(path)]
    done = subprocess.run(PLANTPULSE + args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    readings = pq.read_table(path, columns=["machine_id", "ts"]).to_pandas()
    labels = pq.read_table(path.with_suffix(".labels.parquet")).to_pandas()
    assert len(readings) == 40 * 900 and len(labels) > 0
    first_ts = int(readings["ts"].min())
    assert (labels["start_ts"] >= first_ts + 300_000).all(), labels["start_ts"].min() - first_ts
    assert (labels["start_ts"] < first_ts + 345_000).any(), "the first onsets follow within 45 s"
    bad = subprocess.run(PLANTPULSE + ["sim", "--count", "5", "--record-only"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("plantpulse: --record-only needs --record")
