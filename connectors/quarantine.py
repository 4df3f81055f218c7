"""The lake's quarantine: what the flow could not use or could not deliver, bounded, with size and hash.

Two kinds of rows share `QUARANTINE_ARROW_SCHEMA` under `<LAKE_URL>/quarantine/dt=YYYY-MM-DD/hour=HH/`:

- rejected telemetry messages (reasons `not_json`, `oversized`, `late`, ...), written by the flow's
  quarantine `LakeSink` (`part-PPP-SSSSSSSSSS.parquet`, exactly once under recovery replay);
- Kafka records that a topic refused for good (reason `undeliverable`: too large for the producer or the
  topic, invalid record, ...), written by the Kafka sink itself through `UndeliverableQuarantine`
  (`undeliverable-<digest>.parquet`, at-least-once like the Kafka topic they were meant for).

A message of any size must not stop the flow, so values are bounded: `bounded()` keeps a prefix and says
how long the original was and what its SHA-256 is. This module does no Kafka and no Bytewax.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from connectors import lake_store as store
from connectors.retry import Backoff, retry_forever
from plantpulse.schema import QUARANTINE_ARROW_SCHEMA
from plantpulse.settings import Settings

__all__ = [
    "QUARANTINE_DIR", "UNDELIVERABLE", "Bounded", "UndeliverableQuarantine", "UndeliverableRecord", "bounded",
    "quarantine_table", "with_original_columns",
]

logger = logging.getLogger("plantpulse.quarantine")

QUARANTINE_DIR = "quarantine"
UNDELIVERABLE = "undeliverable"  # the reason of a record that a Kafka topic refused for good
_DETAIL_MAX_CHARS = 1024
_ORIGINAL_COLUMNS = ("original_bytes", "original_sha256")


@dataclass(frozen=True)
class Bounded:
    """A value cut to a limit: the kept prefix (the whole value when it fits), and the original's size and hash."""

    value: bytes
    original_bytes: int
    sha256: str

    @property
    def truncated(self) -> bool:
        return len(self.value) < self.original_bytes


def bounded(value: bytes, limit: int) -> Bounded:
    """`value` whole when it has at most `limit` bytes, else its first `limit` bytes; always its size and hash."""
    if limit < 0:
        raise ValueError(f"bounded: limit must be >= 0, got {limit!r}")
    return Bounded(value if len(value) <= limit else value[:limit], len(value), hashlib.sha256(value).hexdigest())


