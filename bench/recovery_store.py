"""How big a Bytewax recovery store grows and what its snapshots cost: `StoreSampler` while a flow runs,
`measure_store` after it.

Bytewax 0.21 keeps one SQLite file per recovery partition (`part-N.sqlite3`, WAL journal). Its `snaps` table
has one row per (step_id, state_key, snap_epoch): the pickled state of that key at the end of that epoch,
written for every key whose state changed during the epoch. Once a later epoch is committed, Bytewax
deletes the snapshots it supersedes, so after a run the store holds only the newest snapshot of each key;
the size of every epoch's snapshot can only be sampled while the flow runs, through read-only
connections from another process. In WAL mode such a reader never blocks the writer, but a read that
overlaps a checkpoint keeps SQLite from restarting its write-ahead log, which then grows (the store ended
twice as large on disk in a test): a sampled run's size on disk and time are not the store's own, so the
benchmark samples a separate run.

Only the store is measured, never what a step keeps in its state: the figures stay valid whatever the
steps decide to snapshot.
"""

from __future__ import annotations

import json
import pickle
import select
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

_PER_EPOCH = "SELECT step_id, snap_epoch, count(*), sum(length(ser_change)) FROM snaps GROUP BY step_id, snap_epoch"


def _partitions(store: Path) -> list[Path]:
    return sorted(store.glob("*.sqlite3"))


def bytes_on_disk(store: Path) -> int:
    """Sum of the sizes of every file under `store` (SQLite databases with their WAL and shared-memory files)."""
    return sum(path.stat().st_size for path in store.rglob("*") if path.is_file())


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)


class StoreSampler:
    """Samples the bytes of each (step, epoch) snapshot in a recovery store every `interval_s` seconds, from a
    process of its own. Use as a context manager around the run.

    Not a thread: Bytewax links its own SQLite, and two SQLite libraries in one process do not see each
    other's POSIX locks, so a reader there can hit the WAL index while Bytewax resizes it (a bus error). A
    separate process is SQLite's ordinary multi-process case. A sample that finds the store busy is skipped
    and counted in `skipped`.
    """

    def __init__(self, store: Path, interval_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"store sampler interval must be > 0 s, got {interval_s}")
        self.store = store
        self.interval_s = interval_s
        self.epoch_bytes: dict[tuple[str, int], int] = {}  # (step_id, epoch) -> largest size seen
        self.peak_bytes_on_disk = 0
        self.samples = 0
        self.skipped = 0
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> StoreSampler:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.recovery_store", str(self.store), str(self.interval_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        out, err = process.communicate()  # closing its stdin tells it to take a last sample and report
        if process.returncode != 0:
            raise RuntimeError(f"recovery-store sampler of {self.store} exited with {process.returncode}: "
                               f"{err[-2000:]}")
        report = json.loads(out)
        self.epoch_bytes = {(step, epoch): size for step, epoch, size in report["epoch_bytes"]}
        self.peak_bytes_on_disk = report["peak_bytes_on_disk"]
        self.samples, self.skipped = report["samples"], report["skipped"]


def _sample(store: Path) -> tuple[dict[tuple[str, int], int], int] | None:
    """(bytes per (step, epoch) over all partitions, bytes on disk), or None when the store was busy."""
    seen: dict[tuple[str, int], int] = {}
    try:
        for path in _partitions(store):
            with closing(_read_only(path)) as connection:
                for step_id, epoch, _keys, size in connection.execute(_PER_EPOCH):
                    seen[(step_id, epoch)] = seen.get((step_id, epoch), 0) + (size or 0)
        return seen, bytes_on_disk(store)
    except (sqlite3.OperationalError, FileNotFoundError):
        return None


