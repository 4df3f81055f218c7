"""The fleet simulator: every machine sends one reading per tick; output is encoded Kafka messages.

`Simulator` holds the configuration; each `run()` starts a fresh, deterministic stream. A run generates
blocks of ticks (numpy over all machines at once, one step per tick), encodes the block's readings in
one vectorised pass, then applies transport imperfections, which may move messages into later blocks.
The stream is a pure function of (fleet, seed, faults, fault_rate, imperfections, start_ts_ms,
interval_ms): the same arguments give the same bytes, and a longer run starts with the same bytes as a
shorter one (except where the shorter one's end suppressed a delay that would not have fit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from plantpulse.schema import SENSORS, STATUSES
from sim.encode import ReadingEncoder
from sim.faults import DEFAULT_FAULT_RATE, FAULT_KINDS, FaultInjector, FaultLabel, parse_faults
from sim.fleet import Machine
from sim.imperfections import (
    DUPLICATE,
    EXPECTED_REASONS,
    IMPERFECTION_LABELS,
    LATE,
    MALFORMED_BASE,
    NONE,
    OUT_OF_ORDER,
    Imperfector,
    corrupt,
    malformed_name,
    validate_imperfections,
)
from sim.signals import SignalModel, round_for_wire

_BLOCK_READINGS = 8_192  # readings per generated block: amortises per-call overhead for small fleets
_MAX_BLOCK_TICKS = 1_024
_SEED_ROLES = 4  # signals, faults, imperfections, malformed payloads
_COLUMNS = ("machine", "tick", "release_tick", "ts", "seq", "sensors", "status", "label", "imperfection")


@dataclass
class _Part:
    """Messages on their way to a batch: columns, payloads (list and Arrow), ordering keys."""

    columns: dict[str, np.ndarray]
    values: list[bytes]
    raw: pa.Array
    number: np.ndarray  # reading number: tie-breaker that keeps generation order
    phase: np.ndarray  # 0 for on-time readings, 1 for delayed or extra messages (sent after a tick's readings)


def _gather(items: list[bytes], index: np.ndarray) -> list[bytes]:
    """`[items[i] for i in index]`, done in C."""
    if len(index) == 0:
        return []
    if len(index) == 1:
        return [items[int(index[0])]]
    return list(itemgetter(*index.tolist())(items))


class MessageMeta(NamedTuple):
    """What a message is, for callers iterating message by message."""

    machine_id: str
    ts: int
    seq: int
    status: str
    label: str  # fault name, or "" outside fault events
    imperfection: str  # "", "duplicate", "late", "out_of_order" or "malformed:<kind>"
    expected_reason: str | None  # dead-letter reason for malformed messages


@dataclass
class MessageBatch:
    """Messages in send order with their ground truth as numpy columns (one row per message).

    For malformed messages the reading columns hold the clean reading the message was corrupted from.
    `machine` indexes `machine_ids`; `tick` is the reading's tick and `release_tick` the tick after whose
    readings the message is sent; `ts` is the wire timestamp of the clean reading (clock skew included);
    `sensors` is (rows, 5) in SENSORS order with NaN for null; `status`, `label` and `imperfection` index
    STATUSES, ("",) + FAULT_KINDS and IMPERFECTION_LABELS.
    """

    keys: list[bytes]
    values: list[bytes]
    machine: np.ndarray
    tick: np.ndarray
    release_tick: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    sensors: np.ndarray
    status: np.ndarray
    label: np.ndarray
    imperfection: np.ndarray
    machine_ids: list[str]
    raw: pa.Array | None = None  # `values` as one Arrow binary array (for the recorder), when at hand

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int) -> MessageBatch:
        """Messages [start, stop) of the batch."""
        cut = {name: getattr(self, name)[start:stop] for name in _COLUMNS}
        stop = min(stop, len(self.values))
        raw = None if self.raw is None else self.raw.slice(start, max(0, stop - start))
        return replace(self, keys=self.keys[start:stop], values=self.values[start:stop], raw=raw, **cut)

    def head(self, n: int) -> MessageBatch:
        """The first `n` messages."""
        return self.slice(0, n)

    def __iter__(self) -> Iterator[tuple[bytes, bytes, MessageMeta]]:
        labels = ("",) + FAULT_KINDS
        for i in range(len(self.values)):
            code = int(self.imperfection[i])
            meta = MessageMeta(
                self.machine_ids[int(self.machine[i])],
                int(self.ts[i]),
                int(self.seq[i]),
                STATUSES[int(self.status[i])],
                labels[int(self.label[i])],
                IMPERFECTION_LABELS[code],
                EXPECTED_REASONS[code],
            )
            yield self.keys[i], self.values[i], meta


class Simulator:
    """Configuration of a simulated fleet stream; iterate `run()` (or `batches()`/`messages()`) for data.

    `faults`: "all", "none", a comma list or an iterable of FAULT_KINDS. `fault_rate`: fraction of machines
    affected. `imperfections`: rates per IMPERFECTION_KINDS (see `sim.imperfections`). `start_ts_ms`: event
    time of tick 0 (may be None when `produce`/`record_only` chooses it). `interval_ms`: event time per tick.
    `faults_after_s`: seconds of healthy operation before the first fault onsets (default 0).
    """

    def __init__(
        self,
        fleet: list[Machine],
        seed: int = 0,
        faults: str | Iterable[str] | None = "all",
        fault_rate: float = DEFAULT_FAULT_RATE,
        imperfections: Mapping[str, float] | None = None,
        start_ts_ms: int | None = None,
        interval_ms: float = 1000,
        faults_after_s: float = 0.0,
    ) -> None:
        if not fleet:
            raise ValueError("fleet is empty: the simulator needs at least one machine")
        if not (interval_ms >= 1 and math.isfinite(interval_ms)):
            raise ValueError(f"interval_ms must be >= 1 (timestamps are whole ms), got {interval_ms}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {fault_rate}")
        self.fleet = list(fleet)
        self.seed = int(seed)
        self.faults = parse_faults(faults)
        self.fault_rate = float(fault_rate)
        self.imperfections = validate_imperfections(imperfections)
        self.start_ts_ms = None if start_ts_ms is None else int(start_ts_ms)
        self.interval_ms = float(interval_ms)
        if not (faults_after_s >= 0 and math.isfinite(faults_after_s)):
            raise ValueError(f"faults_after_s must be a finite number >= 0, got {faults_after_s}")
        self.faults_after_s = float(faults_after_s)
        self.machine_ids = [m.machine_id for m in self.fleet]
        # Fails early on an impossible combination (e.g. out_of_order with ticks longer than 1 s).
        self.skew_ms = self._imperfector().skew_ms

    def _seeds(self) -> list[np.random.SeedSequence]:
        return np.random.SeedSequence([self.seed, 0x51A7]).spawn(_SEED_ROLES)

    def _imperfector(self) -> Imperfector:
        rng = np.random.default_rng(self._seeds()[2])
        return Imperfector(self.imperfections, len(self.fleet), rng, self.interval_ms)

    def retimed(self, start_ts_ms: int | None = None, interval_ms: float | None = None) -> Simulator:
        """A copy with another start and/or tick interval (same fleet, seed, faults and imperfections)."""
        return Simulator(
            self.fleet,
            self.seed,
            self.faults,
            self.fault_rate,
            self.imperfections,
            self.start_ts_ms if start_ts_ms is None else start_ts_ms,
            self.interval_ms if interval_ms is None else interval_ms,
            self.faults_after_s,
        )

    def run(self, n_ticks: int | None = None) -> SimulationRun:
        """A fresh stream of `n_ticks` ticks (None: endless)."""
        if self.start_ts_ms is None:
            raise ValueError("start_ts_ms is None: pass it to Simulator(...) or use retimed(start_ts_ms=...)")
        return SimulationRun(self, n_ticks)

    def batches(self, n_ticks: int | None = None) -> Iterator[MessageBatch]:
        """Message batches of a fresh run, in send order."""
        return iter(self.run(n_ticks))

    def messages(self, n_ticks: int | None = None) -> Iterator[tuple[bytes, bytes, MessageMeta]]:
        """(key, value, meta) of a fresh run, one message at a time (slower than `batches`)."""
        for batch in self.run(n_ticks):
            yield from batch


class SimulationRun:
    """One pass over a simulator's stream; iterate for `MessageBatch`es, then ask for `labels()`."""

    def __init__(self, simulator: Simulator, n_ticks: int | None) -> None:
        if n_ticks is not None and n_ticks < 0:
            raise ValueError(f"n_ticks must be >= 0, got {n_ticks}")
        self.sim, self.n_ticks = simulator, n_ticks
        seeds = simulator._seeds()
        fleet, n = simulator.fleet, len(simulator.fleet)
        self.n = n
        self.start_ts_ms, self.interval_ms = simulator.start_ts_ms, simulator.interval_ms
        self.model = SignalModel(fleet, np.random.default_rng(seeds[0]), self.interval_ms, self.start_ts_ms)
        self.injector = FaultInjector(
            fleet, simulator.faults, simulator.fault_rate, np.random.default_rng(seeds[1]), self.interval_ms, self.model,
            simulator.faults_after_s,
        )
        self.imperfector = simulator._imperfector()
        self.malformed_rng = np.random.default_rng(seeds[3])
        self.encoder = ReadingEncoder(simulator.machine_ids)
        self.keys = [machine_id.encode() for machine_id in simulator.machine_ids]
        self.skew_ms = simulator.skew_ms
        self.block_ticks = max(1, min(_MAX_BLOCK_TICKS, -(-_BLOCK_READINGS // n)))
        self.next_tick = 0  # first tick not generated yet
        self.next_seq = np.zeros(n, dtype=np.int64)
        self.readings_generated = 0
        self._pending: _Part | None = None  # messages released in a later block

    def tick_ts(self, tick: np.ndarray | int) -> np.ndarray | int:
        """Event time of a tick (before clock skew)."""
        return self.start_ts_ms + np.floor(np.asarray(tick) * self.interval_ms).astype(np.int64)

    def labels(self, until_tick: int | None = None) -> list[FaultLabel]:
        """Fault labels for events started by `until_tick` (default: the last generated tick)."""
        last = self.next_tick - 1 if until_tick is None else until_tick
        skew = self.skew_ms
        return self.injector.labels(
            last, self.sim.machine_ids, lambda machine, tick: int(self.tick_ts(tick)) + int(skew[machine])
        )

    def __iter__(self) -> Iterator[MessageBatch]:
        while self.n_ticks is None or self.next_tick < self.n_ticks:
            batch = self._block()
            if len(batch):
                yield batch

    def _block(self) -> MessageBatch:
        k0, n = self.next_tick, self.n
        T = self.block_ticks if self.n_ticks is None else min(self.block_ticks, self.n_ticks - k0)
        values = np.empty((T, 5, n))
        status = np.empty((T, n), dtype=np.int8)
        label = np.empty((T, n), dtype=np.int8)
        emit = np.ones((T, n), dtype=bool)
        tick_ts = self.tick_ts(np.arange(k0, k0 + T))
        # Random draws per block of full size, so a shorter final block sees the same numbers.
        noise = self.model.noise(self.block_ticks)
        category, delay, malformed = (a[: T * n].reshape(T, n) for a in self.imperfector.draw(self.block_ticks * n))
        for j in range(T):
            self.injector.begin_tick(k0 + j)
            status[j] = self.model.step(int(tick_ts[j]), noise[j], values[j])
            sent, label[j] = self.injector.apply(k0 + j, values[j], status[j])
            if sent is not None:
                emit[j] = sent
        round_for_wire(values)
        self.next_tick = k0 + T
        final = self.n_ticks is not None and self.next_tick >= self.n_ticks

        # Clean readings of the block, tick-major, machine order within a tick.
        mask = emit.ravel()
        everyone = bool(mask.all())
        seq = (np.cumsum(emit, axis=0) - 1 + self.next_seq).ravel()
        self.next_seq += emit.sum(axis=0)
        machine = np.tile(np.arange(n, dtype=np.int32), T)
        tick = np.repeat(np.arange(k0, k0 + T, dtype=np.int64), n)
        clean = {
            "machine": machine,
            "tick": tick,
            "release_tick": tick,
            "ts": np.repeat(tick_ts, n) + self.skew_ms[machine],
            "seq": seq,
            "sensors": values.transpose(0, 2, 1).reshape(T * n, 5),
            "status": status.ravel(),
            "label": label.ravel(),
            "imperfection": np.zeros(T * n, dtype=np.int16),
        }
        if not everyone:
            clean = {name: column[mask] for name, column in clean.items()}
        raw = self.encoder.encode(clean["machine"], clean["ts"], clean["seq"], clean["sensors"], clean["status"])
        encoded = raw.to_pylist()
        number = self.readings_generated + np.arange(len(encoded), dtype=np.int64)
        self.readings_generated += len(encoded)
        category, delay, malformed = category.ravel()[mask], delay.ravel()[mask], malformed.ravel()[mask]
        if self.n_ticks is not None:
            # A delay that would fall past the end of the stream is dropped rather than flushed early,
            # so a message labelled late is always delivered >= 30 s of event time late.
            delayed = (category == DUPLICATE) | (category == LATE) | (category == OUT_OF_ORDER)
            category = np.where(delayed & (clean["tick"] + delay >= self.n_ticks), NONE, category)
        if not (category != NONE).any() and self._pending is None:
            keys = self.keys * T if everyone else list(map(self.keys.__getitem__, clean["machine"].tolist()))
            return MessageBatch(keys, encoded, **clean, machine_ids=self.sim.machine_ids, raw=raw)
        return self._reorder(clean, raw, encoded, number, category, delay, malformed, k0 + T, final)

    def _reorder(self, clean, raw, encoded, number, category, delay, malformed, block_end, final) -> MessageBatch:
        """Apply imperfections to a block's clean messages and release what is due by `block_end`."""
        held = (category == LATE) | (category == OUT_OF_ORDER)
        originals = dict(clean)
        originals["release_tick"] = clean["tick"] + np.where(held, delay, 0)
        originals["imperfection"] = np.where(held, category, NONE).astype(np.int16)
        parts = [_Part(originals, encoded, raw, number, held.astype(np.int8))]

        dup = np.flatnonzero(category == DUPLICATE)
        if len(dup):
            copy = {name: column[dup] for name, column in clean.items()}
            copy["release_tick"] = clean["tick"][dup] + delay[dup]
            copy["imperfection"] = np.full(len(dup), DUPLICATE, dtype=np.int16)
            extra = np.ones(len(dup), np.int8)
            parts.append(_Part(copy, _gather(encoded, dup), raw.take(pa.array(dup)), number[dup], extra))

        bad = np.flatnonzero(category == MALFORMED_BASE)
        if len(bad):
            copy = {name: column[bad] for name, column in clean.items()}
            copy["imperfection"] = (MALFORMED_BASE + malformed[bad]).astype(np.int16)
            payloads = [self._corrupt(copy, i) for i in range(len(bad))]
            extra = np.ones(len(bad), np.int8)
            parts.append(_Part(copy, payloads, pa.array(payloads, pa.binary()), number[bad], extra))

        if self._pending is not None:
            parts.append(self._pending)
        columns = {name: np.concatenate([part.columns[name] for part in parts]) for name in _COLUMNS}
        values = [value for part in parts for value in part.values] if len(parts) > 1 else encoded
        raw_all = pa.concat_arrays([part.raw for part in parts]) if len(parts) > 1 else raw
        number = np.concatenate([part.number for part in parts])
        phase = np.concatenate([part.phase for part in parts])
        # Send order: by release tick; on-time readings first (machine order), then delayed and extra messages.
        order = np.lexsort((number, phase, columns["release_tick"]))
        due = len(order) if final else int(np.searchsorted(columns["release_tick"][order], block_end))
        now, later = order[:due], order[due:]
        self._pending = None
        if len(later):
            self._pending = _Part(
                {name: column[later] for name, column in columns.items()},
                _gather(values, later),
                raw_all.take(pa.array(later)),
                number[later],
                phase[later],
            )
        picked = {name: column[now] for name, column in columns.items()}
        return MessageBatch(
            keys=list(map(self.keys.__getitem__, picked["machine"].tolist())),
            values=_gather(values, now),
            **picked,
            machine_ids=self.sim.machine_ids,
            raw=raw_all.take(pa.array(now)),
        )

    def _corrupt(self, columns: dict, i: int) -> bytes:
        """The malformed payload for row `i` of `columns` (a copy of a clean reading)."""
        sensors = columns["sensors"][i]
        reading = {
            "v": 1,
            "machine_id": self.sim.machine_ids[int(columns["machine"][i])],
            "ts": int(columns["ts"][i]),
            "seq": int(columns["seq"][i]),
            **{name: (None if math.isnan(x) else float(x)) for name, x in zip(SENSORS, sensors.tolist())},
            "status": STATUSES[int(columns["status"][i])],
        }
        kind = malformed_name(int(columns["imperfection"][i]) - MALFORMED_BASE)
        return corrupt(kind, reading, self.malformed_rng)

