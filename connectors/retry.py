"""Retry policy shared by the sinks: capped exponential backoff with jitter.

The ClickHouse, Kafka and lake sinks all retry an unavailable destination forever rather than drop data;
they differ only in what they retry, so this module holds the timing policy (`Backoff`) and the plain
"until it works" loop (`retry_forever`) for callers whose every failure is worth another attempt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter

T = TypeVar("T")

# Every failed attempt a writer is about to retry, by writer (`Backoff.label`): retries mean a destination
# is struggling long before anything is lost, so the pipeline-health board shows them.
SINK_RETRIES = Counter("plantpulse_sink_retries_total", "Failed writes about to be retried, by sink.", ["sink"])


class Backoff:
    """Capped exponential backoff: `initial`, `initial * multiplier`, ... up to `maximum` seconds.

    Each delay is spread by +/- `jitter` (a fraction) so that many writers recovering from the same outage
    do not retry in lockstep. Call `reset()` after a success so the next outage starts fast again.
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 10.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
        rng: random.Random | None = None,
        label: str = "other",
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"Backoff: need 0 < initial <= maximum, got initial={initial!r} maximum={maximum!r}")
        if multiplier < 1:
            raise ValueError(f"Backoff: multiplier must be >= 1, got {multiplier!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"Backoff: jitter must be in [0, 1), got {jitter!r}")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0  # consecutive failures since the last reset()
        self.label = label  # which writer retries, for SINK_RETRIES (sinks set it on the backoff they are given)

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        # The exponent is capped so that an outage of days (thousands of failures) cannot overflow a float.
        base = min(self.maximum, self.initial * self.multiplier ** min(self.failures, 64))
        self.failures += 1
        SINK_RETRIES.labels(self.label).inc()
        spread = base * self.jitter
        return min(self.maximum, max(0.0, base + self._rng.uniform(-spread, spread)))

    def wait(self, stop: threading.Event | None = None) -> float:
        """Sleep for `next_delay()` seconds, returning early if `stop` is set; returns the planned delay."""
        delay = self.next_delay()
        if stop is None:
            threading.Event().wait(delay)
        else:
            stop.wait(delay)
        return delay

    def reset(self) -> None:
        """Forget past failures (call after a success)."""
        self.failures = 0


def retry_forever(
    what: str,
    action: Callable[[], T],
    backoff: Backoff,
    log: logging.Logger,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `action` until it returns, sleeping `backoff` between failed attempts; returns its result.

    For writes whose data is already prepared (only the destination is retried, never the data): the caller
    is held back meanwhile, which is the backpressure the sinks want. Each failure is logged as
    `<what> failed (attempt N), retrying in Xs: <error>`; `on_failure` (e.g. a metric) sees each error.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - any failure of the destination; the data is prepared
            if on_failure is not None:
                on_failure(exc)
            delay = backoff.next_delay()
            log.warning("%s failed (attempt %d), retrying in %.2fs: %s", what, attempt, delay, one_line(exc))
            time.sleep(delay)
            continue
        if attempt > 1:
            log.info("%s succeeded after %d attempts", what, attempt)
        backoff.reset()
        return result


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one log-friendly line (server errors carry multi-line stack traces).

    >>> one_line(ValueError("first\\n  second"))
    'first second'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
