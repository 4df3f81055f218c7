"""One benchmark variant in its own process (so peak RSS is its own): `python -m bench.variant NAME DATA OUT`.

Reads the recorded fleet file, cuts it into Kafka-like polls (messages spread over partitions by machine,
each partition read in order, `batch` messages per poll, partitions visited round-robin as a consumer
does), runs the variant's Bytewax flow on them with `run_main`, writes its window rows to OUT (Parquet,
timestamps as epoch ms) and prints one JSON line with the measurements. Variants with a recovery store also
report its size and snapshot costs after the run (`recovery_store`, see `bench.recovery_store`; measuring
it is not counted in `seconds`). `--sample-store` also samples each epoch's snapshot while the flow runs:
those reads keep SQLite from restarting its write-ahead log, which then grows, so a sampled run's time and
size on disk are not the store's own (`python -m bench.variant NAME DATA OUT [--sample-store]`).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import tempfile
import time
import zlib
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from bench.per_event import build_per_event_flow
from bench.recovery_store import StoreSampler, measure_store
from connectors.device_registry import KeyRegistry
from connectors.lake import LakeSink
from flows.decode import DecodedBatch, ValidationLimits
from flows.pipeline import PipelineConfig, process_telemetry
from flows.rules import load_rules
from flows.window_state import WindowConfig
from plantpulse.device_signing import sign_reading
from plantpulse.schema import RawBatch
from plantpulse.settings import PACKAGED_RULES_FILE, Settings

PARTITIONS = 8
BATCH = 10_000
WINDOW_MS = 10_000
LATENESS_MS = 1_000
_SIGN_CHUNK = 100_000


class KafkaLikePolls:
    """Re-iterable polls over a recording, built lazily so the input stays compact Arrow memory.

    Like a consumer: each partition is read in order, `BATCH` messages per poll, partitions round-robin.
    """

    def __init__(self, path: Path, keys_file: Path | None = None) -> None:
        table = pq.read_table(path, columns=["machine_id", "raw"])
        self.raw = table["raw"].combine_chunks()
        encoded = table["machine_id"].combine_chunks().dictionary_encode()
        if keys_file is not None:  # the values as the devices send them, signed (before the timed run)
            self.raw = _sign_as_devices(encoded, self.raw, keys_file)
        machine_partition = np.array(
            [zlib.crc32(m.encode()) % PARTITIONS for m in encoded.dictionary.to_pylist()], dtype=np.int64
        )
        row_partition = machine_partition[encoded.indices.to_numpy()]
        self.rows = [np.flatnonzero(row_partition == p) for p in range(PARTITIONS)]
        self.events = len(self.raw)

    def __iter__(self):
        cursor = [0] * PARTITIONS
        while any(cursor[p] < len(self.rows[p]) for p in range(PARTITIONS)):
            for p in range(PARTITIONS):
                rows = self.rows[p][cursor[p] : cursor[p] + BATCH]
                if len(rows):
                    values = self.raw.take(pa.array(rows)).to_pylist()
                    yield RawBatch("telemetry", p, list(range(cursor[p], cursor[p] + len(rows))), values)
                    cursor[p] += len(rows)


def _sign_as_devices(machine_ids: pa.DictionaryArray, raw: pa.Array, keys_file: Path) -> pa.Array:
    """A key per machine in a new registry at `keys_file`, and every message signed by its machine's key, as
    the devices would have sent it."""
    registry = KeyRegistry()
    keys = [registry.create(machine_id) for machine_id in machine_ids.dictionary.to_pylist()]
    registry.save(keys_file)
    codes = machine_ids.indices.to_numpy()
    chunks = []
    for start in range(0, len(raw), _SIGN_CHUNK):  # a chunk at a time: the Python objects stay few
        part = zip(codes[start:start + _SIGN_CHUNK].tolist(), raw.slice(start, _SIGN_CHUNK).to_pylist())
        chunks.append(pa.array([sign_reading(keys[c].key_id, keys[c].secret, v) for c, v in part], pa.binary()))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.binary())


def run_flow(
    batches: KafkaLikePolls, snapshot_every_s: float | None = None, *, lake: bool = False, recovery: bool = True,
    report: dict | None = None, sample_store: bool = False, device_keys: Path | None = None,
) -> list[pa.Table]:
    """The project's flow; with `snapshot_every_s`, Bytewax recovery snapshots the state that often.

    `lake` adds the live flow's raw-lake sink (a temporary file:// lake, default file thresholds);
    `recovery=False` keeps the same epochs (the sinks still write at each) without a recovery store.
    With a recovery store, `report` receives `recovery_store` (its measurement) and `untimed_seconds`
    (the time that measurement took, which is not part of the flow's run time); `sample_store` adds the size
    of each epoch's snapshot, read while the flow runs."""
    config = PipelineConfig(
        limits=ValidationLimits(max_event_age_ms=0),  # a recording: its age says nothing about validity
        windows=WindowConfig(window_ms=WINDOW_MS, lateness_ms=LATENESS_MS),
        rules=tuple(load_rules(PACKAGED_RULES_FILE)),
        machine_types={},
        shards=32,
        device_keys=device_keys,  # set: every message's device signature is verified (issue 16)
    )
    out: list[pa.Table] = []
    flow = Dataflow("bench_flow")
    streams = process_telemetry("process", op.input("in", flow, TestingSource(batches)), config)
    op.output("out", streams.window_stats, TestingSink(out))
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as directory:
        if lake:
            settings = Settings(data_dir=Path(directory))
            items = op.filter_map("lake_rows", streams.decoded, _lake_item)
            op.output("lake_out", items, LakeSink(settings, partitions=PARTITIONS))
        if snapshot_every_s is None:
            run_main(flow)
        elif not recovery:
            run_main(flow, epoch_interval=timedelta(seconds=snapshot_every_s))
        else:
            store = Path(directory) / "recovery"
            store.mkdir()
            init_db_dir(store, 1)
            # Sampled several times per epoch: Bytewax deletes an epoch's snapshots once the next one commits.
            sampler = StoreSampler(store, interval_s=min(1.0, snapshot_every_s / 4)) if sample_store else None
            with sampler or contextlib.nullcontext():
                run_main(flow, epoch_interval=timedelta(seconds=snapshot_every_s),
                         recovery_config=RecoveryConfig(store))
            if report is not None:
                # Reading the store back (unpickling its state) must not count in the flow's time or memory.
                report["peak_rss_mb_of_run"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                started = time.perf_counter()
                report["recovery_store"] = measure_store(store, sampler)
                report["untimed_seconds"] = time.perf_counter() - started
    return out


def _lake_item(decoded: DecodedBatch) -> tuple[str, pa.Table] | None:
    readings = decoded.readings
    return (f"lake-{readings['kafka_partition'][0].as_py()}", readings) if readings.num_rows else None


def run_per_event(batches: KafkaLikePolls) -> list[pa.Table]:
    rows: list[dict] = []
    run_main(build_per_event_flow(batches, WINDOW_MS, LATENESS_MS, TestingSink(rows)))
    return [pa.Table.from_pylist(rows)]


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[4:] not in ([], ["--sample-store"]):
        raise SystemExit("usage: python -m bench.variant NAME DATA OUT [--sample-store]")
    name, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    sample = sys.argv[4:] == ["--sample-store"]
    keys_directory = tempfile.TemporaryDirectory(prefix="bench-device-keys-")
    keys_file = Path(keys_directory.name) / "device-keys.json"
    batches = KafkaLikePolls(data, keys_file if name == "flow_signed" else None)
    events = batches.events
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report: dict = {}
    runners = {
        "flow": run_flow,
        "flow_signed": lambda polls: run_flow(polls, device_keys=keys_file),
        "per_event": run_per_event,
        "flow_recovery_10s": lambda polls: run_flow(polls, 10.0, report=report, sample_store=sample),
        "flow_recovery_1s": lambda polls: run_flow(polls, 1.0, report=report, sample_store=sample),
        # The live flow's stateful parts (windows, rules, raw-lake sink) on a long input.
        "flow_lake_10s": lambda polls: run_flow(polls, 10.0, lake=True, recovery=False),
        "flow_lake_recovery_10s": lambda polls: run_flow(polls, 10.0, lake=True, report=report, sample_store=sample),
    }
    if name not in runners:
        raise SystemExit(f"bench.variant: unknown variant {name!r}; known: {', '.join(runners)}")
    started = time.perf_counter()
    tables = runners[name](batches)
    seconds = time.perf_counter() - started - report.pop("untimed_seconds", 0.0)
    peak = report.pop("peak_rss_mb_of_run", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = pa.concat_tables(tables, promote_options="default")
    columns = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in result.columns]
    pq.write_table(pa.table(columns, names=result.column_names), out)
    print(orjson.dumps({
        "variant": name,
        "events": events,
        "windows": result.num_rows,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "peak_rss_mb": round(peak, 1),
        "rss_after_loading_input_mb": round(rss_before, 1),
        **report,
    }).decode())


if __name__ == "__main__":
    main()
