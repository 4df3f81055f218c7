"""A clean stop on SIGTERM/SIGINT: the inputs end, and everything downstream drains and closes.

Bytewax turns a signal into an abrupt stop: no sink's `close()` runs, so whatever a sink still buffers
(the lake's rows since the last snapshot) stays unwritten until the next start replays it. Instead, the
first signal only sets a flag; the Kafka source partitions see it at their next poll and end, the dataflow
runs to its end like a bounded input (sinks flush and close, the final epoch is snapshotted), and the
process exits 0. Stateful steps check `stop_requested()` at their end-of-input so they keep open windows
in the snapshot rather than emitting them as if the stream were over. A second signal stops at once
(KeyboardInterrupt), for a drain that hangs (e.g. an unreachable store retried forever).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

_STOP = threading.Event()
logger = logging.getLogger("plantpulse")


def stop_requested() -> bool:
    """Whether a clean stop was asked for (by a signal or `request_stop`)."""
    return _STOP.is_set()


def request_stop() -> None:
    _STOP.set()


def reset() -> None:
    """Forget an earlier stop request (tests that run several flows in one process)."""
    _STOP.clear()


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT request a clean stop; a second one interrupts at once. Main thread only."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if _STOP.is_set():
            logger.warning("%s again: stopping now, without draining (the next start replays from the snapshot)", name)
            raise KeyboardInterrupt(name)
        logger.info("%s: stopping cleanly (inputs end, sinks write what they hold); send it again to stop at once", name)
        _STOP.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
