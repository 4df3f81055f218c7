"""Prometheus metrics of `plantpulse notify` (served on NOTIFY_METRICS_PORT)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, start_http_server

RECORDS_CONSUMED = Counter("plantpulse_notify_records_total", "Incident transition records consumed.")
DELIVERED = Counter("plantpulse_notify_delivered_total", "Notifications delivered.", ["channel"])
FAILED_ATTEMPTS = Counter("plantpulse_notify_failed_attempts_total", "Delivery attempts that failed.", ["channel"])
DEAD_LETTERED = Counter("plantpulse_notify_dead_lettered_total", "Notifications given up and dead-lettered.", ["channel"])
REMINDERS_CANCELLED = Counter(
    "plantpulse_notify_reminders_cancelled_total", "Queued reminders dropped because the incident was acknowledged "
    "or resolved meanwhile.", ["channel"]
)


def serve(port: int) -> None:
    """Expose the metrics on `port` (0: not at all); a busy port costs the metrics, not the notifier."""
    if port <= 0:
        return
    try:
        start_http_server(port)
    except OSError as error:
        logging.getLogger("plantpulse.notify").warning("notify metrics not served on port %d: %s", port, error)
