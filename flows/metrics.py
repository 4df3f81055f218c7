"""Prometheus metrics of the telemetry flow (scraped by Prometheus/Grafana and by the demo's live view), and its
readiness.

The metrics port serves `GET /metrics` (liveness: the process answers) and `GET /ready`: 200 while this process's
Kafka source is consuming, else 503, each with a one-line reason (`connectors.readiness`).
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

from connectors import readiness

READINGS_RECEIVED = Counter("plantpulse_readings_received_total", "Messages pulled from the telemetry topic.")
READINGS_ACCEPTED = Counter("plantpulse_readings_accepted_total", "Valid, non-duplicate, on-time readings.")
DEAD_LETTERS = Counter("plantpulse_dead_letters_total", "Messages sent to the dead-letter topic.", ["reason"])
DUPLICATES = Counter("plantpulse_duplicates_total", "Readings dropped as duplicates of (machine, seq).")
# Fleet-wide (a machine label would make one series per machine); per machine: machine_state.seq_resets.
SEQ_RESETS = Counter(
    "plantpulse_seq_resets_total", "Sequence counters found restarted (reboot, firmware update): new sequence epochs."
)
WINDOWS_EMITTED = Counter("plantpulse_windows_emitted_total", "Closed (machine, window) rows emitted.")
ALERTS_RAISED = Counter("plantpulse_alerts_total", "Alerts raised.", ["severity"])
STALE_MACHINES = Counter("plantpulse_stale_transitions_total", "Machines that turned stale.")
INCIDENT_TRANSITIONS = Counter(
    "plantpulse_incident_transitions_total", "Incident transitions (opened, escalated, ...).", ["transition", "kind"]
)
EVENT_TIME_LAG = Gauge("plantpulse_event_time_lag_seconds", "Wall clock minus the newest event time closed.")
_newest_closed_ms = [0]


def window_closed(window_end_ms: int) -> None:
    """Record a closed window's end for EVENT_TIME_LAG. The newest end of the whole process counts: a window that
    idleness closed late (a silent machine) is old news, not lag, and must not make the gauge jump."""
    _newest_closed_ms[0] = max(_newest_closed_ms[0], window_end_ms)
    EVENT_TIME_LAG.set(time.time() - _newest_closed_ms[0] / 1000.0)

_log = logging.getLogger("plantpulse.metrics")
_started: set[int] = set()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/ready":
            ready, reason = readiness.status()
            self._answer(200 if ready else 503, f"{'ready' if ready else 'not ready'}: {reason}\n".encode())
        else:
            self._answer(404, b"not found: /metrics or /ready\n")

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a probe every few seconds is no news


def serve_metrics(port: int) -> None:
    """Serve /metrics and /ready on `port` once per process; a busy port is logged, not fatal."""
    if port <= 0 or port in _started:
        return
    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    except OSError as error:
        _log.warning("metrics endpoint not started on port %d: %s", port, error)
        return
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    _started.add(port)
    _log.info("metrics on http://0.0.0.0:%d/metrics, readiness on /ready", port)
