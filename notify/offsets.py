"""Which offsets of the incidents topic may be saved: per partition, the first record whose deliveries are not
all finished (delivered or dead-lettered), or the next one to consume when every record is finished.

Deliveries finish out of order (each channel has its own thread and pace), so a partition's saved offset
waits for its oldest unfinished record: a record after it may be consumed again after a crash, and the
ledger's delivery rows keep its finished deliveries from being sent twice.
"""

from __future__ import annotations

import threading


class OffsetTracker:
    def __init__(self, starts: dict[int, int]) -> None:
        self._lock = threading.Lock()
        self._next = dict(starts)  # partition -> next offset to consume
        # partition -> {offset: unfinished deliveries}; offsets are added in increasing order, so the first
        # key of each dict is the partition's oldest unfinished record.
        self._pending: dict[int, dict[int, int]] = {p: {} for p in starts}
        self._count = 0

    def consumed(self, partition: int, offset: int, deliveries: int) -> None:
        """Record `offset` as consumed with `deliveries` to finish (0: finished already)."""
        with self._lock:
            self._next[partition] = offset + 1
            if deliveries > 0:
                self._pending.setdefault(partition, {})[offset] = deliveries
                self._count += 1

    def finished(self, partition: int, offset: int) -> None:
        """One delivery of the record at (partition, offset) is finished."""
        with self._lock:
            pending = self._pending[partition]
            left = pending[offset] - 1
            if left > 0:
                pending[offset] = left
            else:
                del pending[offset]
                self._count -= 1

    def committable(self) -> dict[int, int]:
        """partition -> offset from which a restart must consume again."""
        with self._lock:
            return {p: next(iter(self._pending[p]), nxt) if self._pending.get(p) else nxt
                    for p, nxt in self._next.items()}

    def unfinished_records(self) -> int:
        with self._lock:
            return self._count
