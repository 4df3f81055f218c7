"""The notifier: consumes the incidents topic, routes each transition, hands deliveries to the channel workers,
sends reminders for open unacknowledged incidents, saves offsets, and stops cleanly on SIGTERM/SIGINT.

Consumption is at-least-once (no consumer group: `assign` over every partition, from the ledger's offsets or
the beginning); the ledger's (key, channel) rows make each delivery happen once per channel (see `ledger`).
Reminders are sent only while the consumer is caught up (every partition at its end), so a notifier catching
up on a backlog does not remind of incidents that a later record acknowledges.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.topics import ensure_topics, partition_ids, topic_configs
from notify import metrics
from notify.channels import Sender, build_senders
from notify.deadletters import DeadLetters
from notify.ledger import Ledger
from notify.messages import Notification, reminder_key
from notify.offsets import OffsetTracker
from notify.routing import Routing, load_routing
from notify.worker import ChannelWorker, Delivery, RetryPolicy, TokenBucket
from plantpulse.schema import INCIDENT_ARROW_SCHEMA, INCIDENT_TRANSITIONS
from plantpulse.settings import Settings
from plantpulse.stopping import stop_requested

logger = logging.getLogger("plantpulse.notify")

_MAX_UNFINISHED_RECORDS = 1000  # consumption pauses beyond this (a slow channel must not fill memory)
_SAVE_EVERY_S = 0.5  # offsets are saved this often (and at the stop); a crash re-reads at most this much more
_REMIND_EVERY_S = 0.25  # how often reminders are looked for
# Dead letters are looked at by people, later: kept like the alerts topic (and so is the incidents topic if
# `topic_configs` has no entry for it).


class InvalidRecordError(ValueError):
    """An incidents record that is not a transition as `INCIDENT_ARROW_SCHEMA` describes it."""


def parse_record(value: bytes | None) -> dict[str, Any]:
    """A JSON transition record, checked against `INCIDENT_ARROW_SCHEMA` (timestamps as epoch ms)."""
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError as error:
        raise InvalidRecordError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise InvalidRecordError(f"not a JSON object but {type(record).__name__}")
    for field in INCIDENT_ARROW_SCHEMA:
        value = record.get(field.name)
        if value is None:
            if not field.nullable:
                raise InvalidRecordError(f"field {field.name!r} is missing or null")
            continue
        kind = field.type
        if pa.types.is_string(kind):
            ok = isinstance(value, str)
        elif pa.types.is_timestamp(kind) or pa.types.is_integer(kind):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # floating point
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise InvalidRecordError(f"field {field.name!r} is {value!r}, not of type {kind}")
    if record["transition"] not in INCIDENT_TRANSITIONS:
        raise InvalidRecordError(f"field 'transition' is {record['transition']!r}, expected one of {INCIDENT_TRANSITIONS}")
    return record


def ledger_path(settings: Settings) -> Path:
    return settings.notify_ledger_path or settings.data_dir.resolve() / "notify" / "ledger.sqlite"


class Notifier:
    def __init__(self, settings: Settings, routing: Routing, senders: dict[str, Sender]) -> None:
        self.settings = settings
        self.routing = routing
        self.senders = senders
        self._stop = threading.Event()
        self._open: dict[str, dict[str, Any]] = {}  # incident_id -> latest record, while its status is open
        self._versions: dict[str, int] = {}  # incident_id -> newest version seen
        self._reminded: dict[str, dict[str, int]] = {}  # incident_id -> channel -> last reminder number queued

    @classmethod
    def from_settings(cls, settings: Settings, routes_file: Path | None = None) -> Notifier:
        """Load the routing file and set up its channels from the environment.

        :raises RoutingFileError, ChannelConfigError: (both ValueError) naming file, route/channel and field.
        """
        routing = load_routing(routes_file or settings.notify_routes_file)
        return cls(settings, routing, build_senders(routing, settings))

    def run(self, until_idle_s: float | None = None) -> None:
        """Deliver until SIGTERM/SIGINT (`plantpulse.stopping`) or, with `until_idle_s`, until the topic is
        consumed, every delivery finished and nothing happened for that long."""
        settings, topic = self.settings, self.settings.incidents_topic
        configs = topic_configs(settings)  # the configs `plantpulse topics ensure` gives them
        ensure_topics(settings, only={name: configs[name] for name in (topic, settings.notify_deadletter_topic)})
        partitions = partition_ids(settings, topic)
        ledger = Ledger(ledger_path(settings))
        dead_letters: DeadLetters | None = None
        consumer: Consumer | None = None
        workers: dict[str, ChannelWorker] = {}
        try:
            dead_letters = DeadLetters(settings)
            saved = ledger.offsets(topic)
            tracker = OffsetTracker({p: saved.get(p, 0) for p in partitions})
            self._open = ledger.open_incidents()
            self._versions = ledger.incident_versions()
            workers = self._start_workers(ledger, dead_letters, tracker)
            consumer = Consumer({
                **settings.kafka_config(),
                "group.id": "plantpulse-notify",  # required by librdkafka, never joined (assign)
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
            })
            consumer.assign([TopicPartition(topic, p, saved.get(p, 0)) for p in partitions])
            metrics.serve(settings.notify_metrics_port)
            logger.info("notify: %s (%d partitions) from offsets %s; channels %s; ledger %s", topic, len(partitions),
                        tracker.committable(), sorted(workers), ledger.path)
            try:
                self._loop(consumer, ledger, dead_letters, tracker, workers, set(partitions), until_idle_s)
            except KeyboardInterrupt:  # a second SIGTERM/SIGINT: no waiting for sends in progress
                logger.warning("notify: stopped at once; unfinished deliveries are made after the next start")
            else:
                self._shutdown(workers)
            ledger.save_offsets(topic, tracker.committable())
        finally:
            self._stop.set()  # also on an error: workers must not outlive the ledger
            if consumer is not None:
                consumer.close()
            if dead_letters is not None:
                dead_letters.close()
            ledger.close()

    def _start_workers(self, ledger: Ledger, dead_letters: DeadLetters, tracker: OffsetTracker) -> dict[str, ChannelWorker]:
        s = self.settings
        policy = RetryPolicy(s.notify_max_attempts, s.notify_backoff_initial_seconds, s.notify_backoff_max_seconds)

        def finished(delivery: Delivery) -> None:
            if delivery.partition is not None and delivery.offset is not None:
                tracker.finished(delivery.partition, delivery.offset)

        workers = {}
        for name, sender in self.senders.items():
            spec = self.routing.channels[name]
            bucket = TokenBucket(spec.rate_per_minute, spec.burst) if spec.rate_per_minute is not None else None
            workers[name] = ChannelWorker(sender, bucket, ledger, dead_letters, policy, finished,
                                          lambda incident_id: incident_id in self._open, self._stop)
            workers[name].start()
        return workers

    def _loop(self, consumer: Consumer, ledger: Ledger, dead_letters: DeadLetters, tracker: OffsetTracker,
              workers: dict[str, ChannelWorker], partitions: set[int], until_idle_s: float | None) -> None:
        topic = self.settings.incidents_topic
        at_end: set[int] = set()
        saved = tracker.committable()
        next_save = next_remind = 0.0
        idle_since: float | None = None
        while not stop_requested():
            for name, worker in workers.items():
                if worker.crashed is not None:
                    raise RuntimeError(f"notify: channel {name!r} worker failed: {worker.crashed}") from worker.crashed
            if tracker.unfinished_records() >= _MAX_UNFINISHED_RECORDS:
                time.sleep(0.05)
                messages: list[Message] = []
            else:
                messages = consumer.consume(500, 0.1)
            if messages:
                self._consume(messages, ledger, dead_letters, tracker, workers, at_end)
            now = time.monotonic()
            if now >= next_save:
                next_save = now + _SAVE_EVERY_S
                offsets = tracker.committable()
                if offsets != saved:
                    ledger.save_offsets(topic, offsets)
                    saved = offsets
            if at_end == partitions and now >= next_remind:
                next_remind = now + _REMIND_EVERY_S
                self._queue_reminders(ledger, workers)
            idle = (at_end == partitions and not messages and tracker.unfinished_records() == 0
                    and all(w.queue.empty() and not w.busy for w in workers.values()))
            idle_since = (idle_since or now) if idle else None
            if until_idle_s is not None and idle_since is not None and now - idle_since >= until_idle_s:
                logger.info("notify: idle for %.1f s, stopping (--until-idle)", until_idle_s)
                return
        logger.info("notify: stopping on request")

    def _consume(self, messages: list[Message], ledger: Ledger, dead_letters: DeadLetters, tracker: OffsetTracker,
                 workers: dict[str, ChannelWorker], at_end: set[int]) -> None:
        parsed: list[tuple[Message, dict[str, Any] | InvalidRecordError]] = []
        for message in messages:
            error = message.error()
            partition = cast(int, message.partition())
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                elif error.fatal():
                    raise RuntimeError(f"notify: Kafka consumer failed: {error.name()}: {error.str()}")
                else:  # connection trouble: librdkafka retries by itself
                    logger.warning("notify: Kafka consumer: %s: %s", error.name(), error.str())
                continue
            at_end.discard(partition)
            metrics.RECORDS_CONSUMED.inc()
            try:
                parsed.append((message, parse_record(message.value())))
            except InvalidRecordError as invalid:
                parsed.append((message, invalid))
        ledger.save_incidents(record for _, record in parsed if isinstance(record, dict))
        # In offset order per partition: the tracker's "next offset" must only move forward.
        for message, record in parsed:
            partition, offset = cast(int, message.partition()), cast(int, message.offset())
            if isinstance(record, InvalidRecordError):
                sent = self._dead_letter_invalid(message, str(record), dead_letters)
                tracker.consumed(partition, offset, 0 if sent else 1)  # unsent (stopping): read again next time
                continue
            self._track(record)
            key = record["event_id"]
            todo = [c for c in self.routing.channels_for(record) if not ledger.is_done(key, c)]
            tracker.consumed(partition, offset, len(todo))  # before queueing: a worker may finish at once
            for channel in todo:
                workers[channel].queue.put(Delivery(Notification(key, record), channel, partition, offset))

    def _track(self, record: dict[str, Any]) -> None:
        """Keep the newest state of each incident; reminders stop once it is no longer open."""
        incident_id, version = record["incident_id"], int(record["version"])
        if version < self._versions.get(incident_id, 0):
            return  # an older transition consumed late (a duplicate on the topic)
        self._versions[incident_id] = version
        if record["status"] == "open":
            self._open[incident_id] = record
        else:
            self._open.pop(incident_id, None)
            self._reminded.pop(incident_id, None)

    def _queue_reminders(self, ledger: Ledger, workers: dict[str, ChannelWorker]) -> None:
        """Queue reminder N once N intervals have passed since the incident opened (skipping numbers that
        fell due while the notifier was down: a reminder says "still open", once is enough)."""
        now_ms = time.time() * 1000
        for incident_id, record in list(self._open.items()):
            for channel, interval_s in self.routing.reminders_for(record).items():
                number = int((now_ms - record["opened_at"]) // (interval_s * 1000))
                reminded = self._reminded.setdefault(incident_id, {})
                if number < 1 or reminded.get(channel, 0) >= number:
                    continue
                reminded[channel] = number
                key = reminder_key(incident_id, number)
                if not ledger.is_done(key, channel):
                    workers[channel].queue.put(Delivery(Notification(key, record, number), channel))

    def _dead_letter_invalid(self, message: Message, reason: str, dead_letters: DeadLetters) -> bool:
        raw = (message.value() or b"")[:65536].decode("utf-8", "replace")
        logger.error("notify: record at partition %s offset %s is not a valid transition (%s); dead-lettered",
                     message.partition(), message.offset(), reason)
        letter = {"reason": "invalid_record", "error": reason, "source_partition": message.partition(),
                  "source_offset": message.offset(), "value": raw}
        key = message.key()
        # Synchronous, and retried until the broker takes it: the offset must not pass an unrecorded record.
        return dead_letters.send(letter, key.decode("utf-8", "replace") if key else None, self._stop)

    def _shutdown(self, workers: dict[str, ChannelWorker]) -> None:
        """Stop the workers: a send in progress completes (or times out); queued deliveries stay unfinished
        and are sent after the restart."""
        self._stop.set()
        grace = max(self.settings.notify_http_timeout_seconds, 3 * self.settings.smtp_timeout_seconds) + 5
        deadline = time.monotonic() + grace
        for name, worker in workers.items():
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                logger.warning("notify: channel %r did not stop within %.0f s; a send may be repeated after the "
                               "restart", name, grace)
