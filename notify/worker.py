"""One worker thread per channel: its queue, its rate limit, retries with backoff, and dead letters.

A channel that fails holds back only its own queue, for at most NOTIFY_MAX_ATTEMPTS attempts per
notification; other channels go on. Deliveries of one channel leave in the order they were queued (an
incident's "opened" before its "resolved").
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from connectors.retry import Backoff, one_line
from notify import metrics
from notify.channels import DeliveryError, Sender
from notify.deadletters import DeadLetters
from notify.ledger import DEAD_LETTERED, DELIVERED, Ledger
from notify.messages import Notification

logger = logging.getLogger("plantpulse.notify")


class TokenBucket:
    """At most `burst` sends back to back, and `rate_per_minute` on average: in any interval of T seconds,
    at most burst + rate * T sends. A send that finds no token waits for one (never dropped)."""

    def __init__(self, rate_per_minute: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError(f"TokenBucket: need rate_per_minute > 0 and burst >= 1, got {rate_per_minute!r}, {burst!r}")
        self.rate_per_s = rate_per_minute / 60.0
        self.capacity = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._updated = clock()

    def take(self) -> float:
        """Take a token and return 0, or return how long to wait until one is there (taking nothing)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a token; False if `stop` was set first."""
        while (wait := self.take()) > 0:
            if stop.wait(wait):
                return False
        return not stop.is_set()


@dataclass(frozen=True)
class Delivery:
    notification: Notification
    channel: str
    partition: int | None = None  # where the record came from; None for reminders
    offset: int | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    maximum_s: float

    def backoff(self) -> Backoff:
        return Backoff(self.initial_s, max(self.initial_s, self.maximum_s), label="notify")


class ChannelWorker(threading.Thread):
    """Delivers its channel's queue; calls `on_finished(delivery)` once a delivery is delivered or
    dead-lettered (and recorded in the ledger), never for one abandoned by a stop."""

    def __init__(
        self,
        sender: Sender,
        bucket: TokenBucket | None,
        ledger: Ledger,
        dead_letters: DeadLetters,
        policy: RetryPolicy,
        on_finished: Callable[[Delivery], None],
        still_open: Callable[[str], bool],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"notify-{sender.name}", daemon=True)
        self.sender = sender
        self.queue: queue.Queue[Delivery] = queue.Queue()
        self.busy = False  # a delivery is being worked on (for "idle" checks)
        self._bucket = bucket
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._policy = policy
        self._on_finished = on_finished
        self._still_open = still_open
        self._stopping = stop
        self.crashed: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    delivery = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.busy = True
                try:
                    self._deliver(delivery)
                finally:
                    self.busy = False
        except BaseException as error:  # e.g. the ledger's disk failed: the service loop stops on it
            self.crashed = error
            logger.exception("channel %r: worker stopped by an unexpected error", self.sender.name)

    def _deliver(self, delivery: Delivery) -> None:
        n, channel = delivery.notification, self.sender.name
        # Checked here, not only when queued: the same event can be queued twice (a duplicate record on the
        # topic); this one thread per channel finishes the first before it looks at the second.
        if self._ledger.is_done(n.key, channel):
            self._on_finished(delivery)
            return
        attempts, error = 0, DeliveryError("not attempted")
        backoff = self._policy.backoff()
        while attempts < self._policy.max_attempts:
            if self._bucket is not None and not self._bucket.acquire(self._stopping):
                return  # stopping: not finished, so sent after the restart
            if n.reminder is not None and not self._still_open(n.record["incident_id"]):
                # Acknowledged or resolved while this reminder waited (checked after the rate limit's wait,
                # right before sending): it has nothing left to remind of.
                metrics.REMINDERS_CANCELLED.labels(channel).inc()
                self._on_finished(delivery)
                return
            attempts += 1
            try:
                self.sender.send(n)
            except DeliveryError as failure:
                error = failure
            except Exception as failure:  # noqa: BLE001 - a sender bug must cost one notification, not the channel
                error = DeliveryError(f"{type(failure).__name__}: {one_line(failure)}")
            else:
                self._ledger.finish(n.key, channel, DELIVERED, attempts, None, n.record["incident_id"])
                metrics.DELIVERED.labels(channel).inc()
                if attempts > 1:
                    logger.info("channel %r: %s delivered after %d attempts", channel, n.key, attempts)
                self._on_finished(delivery)
                return
            metrics.FAILED_ATTEMPTS.labels(channel).inc()
            if error.permanent or attempts >= self._policy.max_attempts:
                break
            delay = max(backoff.next_delay(), min(error.retry_after or 0.0, backoff.maximum))
            logger.warning("channel %r: %s failed (attempt %d of %d), retrying in %.2fs: %s", channel, n.key, attempts,
                           self._policy.max_attempts, delay, error)
            if self._stopping.wait(delay):
                return
        self._dead_letter(delivery, attempts, error)

    def _dead_letter(self, delivery: Delivery, attempts: int, error: DeliveryError) -> None:
        n, channel = delivery.notification, self.sender.name
        logger.error("channel %r: %s not delivered after %d attempt(s)%s, dead-lettered: %s", channel, n.key, attempts,
                     " (permanent error)" if error.permanent else "", error)
        letter = {
            "reason": "delivery_failed",
            "channel": channel,
            "channel_type": self.sender.type,
            "delivery_key": n.key,
            "event_id": n.record.get("event_id"),
            "incident_id": n.record.get("incident_id"),
            "reminder": n.reminder,
            "attempts": attempts,
            "permanent": error.permanent,
            "error": str(error),
            "source_partition": delivery.partition,
            "source_offset": delivery.offset,
            "record": n.record,
        }
        if not self._dead_letters.send(letter, n.record.get("machine_id"), self._stopping):
            return  # stopping before the broker took it: tried again after the restart
        self._ledger.finish(n.key, channel, DEAD_LETTERED, attempts, str(error), n.record["incident_id"])
        metrics.DEAD_LETTERED.labels(channel).inc()
        self._on_finished(delivery)
