"""The garbage-collector thresholds of a process that runs the telemetry flow.

A poll keeps one header list and two tuples per message alive until it is decoded (confluent-kafka's
`Message.headers()`, needed for device signatures). With CPython's default young-generation threshold (700
allocations) those containers outlive several young collections, are promoted to the oldest generation, and
a poll or two later force a full collection of the flow's whole state: with 10,000 machines about 20 full
collections per million signed readings, most of the verification cost the device-auth benchmark measured
(`python -m bench.run --only device-auth`). A young threshold above one poll's containers lets them die young;
the unsigned flow, which keeps nothing per message alive, is unaffected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 200_000  # > 3 containers x 60,000 messages; a live poll is KAFKA_BATCH_SIZE (10,000) by default


def apply() -> None:
    """Raise this process's young-generation threshold to `YOUNG_THRESHOLD` (never lower it)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
