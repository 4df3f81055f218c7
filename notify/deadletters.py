"""Dead letters of `plantpulse notify`: a JSON record per notification that could not be delivered (with the
last error) or per incidents record that could not be read, on `NOTIFY_DEADLETTER_TOPIC`, keyed by machine.

At-least-once: a dead letter is produced (and acknowledged) before the ledger records it, so a crash in
between produces it again on restart. Consumers deduplicate by (`delivery_key`, `channel`), or by
(`source_partition`, `source_offset`) for unreadable records.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.kafka_errors import PERMANENT, classify_error
from connectors.retry import Backoff, one_line
from plantpulse.settings import Settings
from plantpulse.stopping import stop_requested

logger = logging.getLogger("plantpulse.notify")
_ACK_TIMEOUT_S = 30.0


class DeadLetters:
    """Produces dead letters, one at a time and acknowledged (acks=all) before `send` returns."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.notify_deadletter_topic
        self._source_topic = settings.incidents_topic
        self._settings = settings
        self._producer = Producer({
            **settings.kafka_config(), "acks": "all", "enable.idempotence": True, "linger.ms": 0,
            "message.timeout.ms": int(_ACK_TIMEOUT_S * 1000),
        })

    def send(self, letter: dict[str, Any], key: str | None, stop: threading.Event) -> bool:
        """Produce `letter` until the broker acknowledges it; False if `stop` was set (or a SIGTERM/SIGINT came)
        first: it is then sent again after the restart. A letter the topic refuses for good is logged in full
        and counts as sent: the ledger still keeps the delivery's last error."""
        value = orjson.dumps({**letter, "source_topic": self._source_topic, "dead_lettered_at": int(time.time() * 1000)})
        backoff = Backoff(self._settings.notify_backoff_initial_seconds,
                          max(self._settings.notify_backoff_initial_seconds, self._settings.notify_backoff_max_seconds),
                          label="notify_deadletters")
        while not (stop.is_set() or stop_requested()):
            error = self._produce_once(value, key)
            if error is None:
                return True
            if isinstance(error, KafkaError) and classify_error(error) == PERMANENT:
                logger.error("dead-letter topic %r refused a record for good (%s); the record: %s", self.topic,
                             error.str(), value.decode())
                return True
            delay = backoff.next_delay()
            logger.warning("dead letter to topic %r not acknowledged (attempt %d), retrying in %.2fs: %s", self.topic,
                           backoff.failures, delay, error.str() if isinstance(error, KafkaError) else error)
            # In slices: a signal (stop_requested) must not wait for a long backoff to end.
            until = time.monotonic() + delay
            while not (stop.is_set() or stop_requested()) and time.monotonic() < until:
                stop.wait(min(0.25, until - time.monotonic()))
        return False

    def _produce_once(self, value: bytes, key: str | None) -> KafkaError | str | None:
        reports: list[KafkaError | None] = []
        try:
            self._producer.produce(self.topic, value, key, on_delivery=lambda error, _msg: reports.append(error))
        except KafkaException as exc:
            return exc.args[0] if exc.args else one_line(exc)
        except BufferError as exc:  # the local queue is full: wait for it like for any other failure
            return one_line(exc)
        # flush() rather than poll(): other threads' letters may be in flight; either way each callback runs.
        deadline = time.monotonic() + _ACK_TIMEOUT_S + 5
        while not reports and time.monotonic() < deadline:
            self._producer.flush(0.5)
        if not reports:
            return "no delivery report"
        return reports[0]

    def close(self) -> None:
        self._producer.flush(5.0)
