"""Sending a simulated stream to Kafka (`produce`) or only to a Parquet recording (`record_only`).

Timing: with `rate` (messages/s of wall time) the stream is retimed so event time tracks the wall clock:
tick 0 is *now* and one tick lasts `1000 * n_machines / rate` ms, paced in real time. Without `rate` the
stream goes as fast as possible and its event time starts at the simulator's `start_ts_ms`, or at
`now - duration` so that it ends about now (the flow's timestamp checks compare with the wall clock).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import length_hint
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, Producer

from connectors.device_registry import KeyRegistry
from connectors.topics import ensure_topics
from plantpulse.device_signing import sign_reading
from plantpulse.settings import Settings
from sim.faults import FaultLabel
from sim.imperfections import DUPLICATE, IMPERFECTION_LABELS, MALFORMED_BASE
from sim.recording import Recorder
from sim.simulator import MessageBatch, Simulator

log = logging.getLogger(__name__)
Progress = Callable[[int, float], None]  # (messages sent so far, wall seconds elapsed)
_PROGRESS_EVERY_S = 1.0
_PACING_SLICE_S = 0.005  # in rate mode messages go out in slices of this much wall time
_FLUSH_TIMEOUT_S = 120.0
_MESSAGE_TIMEOUT_MS = 120_000  # a message not acknowledged by then is reported as failed (and we raise)


class ProduceError(RuntimeError):
    """Messages could not be delivered (or the topic could not be created)."""


@dataclass
class ProduceSummary:
    """What was sent. `readings` counts clean readings (messages minus duplicates and malformed extras)."""

    topic: str | None
    messages: int = 0
    bytes: int = 0
    readings: int = 0
    imperfections: dict[str, int] = field(default_factory=dict)  # e.g. {"duplicate": 12, "malformed:nan": 1}
    fault_events: dict[str, int] = field(default_factory=dict)
    start_ts_ms: int = 0  # event time of the first tick
    end_ts_ms: int = 0  # event time of the last tick sent
    interval_ms: float = 0.0
    wall_seconds: float = 0.0
    messages_per_second: float = 0.0
    record_path: Path | None = None
    labels_path: Path | None = None
    machines_path: Path | None = None
    interrupted: bool = False  # stopped by Ctrl-C (what was sent is flushed and recorded)


def interval_for_rate(n_machines: int, rate: float) -> float:
    """Tick length (ms) at which `n_machines` readings per tick make `rate` messages per wall second."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of messages per second, got {rate}")
    interval = 1000.0 * n_machines / rate
    if interval < 1.0:
        raise ValueError(
            f"rate={rate:g} msg/s with {n_machines} machines needs ticks of {interval:.3f} ms; timestamps are whole "
            f"ms, so at most {1000 * n_machines} msg/s for this fleet: use more machines or a lower rate"
        )
    return interval


def plan(
    simulator: Simulator, rate: float | None, duration_s: float | None, count: int | None, now_ms: int | None = None
) -> tuple[Simulator, int | None]:
    """The retimed simulator and the number of ticks (None: until `count` or forever) for a run."""
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    n = len(simulator.fleet)
    if rate is not None:
        simulator = simulator.retimed(start_ts_ms=now_ms, interval_ms=interval_for_rate(n, rate))
    else:
        if duration_s is None and count is None:
            raise ValueError("as fast as possible needs a duration_s or a count (or give a rate to run until stopped)")
        if simulator.start_ts_ms is None:
            span_ms = duration_s * 1000 if duration_s is not None else math.ceil(count / n) * simulator.interval_ms
            simulator = simulator.retimed(start_ts_ms=now_ms - int(span_ms))
    n_ticks = None if duration_s is None else max(1, math.ceil(duration_s * 1000 / simulator.interval_ms))
    return simulator, n_ticks


def ensure_topic(settings: Settings, timeout_s: float = 30) -> bool:
    """Create PlantPulse's topics if missing, as `plantpulse topics ensure` does (the one topic creator, with the
    partitions, replication and retention of the settings), so that a flow started next finds them.

    Returns True if the telemetry topic was created, False if it existed already (left as it is).
    """
    try:
        created = ensure_topics(settings, timeout_s=timeout_s)
    except (RuntimeError, ConnectionError, TimeoutError) as error:
        raise ProduceError(f"cannot create topics at {settings.kafka_bootstrap_servers}: {error}") from None
    return settings.telemetry_topic in created


