"""Rows of the `reading_issues` table: every message not accepted as a reading, and every sequence restart.

The table (`connectors/sql/006_data_quality.sql`) feeds `data_quality`, the per-machine, per-hour
completeness. Rows are identified by where the message was read (topic, partition, offset) and why, so
re-delivery after a crash replaces a row instead of counting it twice.

- `from_readings`: duplicates and sequence restarts, found among decoded readings (their machine, event time
  and seq are known).
- `from_letters`: dead letters (invalid messages and `late` readings). Their machine, event time and seq are
  read back from the original bytes when they are there and plausible: a `bad_machine_id` names no machine of
  the fleet, so it counts for none, and a message that is not JSON yields nothing but its reason.

>>> from flows.decode import DeadLetter
>>> letter = DeadLetter(b'{"machine_id":"m-1","ts":1700000000000,"seq":7,"status":"running","temperature":5000}',
...                     None, "out_of_range", "temperature=5000", "telemetry", 2, 41)
>>> row = from_letters([letter], detected_at_ms=1700000001000).to_pylist()[0]
>>> (row["machine_id"], row["reason"], row["seq"], row["partition"], row["offset"])
('m-1', 'out_of_range', 7, 2, 41)
>>> from_letters([DeadLetter(b"\\x00garbage", None, "not_json", "", "telemetry", 0, 3)], 0).to_pylist()[0]["machine_id"]
''
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa

from flows.decode import BAD_MACHINE_ID, DeadLetter
from plantpulse.schema import MACHINE_ID_PATTERN, READING_ISSUE_ARROW_SCHEMA

DUPLICATE, SEQ_RESET = "duplicate", "seq_reset"
_MACHINE_ID = re.compile(MACHINE_ID_PATTERN)
_INT64 = 2**63
_YEAR_2100_MS = 4_102_444_800_000  # event times beyond what ClickHouse's DateTime64 holds are dropped, not stored


def from_readings(table: pa.Table, rows: np.ndarray, reason: str, detected_at_ms: int) -> pa.Table:
    """Issue rows for `rows` of a decoded readings table (flow `DECODED_COLUMNS`); topic is filled by the flow."""
    picked = table.select(["machine_id", "ts", "seq", "kafka_partition", "kafka_offset"]).take(pa.array(rows))
    n = picked.num_rows
    return pa.Table.from_arrays(
        [
            picked["machine_id"],
            pa.array([reason] * n, pa.string()),
            picked["ts"].cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            picked["seq"].cast(pa.int64()),
            pa.array([""] * n, pa.string()),
            picked["kafka_partition"].cast(pa.int32()),
            picked["kafka_offset"].cast(pa.int64()),
            pa.array(np.full(n, detected_at_ms, dtype=np.int64)).cast(pa.timestamp("ms", tz="UTC")),
        ],
        schema=READING_ISSUE_ARROW_SCHEMA,
    )


def from_letters(letters: Sequence[DeadLetter], detected_at_ms: int) -> pa.Table:
    """Issue rows for dead letters (any reason, `late` included)."""
    machine_ids, ts, seq = [], [], []
    for letter in letters:
        machine_id, when, number = _identify(letter)
        machine_ids.append(machine_id)
        ts.append(when)
        seq.append(number)
    n = len(letters)
    return pa.Table.from_arrays(
        [
            pa.array(machine_ids, pa.string()),
            pa.array([letter.reason for letter in letters], pa.string()),
            pa.array(ts, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            pa.array(seq, pa.int64()),
            pa.array([letter.topic for letter in letters], pa.string()),
            pa.array([letter.partition for letter in letters], pa.int32()),
            pa.array([letter.offset for letter in letters], pa.int64()),
            pa.array(np.full(n, detected_at_ms, dtype=np.int64)).cast(pa.timestamp("ms", tz="UTC")),
        ],
        schema=READING_ISSUE_ARROW_SCHEMA,
    )


def with_topic(table: pa.Table, topic: str) -> pa.Table:
    """Fill the topic of rows that came from readings (the window step does not know topic names)."""
    column = table.schema.get_field_index("topic")
    filled = [value or topic for value in table["topic"].to_pylist()]
    return table.set_column(column, READING_ISSUE_ARROW_SCHEMA.field("topic"), pa.array(filled, pa.string()))


def _identify(letter: DeadLetter) -> tuple[str, int | None, int | None]:
    """(machine_id or "", ts, seq) from a dead letter's original bytes, each only where plausible."""
    try:
        document = orjson.loads(letter.value)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(document, dict):
        return "", None, None
    machine_id = document.get("machine_id")
    if letter.reason == BAD_MACHINE_ID or not isinstance(machine_id, str) or not _MACHINE_ID.match(machine_id):
        machine_id = ""
    ts = _integer(document.get("ts"))
    return machine_id, ts if ts is not None and 0 <= ts < _YEAR_2100_MS else None, _integer(document.get("seq"))


def _integer(value: object) -> int | None:
    # bool is an int in Python but never a timestamp or a sequence number.
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64:
        return value
    return None
