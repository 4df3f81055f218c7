"""The garbage-collector thresholds of a process that runs the telemetry flow.

A poll keeps GC-tracked objects per message alive until it is decoded (the Kafka client's `Message` objects;
when device signatures were Kafka headers, also a header list and two tuples each). With CPython's default
young-generation threshold (700 allocations) they outlive several young collections, are promoted to the
oldest generation, and a poll or two later force a full collection of the flow's whole state: with the
header lists, about 20 full collections per million signed readings in the device-auth benchmark. A young
threshold above one poll's objects lets them die young.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 200_000  # > 3 containers x 60,000 messages; a live poll is KAFKA_BATCH_SIZE (10,000) by default


def apply() -> None:
    """Raise this process's young-generation threshold to `YOUNG_THRESHOLD` (never lower it)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
