"""Is this process's Kafka source consuming? The answer behind the flow's `GET /ready` (flows.metrics).

`TelemetrySource` reports here when Bytewax lists its partitions (the flow started), when one of its partitions
is assigned to a worker of this process, after every poll of it, and when it closes. Ready means: the flow
started, the broker answers (a metadata request, at most every `_PROBE_EVERY_S`), no stop was requested, and every
partition assigned here completed a poll within READY_MAX_POLL_AGE_SECONDS (a worker blocked, e.g. held back by
a slow sink, stops polling). A process that Bytewax gave no partition is ready once the flow started and the
broker answers. Process-global, like the metrics registry: one flow per process.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from plantpulse.settings import Settings
from plantpulse.stopping import stop_requested

__all__ = ["partition_assigned", "partition_closed", "partition_polled", "reset", "source_listed", "status"]

_PROBE_EVERY_S = 2.0
_PROBE_TIMEOUT_S = 2.0

_lock = threading.Lock()
_settings: list[Settings] = []  # the first source's settings (connection, READY_MAX_POLL_AGE_SECONDS)
_listed: set[str] = set()
# (topic, partition) -> monotonic time of its last completed poll; None: assigned, not polled yet.
_polled: dict[tuple[str, int], float | None] = {}
_admin: list[AdminClient] = []
_probe: list[tuple[float, str | None]] = []  # (monotonic time, error or None) of the last broker probe


def source_listed(settings: Settings, topic: str) -> None:
    """Bytewax listed `topic`'s partitions: the flow is being built on this process's workers."""
    with _lock:
        if not _settings:
            _settings.append(settings)
        _listed.add(topic)


def partition_assigned(topic: str, partition: int) -> None:
    _polled[(topic, partition)] = None


def partition_polled(topic: str, partition: int) -> None:
    """A poll of the partition returned (with or without messages). Hot path: one dict store."""
    _polled[(topic, partition)] = time.monotonic()


def partition_closed(topic: str, partition: int) -> None:
    _polled.pop((topic, partition), None)


def reset() -> None:
    """Forget everything (tests that run several flows in one process)."""
    with _lock:
        _settings.clear()
        _listed.clear()
        _polled.clear()
        _admin.clear()
        _probe.clear()


def status(now: float | None = None) -> tuple[bool, str]:
    """(ready, one-line reason)."""
    now = time.monotonic() if now is None else now
    if stop_requested():
        return False, "stopping: the flow is draining after SIGTERM/SIGINT"
    with _lock:
        if not _settings:
            return False, "Kafka source not started: partitions not assigned yet"
        settings = _settings[0]
        error = _broker_error(settings, now)
    if error is not None:
        return False, error
    max_age = settings.ready_max_poll_age_seconds
    polled = dict(_polled)
    stale = sorted(f"{topic}[{partition}]" for (topic, partition), at in polled.items()
                   if at is None or now - at > max_age)
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        return False, f"Kafka partition(s) {shown} not polled within READY_MAX_POLL_AGE_SECONDS={max_age:g}"
    return True, f"consuming {len(polled)} Kafka partition(s) of {', '.join(sorted(_listed))}"


def _broker_error(settings: Settings, now: float) -> str | None:
    """The broker's answer to a metadata request, asked at most every `_PROBE_EVERY_S` (caller holds the lock)."""
    if _probe and now - _probe[0][0] < _PROBE_EVERY_S:
        return _probe[0][1]
    if not _admin:
        _admin.append(AdminClient({**settings.kafka_config()}))
    try:
        _admin[0].list_topics(timeout=_PROBE_TIMEOUT_S)  # all topics: naming one could auto-create it
        error = None
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        error = f"Kafka unreachable at {settings.kafka_bootstrap_servers}: {detail}"
    _probe[:] = [(time.monotonic(), error)]
    return error