def _sampler_main(store: Path, interval_s: float) -> None:
    """Samples until stdin closes, then once more, and prints what it saw as one JSON object."""
    epoch_bytes: dict[tuple[str, int], int] = {}
    peak, samples, skipped = 0, 0, 0
    while True:
        stopping = bool(select.select([sys.stdin], [], [], interval_s)[0])  # readable: EOF from the parent
        sampled = _sample(store)
        if sampled is None:
            skipped += 1
        else:
            samples += 1
            seen, on_disk = sampled
            peak = max(peak, on_disk)
            for key, size in seen.items():
                epoch_bytes[key] = max(epoch_bytes.get(key, 0), size)
        if stopping:
            break
    print(json.dumps({"epoch_bytes": [[step, epoch, size] for (step, epoch), size in sorted(epoch_bytes.items())],
                      "peak_bytes_on_disk": peak, "samples": samples, "skipped": skipped}))


def measure_store(store: Path, sampler: StoreSampler | None = None) -> dict:
    """The store after a run: bytes on disk, epochs committed, and per step the snapshot bytes it retains,
    the largest snapshot one epoch wrote for it (from `sampler`) and the time to pickle its retained state
    again (a lower bound of one full snapshot's serialisation: the steps' own `snapshot()` is not in it)."""
    partitions = _partitions(store)
    if not partitions:
        raise FileNotFoundError(f"no recovery partitions (*.sqlite3) in {store}")
    steps: dict[str, dict] = {}
    commit_epochs, resume_epochs = [], []
    for path in partitions:
        with closing(_read_only(path)) as connection:
            commit_epochs += [row[0] for row in connection.execute("SELECT commit_epoch FROM commits")]
            resume_epochs += [row[0] for row in connection.execute("SELECT min(resume_epoch) FROM exs")
                              if row[0] is not None]
            for step_id, blob in connection.execute("SELECT step_id, ser_change FROM snaps"):
                step = steps.setdefault(step_id, {"retained_keys": 0, "retained_bytes": 0, "pickle_seconds": 0.0})
                step["retained_keys"] += 1
                if blob is None:  # a key whose state was discarded
                    continue
                step["retained_bytes"] += len(blob)
                state = pickle.loads(blob)
                started = time.perf_counter()
                pickle.dumps(state)
                step["pickle_seconds"] += time.perf_counter() - started
    per_epoch: dict[int, int] = {}
    if sampler is not None:
        for (step_id, epoch), size in sampler.epoch_bytes.items():
            step = steps.setdefault(step_id, {"retained_keys": 0, "retained_bytes": 0, "pickle_seconds": 0.0})
            if size > step.get("largest_epoch_bytes", -1):
                step["largest_epoch_bytes"], step["largest_epoch"] = size, epoch
            step["epochs_seen"] = step.get("epochs_seen", 0) + 1
            per_epoch[epoch] = per_epoch.get(epoch, 0) + size
    for step in steps.values():
        step["pickle_seconds"] = round(step["pickle_seconds"], 4)
    first, last = (min(resume_epochs) if resume_epochs else None), (max(commit_epochs) if commit_epochs else None)
    report = {
        "partitions": len(partitions),
        "bytes_on_disk": bytes_on_disk(store),
        "epochs_committed": last - first + 1 if first is not None and last is not None else 0,
        "snapshot_bytes_retained": sum(step["retained_bytes"] for step in steps.values()),
        "pickle_seconds_retained": round(sum(step["pickle_seconds"] for step in steps.values()), 4),
        "steps": dict(sorted(steps.items())),
    }
    if sampler is not None:
        report.update({
            "largest_epoch_bytes": max(per_epoch.values(), default=0),
            "epochs_seen": len(per_epoch),
            "peak_bytes_on_disk": max(sampler.peak_bytes_on_disk, report["bytes_on_disk"]),
            "sample_interval_s": sampler.interval_s,
            "samples": sampler.samples,
            "samples_skipped": sampler.skipped,
        })
    return report


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.recovery_store STORE_DIR INTERVAL_S (samples until stdin closes)")
    _sampler_main(Path(sys.argv[1]), float(sys.argv[2]))
