"""`GET /ready` of the flow: 503 before its Kafka source has partitions, 200 while it consumes, 503 when the broker
is gone. Real `plantpulse run` processes (a 2-process cluster on loopback) on a broker of this test's own, which the
test stops."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker, free_port
from sim import Simulator, build_fleet, produce
from tests.brokerkit import isolated_settings
from tests.processes import PLANTPULSE, flow_env, scrape

pytestmark = pytest.mark.integration


def ready(port: int) -> tuple[int, str] | None:
    """(status, body) of GET /ready, None while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return None


def wait_for(what: str, check: Callable[[], bool], processes: list[subprocess.Popen], logs: list[Path],
             timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for process, log in zip(processes, logs):
            assert process.poll() is None, f"a flow process exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_ready_means_consuming(tmp_path: Path) -> None:
    with EmbeddedBroker(log_dir=tmp_path / "broker") as broker:
        settings = isolated_settings(broker.bootstrap, tmp_path, label="ready", create_topics=True, partitions=2)
        produce(settings, Simulator(build_fleet(20, seed=3), seed=3), count=2_000)
        cluster = [free_port(), free_port()]
        metrics = [free_port(), free_port()]
        addresses = ";".join(f"127.0.0.1:{p}" for p in cluster)
        env = flow_env(settings, tmp_path, MACHINES_FILE=str(tmp_path / "machines.csv"),
                       READY_MAX_POLL_AGE_SECONDS="3", BYTEWAX_STATEFULSET_NAME="plantpulse-flow",
                       BYTEWAX_SERVICE_NAME="unused", BYTEWAX_REPLICAS="2", BYTEWAX_ADDRESSES=addresses)
        processes: list[subprocess.Popen] = []
        logs = [tmp_path / f"flow-{i}.log" for i in range(2)]

        def start(i: int) -> None:
            processes.append(subprocess.Popen(
                PLANTPULSE + ["run"],
                env={**env, "BYTEWAX_POD_NAME": f"plantpulse-flow-{i}", "METRICS_PORT": str(metrics[i])},
                stdout=logs[i].open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            ))

        try:
            # Process 0 alone: its metrics answer, but the cluster waits for process 1, so no partition is
            # assigned yet (liveness yes, readiness no).
            start(0)
            wait_for("process 0's metrics", lambda: scrape(metrics[0]) is not None, processes, logs)
            for _ in range(3):
                assert ready(metrics[0]) == (503, "not ready: Kafka source not started: partitions not assigned yet\n")
                time.sleep(0.5)

            start(1)
            wait_for("both processes ready", lambda: all((ready(m) or (0, ""))[0] == 200 for m in metrics),
                     processes, logs)
            for port in metrics:
                status, body = ready(port) or (0, "")
                assert status == 200 and body.startswith("ready: consuming "), body
            wait_for("every reading received",
                     lambda: sum((scrape(m) or {}).get("plantpulse_readings_received_total", 0) for m in metrics) == 2_000,
                     processes, logs)
            # Still ready while idle at the end of the topic (longer than READY_MAX_POLL_AGE_SECONDS): polls go on.
            time.sleep(4)
            assert [(ready(m) or (0, ""))[0] for m in metrics] == [200, 200]

            broker.stop()
            wait_for("not ready without the broker", lambda: all((ready(m) or (0, ""))[0] == 503 for m in metrics),
                     processes, logs, timeout_s=30)
            for port in metrics:
                status, body = ready(port) or (0, "")
                assert body.startswith(f"not ready: Kafka unreachable at {settings.kafka_bootstrap_servers}"), body
                assert len(body.splitlines()) == 1
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)  # the broker is gone: nothing left to drain to
                    process.wait()
