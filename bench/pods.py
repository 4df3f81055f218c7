"""The flow's StatefulSet pods on loopback: `plantpulse run` processes with a pod's environment, and their
Prometheus samples. Used by the live-scaling benchmark (`bench.live_scaling`) and the tests that run clusters
(`tests/test_rescaling.py`, `tests/processes.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.soak import _cpu_seconds, _tree
from connectors.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
STATEFULSET = "plantpulse-flow"


def scrape(port: int) -> dict[str, float] | None:
    """A process's Prometheus samples by exposition name (labels included), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return None
    samples = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def total(samples: list[dict[str, float] | None], name: str) -> float:
    """`name` (every label set of it) summed over the processes' samples."""
    return sum(value for s in samples if s for key, value in s.items() if key == name or key.startswith(name + "{"))


class Pods:
    """`plantpulse run` processes as the StatefulSet's pods at `replicas`, each in its own process group."""

    def __init__(self, env: dict[str, str], work: Path, replicas: int, log_prefix: str = "") -> None:
        ports = [free_port() for _ in range(replicas)]
        self.metrics = [free_port() for _ in range(replicas)]
        self.logs = [work / f"{log_prefix}pod-{i}.log" for i in range(replicas)]
        self.processes: list[subprocess.Popen] = []
        try:
            self._start(env, work, replicas, ports)
        except BaseException:
            self.stop(5)
            raise

    def _start(self, env: dict[str, str], work: Path, replicas: int, ports: list[int]) -> None:
        for i in range(replicas):
            pod_env = {
                **env,
                "BYTEWAX_POD_NAME": f"{STATEFULSET}-{i}",
                "BYTEWAX_STATEFULSET_NAME": STATEFULSET,
                "BYTEWAX_SERVICE_NAME": STATEFULSET,
                "BYTEWAX_REPLICAS": str(replicas),
                # Kubernetes resolves plantpulse-flow-<i>.plantpulse-flow:2101; on loopback each pod has a port.
                "BYTEWAX_ADDRESSES": ";".join(f"127.0.0.1:{port}" for port in ports),
                "RECOVERY_DIR": str(work / f"pod-{i}" / "recovery"),  # the pod's volume
                "METRICS_PORT": str(self.metrics[i]),
            }
            with self.logs[i].open("wb") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "plantpulse.cli", "run"], env=pod_env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT))

    def scrape(self) -> list[dict[str, float] | None]:
        return [scrape(port) for port in self.metrics]

    def received(self) -> float:
        """Readings the pods have received, summed."""
        return total(self.scrape(), "plantpulse_readings_received_total")

    def check_running(self) -> None:
        for i, (process, log) in enumerate(zip(self.processes, self.logs)):
            if process.poll() is not None:
                raise RuntimeError(f"pod {i} exited with {process.returncode}: {log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for process in self.processes for pid in _tree(process.pid))

    def stop(self, grace_s: float) -> list[int]:
        """As `kubectl scale --replicas=0`: SIGTERM to every pod (each drains and snapshots), SIGKILL after
        `grace_s`. Safe to call more than once; returns the exit codes."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                codes.append(process.wait())
        return codes
