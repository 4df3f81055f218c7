"""Recording of a simulated stream: Parquet of every message sent, plus its labels and fleet files.

For `run.parquet` three files are written side by side:

- `run.parquet` (zstd): one row per message in send order, columns `RECORDING_SCHEMA`;
- `run.labels.parquet`: one row per fault event, columns `LABELS_SCHEMA`;
- `run.machines.csv`: the fleet (`machine_id,site,line,machine_type`), as the flow reads it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plantpulse.schema import SENSORS, STATUSES, binary_array
from sim.faults import FAULT_KINDS, FaultLabel
from sim.fleet import Machine, write_fleet_csv
from sim.imperfections import EXPECTED_REASONS, IMPERFECTION_LABELS
from sim.simulator import MessageBatch

# Reading columns hold the clean reading a message carries (for malformed messages: the reading it was
# corrupted from; `raw` is what was actually sent). `ts` is the wire timestamp, clock skew included.
RECORDING_SCHEMA = pa.schema(
    [
        pa.field("send_index", pa.int64(), nullable=False),
        pa.field("key", pa.binary(), nullable=False),
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        *(pa.field(sensor, pa.float64()) for sensor in SENSORS),
        pa.field("status", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("imperfection", pa.string(), nullable=False),
        pa.field("expected_reason", pa.string()),
        pa.field("clock_skew_ms", pa.int32(), nullable=False),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("machine_id", pa.string(), nullable=False),
        pa.field("fault", pa.string(), nullable=False),
        pa.field("start_ts", pa.int64(), nullable=False),
        pa.field("end_ts", pa.int64(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("breach_start_ts", pa.int64()),
        pa.field("breach_end_ts", pa.int64()),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)
_ROW_GROUP_ROWS = 262_144
_LABEL_NAMES = pa.array(("",) + FAULT_KINDS, pa.string())
_IMPERFECTIONS = pa.array(IMPERFECTION_LABELS, pa.string())
_REASONS = pa.array(EXPECTED_REASONS, pa.string())
_STATUSES = pa.array(STATUSES, pa.string())


def sibling_paths(record_path: Path) -> tuple[Path, Path]:
    """(labels parquet, machines csv) written beside `record_path`: `<stem>.labels.parquet`, `<stem>.machines.csv`."""
    record_path = Path(record_path)
    return (
        record_path.with_name(f"{record_path.stem}.labels.parquet"),
        record_path.with_name(f"{record_path.stem}.machines.csv"),
    )


class Recorder:
    """Writes message batches to the recording Parquet file as they are sent."""

    def __init__(self, path: Path, fleet: list[Machine], skew_ms: np.ndarray) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fleet = fleet
        self._ids = pa.array([m.machine_id for m in fleet], pa.string())
        self._keys = pa.array([m.machine_id.encode() for m in fleet], pa.binary())
        self._skew = skew_ms.astype(np.int32)
        self._writer = pq.ParquetWriter(self.path, RECORDING_SCHEMA, compression="zstd")
        # Compression runs in C++ without the GIL: one background writer overlaps it with generation.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-recorder")
        self._in_flight: Future | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: MessageBatch) -> None:
        """Append `batch` (in send order); its first message gets the next `send_index`."""
        n = len(batch)
        if n == 0:
            return
        machine = pa.array(batch.machine)
        # Keys are the machine's id for every message (even a malformed one), so take them from the fleet.
        columns = [
            pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64)),
            self._keys.take(machine),
            batch.raw if batch.raw is not None else binary_array(batch.values),
            self._ids.take(machine),
            pa.array(batch.ts),
            pa.array(batch.seq),
            *(pa.array(np.ascontiguousarray(batch.sensors[:, i]), from_pandas=True) for i in range(len(SENSORS))),
            _STATUSES.take(pa.array(batch.status)),
            _LABEL_NAMES.take(pa.array(batch.label)),
            _IMPERFECTIONS.take(pa.array(batch.imperfection)),
            _REASONS.take(pa.array(batch.imperfection)),
            pa.array(self._skew[batch.machine]),
        ]
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=RECORDING_SCHEMA))
        self.rows += n
        self._pending_rows += n
        if self._pending_rows >= _ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending)
            self._wait()  # at most one row group in flight: bounded memory, and write order is kept
            self._in_flight = self._executor.submit(self._writer.write_table, table, row_group_size=_ROW_GROUP_ROWS * 2)
        self._pending, self._pending_rows = [], 0

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()  # re-raises a write error here

    def close(self, labels: list[FaultLabel]) -> tuple[Path, Path, Path]:
        """Finish the recording and write the labels and machines files; returns the three paths."""
        try:
            self._flush()
            self._wait()
        finally:
            self._executor.shutdown()
            self._writer.close()
        labels_path, machines_path = sibling_paths(self.path)
        write_labels(labels_path, labels)
        write_fleet_csv(machines_path, self.fleet)
        return self.path, labels_path, machines_path

    def abort(self) -> None:
        """Close the file after a failure (what was written stays readable)."""
        try:
            self._flush()
            self._wait()
        finally:
            self._executor.shutdown()
            self._writer.close()


def write_labels(path: Path, labels: list[FaultLabel]) -> Path:
    """Write fault labels to Parquet (`LABELS_SCHEMA`)."""
    columns = {name: [getattr(label, name) for label in labels] for name in LABELS_SCHEMA.names}
    pq.write_table(pa.table(columns, schema=LABELS_SCHEMA), path, compression="zstd")
    return Path(path)