def producer_config(settings: Settings) -> dict:
    """Producer properties: shared Kafka settings plus throughput tuning (lz4, 200 ms linger, big batches)."""
    return settings.kafka_config() | {
        "compression.type": "lz4",
        # Few, large record batches: the embedded broker (tansu, memory storage) pays per stored batch on every
        # fetch, and with 20 ms it hit a full core after ~4 minutes at 20,000 readings/s and fell behind
        # (bench/results/soak/taskA-20261126-evidence.md). 200 ms: ten times fewer batches, <= 0.2 s added.
        "linger.ms": 200,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": _MESSAGE_TIMEOUT_MS,
        "partitioner": "murmur2_random",  # same key -> same partition as Java clients; one machine, one partition
        "delivery.report.only.error": True,  # successes cost nothing; failures still reach on_delivery
    }


def produce(
    settings: Settings,
    simulator: Simulator,
    rate: float | None = None,
    duration_s: float | None = None,
    count: int | None = None,
    record_path: Path | None = None,
    progress: Progress | None = None,
    create_missing_keys: bool = False,
) -> ProduceSummary:
    """Send the simulator's stream to `settings.telemetry_topic`, keyed by machine id.

    With DEVICE_AUTH=required (the default) every message is signed with its machine's device key from
    DEVICE_KEYS_FILE, as a device would (`plantpulse.device_signing`); machines without an active key are an
    error, unless `create_missing_keys` adds keys for them to the registry. A malformed message that is no JSON
    object cannot be signed in that format and is sent as it is.

    Stops after `duration_s` of event time, after `count` messages, or (rate mode, neither given) at Ctrl-C.
    Creates the topic if missing. Raises `ProduceError` if any message fails delivery. With `record_path`
    the same messages are also written to a Parquet recording (see `sim.recording`).
    """
    topic = settings.telemetry_topic
    ensure_topic(settings)
    # Planned after the topic exists: in rate mode tick 0 is "now", which must not slip while we wait.
    simulator, n_ticks = plan(simulator, rate, duration_s, count)
    failures: list[str] = []
    failed = 0

    def on_delivery(error: KafkaError | None, message) -> None:
        nonlocal failed
        if error is not None:
            failed += 1
            if len(failures) < 5:
                failures.append(f"{message.key()!r}: {error.str()}")

    def on_error(error: KafkaError) -> None:
        if error.fatal():
            failures.append(f"fatal client error: {error.str()}")
        log.warning("kafka client error: %s", error.str())

    signers = device_signers(settings, simulator, create_missing_keys)
    producer = Producer(producer_config(settings) | {"on_delivery": on_delivery, "error_cb": on_error})
    produce_to_topic, poll = partial(producer.produce, topic), producer.poll

    def send_signed(values: list[bytes], keys: list[bytes]) -> None:
        i = 0
        while i < len(values):
            value, key = values[i], keys[i]
            key_id, secret = signers[key]
            # A malformed frame that is no JSON object (`not_json`, `truncated` imperfections) cannot carry the
            # signature members: it goes out unsigned, and a verifying flow dead-letters it as `unsigned`.
            signed = sign_reading(key_id, secret, value) if value.endswith(b"}") else value
            try:
                produce_to_topic(signed, key)
                i += 1
            except BufferError:
                poll(0.05)  # local queue full: retry this message once delivery reports have made room

    def send(batch: MessageBatch) -> None:
        values, keys, start = batch.values, batch.keys, 0
        if signers is not None:
            send_signed(values, keys)
            start = len(values)
        while start < len(values):
            pending_values = iter(values if start == 0 else values[start:])
            pending_keys = iter(keys if start == 0 else keys[start:])
            try:
                # map() runs the produce calls from C: no Python bytecode per message.
                deque(map(produce_to_topic, pending_values, pending_keys), maxlen=0)
                break
            except BufferError:
                # Local queue full. The failed message was taken from the iterator but not queued:
                # resume from it once delivery reports have made room.
                start = len(values) - length_hint(pending_values) - 1
                poll(0.05)
        poll(0)
        if failures:
            raise ProduceError(f"delivery to topic {topic!r} failed for {failed} message(s), e.g. {failures[0]}")

    def finish() -> None:
        remaining = producer.flush(_FLUSH_TIMEOUT_S)
        if remaining:
            raise ProduceError(
                f"{remaining} message(s) to topic {topic!r} still undelivered after {_FLUSH_TIMEOUT_S:g} s"
            )
        if failures:
            raise ProduceError(f"delivery to topic {topic!r} failed for {failed} message(s), e.g. {failures[0]}")

    try:
        return _drive(simulator, n_ticks, count, rate, send, finish, record_path, progress, topic)
    except BaseException:
        producer.purge()  # we are failing anyway: do not let close() wait for the rest of the queue
        raise
    finally:
        close = getattr(producer, "close", None)  # recent confluent-kafka; older ones close when collected
        if close is not None:
            close()