def quarantine_table(
    *,
    values: Sequence[bytes],
    keys: Sequence[bytes | None],
    reasons: Sequence[str],
    details: Sequence[str],
    source_topics: Sequence[str],
    source_partitions: Sequence[int],
    source_offsets: Sequence[int],
    quarantined_at_ms: int,
    max_value_bytes: int,
    originals: Sequence[tuple[int, str] | None] | None = None,
) -> pa.Table:
    """Rows of `QUARANTINE_ARROW_SCHEMA`; each value kept whole up to `max_value_bytes`, then as a prefix.

    `originals[i]`, when given, is the (size, SHA-256) of the message that `values[i]` is already a prefix of
    (a dead letter cut before it was produced); otherwise the value itself is the original.
    """
    kept = [bounded(v, max_value_bytes) for v in values]
    for i, original in enumerate(originals or []):
        if original is not None:
            kept[i] = Bounded(kept[i].value, *original)
    count = len(kept)
    return pa.table(
        {
            "value": pa.array([k.value for k in kept], pa.binary()),
            "key": pa.array(keys, pa.binary()),
            "reason": pa.array(reasons, pa.string()),
            "detail": pa.array([d[:_DETAIL_MAX_CHARS] for d in details], pa.string()),
            "source_topic": pa.array(source_topics, pa.string()),
            "source_partition": pa.array(source_partitions, pa.int32()),
            "source_offset": pa.array(source_offsets, pa.int64()),
            "quarantined_at": pa.array([quarantined_at_ms] * count, pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "original_bytes": pa.array([k.original_bytes for k in kept], pa.int64()),
            "original_sha256": pa.array([k.sha256 for k in kept], pa.string()),
        },
        schema=QUARANTINE_ARROW_SCHEMA,
    )


def with_original_columns(table: pa.Table) -> pa.Table:
    """`table` with `original_bytes`/`original_sha256` filled in where missing or null.

    Quarantine files (and snapshotted rows) from before issue 12 lack both columns; their `value` was always
    the whole original, so its length and hash are the original's.
    """
    names = table.column_names
    if all(name in names and table[name].null_count == 0 for name in _ORIGINAL_COLUMNS):
        return table
    values = table["value"]
    sizes = pc.binary_length(values).cast(pa.int64())
    hashes = pa.array([None if v is None else hashlib.sha256(v).hexdigest() for v in values.to_pylist()], pa.string())
    for name, computed in zip(_ORIGINAL_COLUMNS, (sizes, hashes)):
        if name in names:
            table = table.set_column(names.index(name), name, pc.coalesce(table[name], computed))
        else:
            table = table.append_column(name, computed)
        names = table.column_names
    return table


@dataclass(frozen=True)
class UndeliverableRecord:
    """A Kafka record refused for good by `topic`, and the error that said so."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    error_name: str
    error_text: str


class UndeliverableQuarantine:
    """Writes undeliverable Kafka records to the lake's quarantine, one file per call, before returning.

    Called from a sink's `write_batch`, so the rows are in the lake before Bytewax can snapshot the epoch:
    at-least-once, like the topic the records were meant for. The file name is a digest of the rows (without
    the time), so writing the same records again within the hour replaces the file instead of adding one;
    a replay in a later hour can add an identical row (deduplicate by `original_sha256` and the source
    columns). An unreachable lake is retried forever with `Backoff`, holding the flow back meanwhile.
    """

    def __init__(
        self,
        lake_url: str,
        fs: AbstractFileSystem | None = None,
        *,
        max_value_bytes: int = 16 * 2**20,
        endpoint_url: str | None = None,
        sse: str | None = None,
        ca_bundle: Path | None = None,
        backoff_factory: Callable[[], Backoff] = Backoff,
        clock: Callable[[], float] = time.time,
    ) -> None:
        fs, root = store.open_lake(lake_url, fs, endpoint_url=endpoint_url, sse=sse, ca_bundle=ca_bundle)
        self.fs, self.root = fs, f"{root.rstrip('/')}/{QUARANTINE_DIR}"
        self.max_value_bytes = max_value_bytes
        self._backoff = backoff_factory()
        self._clock = clock
        self.rows_written = 0  # for tests and operators

    @classmethod
    def from_settings(cls, settings: Settings, **options: object) -> UndeliverableQuarantine:
        return cls(
            settings.lake_url, max_value_bytes=settings.quarantine_max_value_bytes,
            **store.s3_settings(settings), **options,  # type: ignore[arg-type]
        )

    def write(self, records: Sequence[UndeliverableRecord]) -> str | None:
        """Store `records` as one Parquet file; its path (None when there is nothing to store)."""
        if not records:
            return None
        now_ms = int(self._clock() * 1000)
        provenance = [_provenance(r.headers) for r in records]
        table = quarantine_table(
            values=[r.value for r in records],
            keys=[r.key for r in records],
            reasons=[UNDELIVERABLE] * len(records),
            details=[_detail(r) for r in records],
            source_topics=[p[0] for p in provenance],
            source_partitions=[p[1] for p in provenance],
            source_offsets=[p[2] for p in provenance],
            quarantined_at_ms=now_ms,
            max_value_bytes=self.max_value_bytes,
            originals=[_original(r.headers) for r in records],
        )
        digest = hashlib.sha256()
        for record in records:
            for part in (record.topic.encode(), record.key or b"", record.value, repr(record.headers).encode()):
                digest.update(len(part).to_bytes(8, "little") + part)
        path = posixpath.join(
            store.hour_dir(self.root, now_ms // store.MS_PER_HOUR), f"{UNDELIVERABLE}-{digest.hexdigest()[:32]}.parquet"
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()  # serialized once: only the store is retried
        retry_forever(f"quarantine: write {len(records)} undeliverable record(s) to {path}",
                      lambda: store.put_bytes(self.fs, path, data), self._backoff, logger)
        self.rows_written += len(records)
        return path


def _provenance(headers: list[tuple[str, bytes]] | None) -> tuple[str, int, int]:
    """(source topic, partition, offset) of a dead letter from its headers; ("", -1, -1) for other records."""
    found = dict(headers or [])
    try:
        return (found["source_topic"].decode(), int(found["source_partition"]), int(found["source_offset"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return ("", -1, -1)


def _original(headers: list[tuple[str, bytes]] | None) -> tuple[int, str] | None:
    """(size, SHA-256) of the original message of a dead letter that was cut (its headers say), else None."""
    found = dict(headers or [])
    try:
        return (int(found["original_bytes"]), found["original_sha256"].decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _detail(record: UndeliverableRecord) -> str:
    reason = dict(record.headers or []).get("reason")
    what = f" (a dead letter, reason {reason.decode(errors='replace')!r})" if reason else ""
    return f"Kafka topic {record.topic!r} refused the record{what}: {record.error_name}: {record.error_text}"
