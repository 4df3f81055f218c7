"""The delivery ledger: one SQLite file that makes `plantpulse notify` restartable without duplicates.

- `deliveries`: one row per finished (key, channel): delivered, or dead-lettered with the last error. A key
  is a transition's `event_id` or a reminder's `<incident_id>#remind-<N>`. Checked before every send.
- `offsets`: per partition of the incidents topic, the next offset to consume. It only moves past records
  whose deliveries are all finished, so records consumed but not yet delivered are consumed again after a
  crash, and the `deliveries` rows skip what was already sent.
- `incidents`: the latest record of each incident (highest version), for reminders of open incidents.

Every write is its own transaction, committed with synchronous=FULL (WAL): a delivery is on disk before the
offset that covers it can be saved. One process at a time: an exclusive lock on `<ledger>.lock`.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- 'delivered' | 'dead_lettered'
    attempts INTEGER NOT NULL,
    error TEXT,
    incident_id TEXT NOT NULL,
    finished_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_key, channel)
);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"""
# Rows older than this are no longer needed: a record is consumed again only between a crash and its offset
# being saved (seconds), and a reminder number, once past, is never due again.
RETENTION_DAYS = 30

DELIVERED, DEAD_LETTERED = "delivered", "dead_lettered"


class LedgerBusyError(RuntimeError):
    """Another `plantpulse notify` holds the ledger (two would deliver everything twice)."""


class Ledger:
    """Thread-safe access to the ledger file (one connection behind a lock: writes are few and small)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held open for the ledger's life: the flock lives on this file descriptor.
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise LedgerBusyError(f"the notify ledger {self.path} is in use by another plantpulse notify") from None
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            self._lock_file.close()
            raise OSError(f"cannot open the notify ledger {self.path}: {error}") from error
        self.prune()

    def is_done(self, key: str, channel: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM deliveries WHERE delivery_key = ? AND channel = ?", (key, channel)
            ).fetchone()
        return row is not None

    def outcome(self, key: str, channel: str) -> tuple[str, int, str | None] | None:
        """(outcome, attempts, error) of a finished delivery, or None."""
        with self._lock:
            return self._db.execute(
                "SELECT outcome, attempts, error FROM deliveries WHERE delivery_key = ? AND channel = ?", (key, channel)
            ).fetchone()

    def finish(self, key: str, channel: str, outcome: str, attempts: int, error: str | None, incident_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, channel, outcome, attempts, error, incident_id, _now_ms()),
            )

    def offsets(self, topic: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,)).fetchall()
        return {int(p): int(o) for p, o in rows}

    def save_offsets(self, topic: str, offsets: dict[int, int]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", [(topic, p, o) for p, o in offsets.items()]
            )
            self._db.execute("COMMIT")

    def save_incidents(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep each incident's newest record (a duplicate or older version changes nothing)."""
        now = _now_ms()
        rows = [(r["incident_id"], int(r["version"]), r["status"], orjson.dumps(r).decode(), now) for r in records]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO incidents VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident_id) DO UPDATE SET "
                "version = excluded.version, status = excluded.status, record = excluded.record, "
                "updated_ms = excluded.updated_ms WHERE excluded.version > incidents.version",
                rows,
            )
            self._db.execute("COMMIT")

    def open_incidents(self) -> dict[str, dict[str, Any]]:
        """incident_id -> latest record, for incidents whose status is `open`."""
        with self._lock:
            rows = self._db.execute("SELECT incident_id, record FROM incidents WHERE status = 'open'").fetchall()
        return {incident_id: orjson.loads(record) for incident_id, record in rows}

    def incident_versions(self) -> dict[str, int]:
        """incident_id -> newest version recorded (resolved ones too: an older duplicate must not reopen one)."""
        with self._lock:
            return dict(self._db.execute("SELECT incident_id, version FROM incidents").fetchall())

    def prune(self, retention_days: float = RETENTION_DAYS) -> None:
        cutoff = _now_ms() - int(retention_days * 86_400_000)
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE finished_ms < ?", (cutoff,))
            self._db.execute("DELETE FROM incidents WHERE status != 'open' AND updated_ms < ?", (cutoff,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()  # releases the flock


def _now_ms() -> int:
    return int(time.time() * 1000)