def device_signers(
    settings: Settings, simulator: Simulator, create_missing: bool
) -> dict[bytes, tuple[bytes, bytes]] | None:
    """Each simulated machine's (key id, secret) for signing, by Kafka key; None when DEVICE_AUTH=off."""
    if settings.device_auth != "required":
        return None
    path = Path(settings.device_keys_file or "device-keys.json")
    try:
        registry = KeyRegistry.load(path)
    except ValueError as error:
        raise ProduceError(str(error)) from None
    machine_ids = list(simulator.machine_ids)
    missing = [m for m in machine_ids if registry.signing_key(m) is None]
    if missing and not create_missing:
        raise ProduceError(
            f"{len(missing)} of {len(machine_ids)} simulated machines have no active device key in {path} "
            f"(e.g. {missing[0]}): create them with `plantpulse keys create`, run `plantpulse sim --create-keys`, "
            "or set DEVICE_AUTH=off"
        )
    if missing:
        registry.ensure(missing)
        registry.save(path)
        log.info("created device keys for %d simulated machines in %s", len(missing), path)
    signers = {}
    for machine_id in machine_ids:
        key = registry.signing_key(machine_id)
        if key is not None:
            signers[machine_id.encode()] = (key.key_id.encode(), key.secret)
    return signers


def record_only(
    simulator: Simulator,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    path: Path,
    progress: Progress | None = None,
) -> ProduceSummary:
    """Write the stream to a Parquet recording as fast as possible, without Kafka."""
    simulator, n_ticks = plan(simulator, None, duration_s, count)
    return _drive(simulator, n_ticks, count, None, None, None, Path(path), progress, None)


def _drive(
    simulator: Simulator,
    n_ticks: int | None,
    count: int | None,
    rate: float | None,
    send: Callable[[MessageBatch], None] | None,
    finish: Callable[[], None] | None,
    record_path: Path | None,
    progress: Progress | None,
    topic: str | None,
) -> ProduceSummary:
    """The loop shared by `produce` and `record_only`: generate, pace, send, record, summarise."""
    run = simulator.run(n_ticks)
    recorder = Recorder(record_path, simulator.fleet, simulator.skew_ms) if record_path else None
    summary = ProduceSummary(topic=topic, start_ts_ms=simulator.start_ts_ms, interval_ms=simulator.interval_ms)
    by_imperfection = np.zeros(len(IMPERFECTION_LABELS), dtype=np.int64)
    last_tick = -1
    started = last_report = time.monotonic()
    try:
        try:
            for batch in run:
                if count is not None and summary.messages + len(batch) > count:
                    batch = batch.head(count - summary.messages)
                if send is not None:
                    if rate is None:
                        send(batch)
                    else:
                        _paced_send(batch, send, started, simulator.interval_ms / 1000.0, rate)
                if recorder is not None:
                    recorder.write(batch)
                summary.messages += len(batch)
                summary.bytes += sum(map(len, batch.values))
                by_imperfection += np.bincount(batch.imperfection, minlength=len(by_imperfection))
                last_tick = max(last_tick, int(batch.tick.max()))
                now = time.monotonic()
                if progress is not None and now - last_report >= _PROGRESS_EVERY_S:
                    progress(summary.messages, now - started)
                    last_report = now
                if count is not None and summary.messages >= count:
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
        if finish is not None:
            finish()
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    labels = run.labels(until_tick=last_tick)
    if recorder is not None:
        summary.record_path, summary.labels_path, summary.machines_path = recorder.close(labels)
    summary.wall_seconds = time.monotonic() - started
    summary.messages_per_second = summary.messages / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    summary.imperfections = {IMPERFECTION_LABELS[i]: int(c) for i, c in enumerate(by_imperfection) if i and c}
    extras = by_imperfection[DUPLICATE] + by_imperfection[MALFORMED_BASE:].sum()
    summary.readings = int(summary.messages - extras)
    summary.fault_events = _count_faults(labels)
    summary.end_ts_ms = int(run.tick_ts(max(last_tick, 0)))
    if progress is not None:
        progress(summary.messages, summary.wall_seconds)
    return summary


def _paced_send(
    batch: MessageBatch, send: Callable[[MessageBatch], None], started: float, tick_s: float, rate: float
) -> None:
    """Send `batch` in real time: tick k's messages spread evenly over wall seconds [k, k+1) x tick_s."""
    release = batch.release_tick
    n = len(release)
    starts = np.flatnonzero(np.r_[True, release[1:] != release[:-1]])
    sizes = np.diff(np.r_[starts, n])
    within = (np.arange(n) - np.repeat(starts, sizes)) / np.repeat(sizes, sizes)
    due = started + (release + within) * tick_s
    step = max(1, int(rate * _PACING_SLICE_S))
    for i in range(0, n, step):
        wait = due[i] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        send(batch.slice(i, i + step))


def _count_faults(labels: list[FaultLabel]) -> dict[str, int]:
    return dict(Counter(label.fault for label in labels))

