"""Per-machine event-time tumbling windows, kept columnar for a shard of machines.

The flow keys readings by `shard_of(machine_id)` (a stable hash), not by machine: one Bytewax key holds
the open windows of many machines as NumPy columns, so routing and state updates cost a few calls per
batch instead of one per reading. Windows, watermarks, duplicates and lateness are still per machine:

- window `[start, start + W)`, `start = ts - ts % W` (event time, ms);
- a machine's windows close when its newest event time passes `window end + allowed lateness`, or when
  the machine has sent nothing for `idle_close` seconds of wall-clock time (a silent machine still gets
  its open window emitted);
- a reading for a window that is already closed is late: it goes to the dead-letter stream, reason `late`;
- a reading whose (machine, seq) was seen among the machine's last `dedup_seq_window` sequence numbers is
  a duplicate: dropped and counted; a device whose sequence counter restarted begins a new sequence
  epoch instead (`flows.sequence_epochs`);
- a machine silent for `stale_after` seconds (wall clock, or event time relative to its shard) turns `stale`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows import reading_issues
from flows.decode import LATE, DeadLetter
from flows.early_rules import EarlyBreaches, EarlyDetection
from flows.rules import RuleCarry, ThresholdRule, evaluate_rules
from flows.sequence_epochs import SequenceEpochs, running_max_before
from flows.window_stats import ClosedReadings, Groups, window_stats_table
from plantpulse.schema import MACHINE_STATE_ARROW_SCHEMA, SENSORS, STATUSES, channel_columns

logger = logging.getLogger("plantpulse.windows")
_NEVER = np.iinfo(np.int64).min // 4
_STATUS_SET = pa.array(STATUSES)
CHANNEL_PREFIX = "channel:"  # buffer columns of extra channels (names cannot hold ':', core sensors have none)


def shard_index(machine_id: str, shards: int) -> int:
    """Stable shard of a machine (CRC32: the same in every process, unlike the salted `hash`)."""
    return zlib.crc32(machine_id.encode()) % shards


def shard_key(index: int) -> str:
    return f"shard-{index:04d}"


def _rule_key(rule: ThresholdRule) -> tuple[str, str]:
    """(id, definition): a rule's breach runs carry over a restart only to a rule with the same key."""
    types = None if rule.machine_types is None else sorted(rule.machine_types)
    return rule.id, repr((rule.sensor, rule.op, rule.threshold, rule.for_seconds, rule.severity, types))


@dataclass(frozen=True)
class WindowConfig:
    window_ms: int = 10_000
    lateness_ms: int = 1_000
    idle_close_s: float = 15.0
    stale_after_s: float = 30.0
    dedup_seq_window: int = 1024


@dataclass
class WindowOutput:
    """What one shard emits on a call: tables for the sinks, dead letters and counters."""

    window_stats: pa.Table | None = None
    alerts: pa.Table | None = None
    machine_state: pa.Table | None = None
    dead_letters: list[DeadLetter] | None = None
    duplicates: int = 0
    accepted: int = 0
    seq_resets: int = 0  # sequence counters found restarted (see flows.sequence_epochs)
    issues: pa.Table | None = None  # duplicates and sequence restarts (flows.reading_issues; topic not filled)
    # Threshold rules whose condition completed while the window is open: (machine_id, machine_type, detection).
    early: list[tuple[str, str, EarlyDetection]] | None = None
    # Machines that turned stale by wall-clock silence (not by event time behind their shard: that depends on
    # read order during a catch-up). Their open incidents resolve.
    silent: list[str] | None = None


class ShardWindows:
    """Window state of one shard. Pure state + logic (no Bytewax): `add` readings, `close` windows."""

    def __init__(self, config: WindowConfig, rules: list[ThresholdRule], machine_types: dict[str, str]) -> None:
        self.config = config
        self.rules = rules
        self.type_of = machine_types
        self.ids: list[str] = []
        self._ids_array: pa.Array | None = None
        self.index: dict[str, int] = {}
        self.types: list[str] = []
        self.max_ts = np.zeros(0, dtype=np.int64)
        self.closed_until = np.zeros(0, dtype=np.int64)  # windows ending at or before this are emitted
        self.last_arrival_s = np.zeros(0)  # wall clock of the machine's latest accepted reading
        self.stale = np.zeros(0, dtype=bool)
        self.epochs = SequenceEpochs(config.dedup_seq_window)  # duplicate memory and sequence resets
        self.last_state = _LastState()  # latest machine_state values per machine, for stale markers
        self.carry = RuleCarry(len(rules))
        self.early = EarlyBreaches(len(rules))  # breach runs followed reading by reading (flows.early_rules)
        self.pending_early: list[EarlyDetection] = []  # held until the machine's earlier windows have closed
        self.rule_keys = [_rule_key(rule) for rule in rules]  # which rule each carry column belongs to
        self.stream_max_ts = _NEVER
        self.buffer: list[dict[str, np.ndarray]] = []

    # -- state for recovery --------------------------------------------------------------------
    def __getstate__(self) -> dict:
        self._consolidate()
        return {k: v for k, v in self.__dict__.items() if k not in ("rules", "type_of", "config", "_ids_array")}

    def restore(self, state: dict, now_s: float) -> None:
        """Load snapshotted state under the current configuration (window settings, rules, fleet).

        Arrival times restart at `now_s`: the time the process was down is not silence of the machines, and
        must not idle-close windows whose readings Kafka is about to replay. Snapshots of earlier versions
        restore too (their missing parts start empty)."""
        rule_keys = self.rule_keys
        self.__dict__.update(state)
        self.__dict__.setdefault("pending_early", [])
        self._ids_array = None
        self.last_arrival_s[:] = now_s
        if "seen_generation" in state:  # from before sequence epochs: the duplicate memory alone
            self.epochs = SequenceEpochs.from_memory(self.__dict__.pop("seen_generation"))
        self.epochs.fit(self.config.dedup_seq_window, len(self.max_ts))
        self.last_state.add_missing_columns()
        self._adopt_rules(state.get("rule_keys"), rule_keys, had_early="early" in state)

    def pause(self, seconds: float) -> None:
        """The flow itself stood still for `seconds` (a sink holding it back, a long GC): readings waited in
        Kafka, so that time is not silence of the machines. Arrival clocks move on by it."""
        self.last_arrival_s += seconds

    def _adopt_rules(
        self, snapshot_keys: list[tuple[str, str]] | None, keys: list[tuple[str, str]], had_early: bool = True
    ) -> None:
        """Carry breach runs over rule by rule: a rule whose definition changed (or that is new) starts its
        runs afresh; the runs of removed rules are dropped; the others continue, wherever the rule now is."""
        if snapshot_keys is None:  # a snapshot from before rule keys: trusted if the number of rules matches
            snapshot_keys = keys if self.carry.seconds.shape[1] == len(keys) else []
        column = {key: j for j, key in enumerate(snapshot_keys)}
        if had_early:
            self.early.grow(len(self.max_ts))
            self.early.adopt_rules([column.get(key) for key in keys])
        else:  # a snapshot from before early detection: its runs start afresh
            self.early = EarlyBreaches(len(keys))
            self.early.grow(len(self.max_ts))
        old = self.carry
        self.carry = RuleCarry(len(keys))
        self.carry.grow(max(len(old.window_end), len(self.max_ts)))
        self.carry.window_end[: len(old.window_end)] = old.window_end
        for r, key in enumerate(keys):
            if key in column:
                self.carry.seconds[: len(old.window_end), r] = old.seconds[:, column[key]]
        self.rule_keys = keys
        fresh = [key[0] for key in keys if key not in column]
        removed = [key[0] for key in set(snapshot_keys) - set(keys)]
        if (fresh or removed) and self.ids:
            logger.info(
                "threshold rules changed since the snapshot (%d machines): breach runs start afresh for %s, "
                "dropped for %s", len(self.ids), fresh or "none", removed or "none",
            )

    # -- input ---------------------------------------------------------------------------------
    def add(self, table: pa.Table, now_s: float) -> WindowOutput:
        """Accept decoded readings (flow `DECODED_COLUMNS`); returns late dead letters and counters."""
        midx = self._machine_indices(table["machine_id"])
        ts = table["ts"].to_numpy()
        seq = table["seq"].to_numpy()
        n = len(ts)
        window_ms = self.config.window_ms
        ws = ts - ts % window_ms
        # Late is decided by event time alone: the window's end plus the allowed lateness has been passed by
        # the machine's newest reading before this one (even within this batch), or the window was closed
        # by idleness. So the outcome does not depend on batch boundaries or on when windows are emitted.
        order = np.argsort(midx, kind="stable")
        newest_before = np.maximum(self.max_ts[midx], running_max_before(midx, ts, order))
        window_late = (ws + window_ms + self.config.lateness_ms <= newest_before) | (
            ws + window_ms <= self.closed_until[midx]
        )
        # Duplicates, and readings older than a sequence reset of their machine, are decided by the epochs.
        verdict = self.epochs.judge(midx, seq, ts, newest_before, window_late, order)
        duplicate, late = verdict.duplicate, verdict.late
        accept = ~duplicate & ~late
        output = WindowOutput(duplicates=int(duplicate.sum()), accepted=int(accept.sum()), seq_resets=verdict.resets)
        if output.duplicates or verdict.reset_rows is not None:
            output.issues = _issue_rows(table, duplicate, verdict.reset_rows, int(now_s * 1000))
        if late.any():
            rows = np.flatnonzero(late)
            reset_at = np.where(window_late[rows], _NEVER, self.epochs.epoch_start[midx[rows]])
            output.dead_letters = _late_letters(table, rows, self.closed_until[midx], reset_at)

        if output.accepted:
            keep = np.flatnonzero(accept) if output.accepted < n else slice(None)
            kept_midx, kept_ts = midx[keep], ts[keep]
            np.maximum.at(self.max_ts, kept_midx, kept_ts)
            self.last_arrival_s[kept_midx] = now_s
            self.stream_max_ts = max(self.stream_max_ts, int(kept_ts.max()))
            chunk = {
                "midx": kept_midx,
                "ws": ws[keep],
                "ts": kept_ts,
                "seq": seq[keep],
                "status": pc.index_in(table["status"], value_set=_STATUS_SET).to_numpy().astype(np.int8)[keep],
            }
            for sensor in SENSORS:
                chunk[sensor] = table[sensor].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[keep]
            if "channels" in table.column_names and table["channels"].null_count < n:
                for name, values in channel_columns(table["channels"]).items():
                    chunk[CHANNEL_PREFIX + name] = values[keep]
            self.buffer.append(chunk)
            found = self.early.observe(
                self.rules, chunk["midx"], chunk["ts"], chunk["seq"], chunk,
                np.asarray(self.types, dtype=object), window_ms,
            )
            if found:
                self.pending_early.extend(found)
                self._release_early(output)
        return output

    def early_waiting_for_close(self) -> bool:
        """Whether a close now would release a held early detection (its machine's watermark allows it)."""
        window_ms, lateness_ms = self.config.window_ms, self.config.lateness_ms
        for d in self.pending_early:
            watermark = int(self.max_ts[d.midx]) - lateness_ms
            if watermark - watermark % window_ms >= d.window_start - window_ms:
                return True
        return False

    def _release_early(self, output: WindowOutput) -> None:
        """Hand on early detections once the machine's windows before the previous one have closed.

        Incidents take a machine's windows in order; a catch-up reads many windows between two closes, and a
        detection in a late window must not overtake the earlier windows' closing (live, nothing waits: the
        window before last closed a second after its end)."""
        window_ms = self.config.window_ms
        ready: list[EarlyDetection] = []
        waiting: list[EarlyDetection] = []
        for d in self.pending_early:
            (ready if self.closed_until[d.midx] >= d.window_start - window_ms else waiting).append(d)
        if ready:
            self.pending_early = waiting
            output.early = (output.early or []) + [(self.ids[d.midx], self.types[d.midx], d) for d in ready]

    def _machine_indices(self, machine_ids: pa.ChunkedArray) -> np.ndarray:
        found = pc.index_in(machine_ids, value_set=self._known_ids())
        if found.null_count:
            for machine_id in pc.unique(machine_ids.filter(pc.is_null(found))).to_pylist():
                self._register(machine_id)
            found = pc.index_in(machine_ids, value_set=self._known_ids())
        return found.to_numpy().astype(np.int32, copy=False)

    def _known_ids(self) -> pa.Array:
        if self._ids_array is None or len(self._ids_array) != len(self.ids):
            self._ids_array = pa.array(self.ids, pa.string())
        return self._ids_array

    def _register(self, machine_id: str) -> int:
        found = self.index.get(machine_id)
        if found is not None:
            return found
        midx = len(self.ids)
        self.ids.append(machine_id)
        self.index[machine_id] = midx
        self.types.append(self.type_of.get(machine_id, "unknown"))
        if midx >= len(self.max_ts):
            self._grow(max(16, 2 * len(self.max_ts)))
        return midx

    def _grow(self, size: int) -> None:
        extra = size - len(self.max_ts)
        self.max_ts = np.concatenate((self.max_ts, np.full(extra, _NEVER, dtype=np.int64)))
        self.closed_until = np.concatenate((self.closed_until, np.full(extra, _NEVER, dtype=np.int64)))
        self.last_arrival_s = np.concatenate((self.last_arrival_s, np.zeros(extra)))
        self.stale = np.concatenate((self.stale, np.zeros(extra, dtype=bool)))
        self.epochs.grow(size)
        self.carry.grow(size)
        self.early.grow(size)

    # -- closing -------------------------------------------------------------------------------
    def close(self, now_s: float, flush_all: bool = False) -> WindowOutput:
        """Emit every window whose watermark passed (or all, on `flush_all`), and stale markers."""
        output = WindowOutput()
        n_machines = len(self.ids)
        if n_machines == 0:
            return output
        config = self.config
        window_ms = config.window_ms
        watermark = self.max_ts[:n_machines] - config.lateness_ms
        closable = watermark - watermark % window_ms
        idle = (now_s - self.last_arrival_s[:n_machines]) >= config.idle_close_s
        if flush_all:
            idle[:] = True
        self._consolidate()
        if self.buffer:
            rows = self.buffer[0]
            # An idle machine closes every window it has open, up to its newest one.
            idle_until = self.max_ts[:n_machines] - self.max_ts[:n_machines] % window_ms + window_ms
            target = np.where(idle, np.maximum(closable, idle_until), closable)
            row_target = target[rows["midx"]]
            closing = rows["ws"] + window_ms <= row_target
            if closing.any():
                emitted_at = int(now_s * 1000)
                closed = _take(rows, np.flatnonzero(closing))
                self.buffer = [_take(rows, np.flatnonzero(~closing))] if not closing.all() else []
                self._emit(closed, emitted_at, output)
            np.maximum(self.closed_until[:n_machines], target, out=self.closed_until[:n_machines])
        if self.pending_early:
            self._release_early(output)
        output.machine_state = _concat(output.machine_state, self._stale_markers(now_s, output))
        return output

    def _emit(self, rows: dict[str, np.ndarray], emitted_at: int, output: WindowOutput) -> None:
        readings = ClosedReadings(
            midx=rows["midx"],
            ws=rows["ws"],
            ts=rows["ts"],
            seq=rows["seq"],
            sensors={s: rows[s] for s in SENSORS},
            status=rows["status"],
            channels={k[len(CHANNEL_PREFIX):]: v for k, v in rows.items() if k.startswith(CHANNEL_PREFIX)},
        ).sorted()
        groups = Groups.of(readings, self.config.window_ms)
        ids = np.asarray(self.ids, dtype=object)
        types = np.asarray(self.types, dtype=object)
        window_ms = self.config.window_ms
        output.window_stats = window_stats_table(readings, groups, ids, types, window_ms, emitted_at)
        output.alerts = evaluate_rules(self.rules, readings, groups, self.carry, ids, types, window_ms, emitted_at)
        output.machine_state = self._state_rows(output.window_stats, readings.midx[groups.starts], emitted_at)

    def _state_rows(self, stats: pa.Table, groups_midx: np.ndarray, emitted_at: int) -> pa.Table:
        # Groups are sorted by (machine, window): a machine's last group carries its latest known values.
        newest = np.ones(len(groups_midx), dtype=bool)
        newest[:-1] = groups_midx[1:] != groups_midx[:-1]
        latest = stats.take(pa.array(np.flatnonzero(newest)))
        machines = groups_midx[newest]
        state = pa.table(
            {
                "machine_id": latest["machine_id"],
                "machine_type": latest["machine_type"],
                "last_ts": latest["last_ts"],
                "last_seq": latest["last_seq"],
                **{sensor: latest[f"{sensor}_last"] for sensor in SENSORS},
                "status": latest["status_last"],
                "state": pa.array(np.full(latest.num_rows, "ok", dtype=object), pa.string()),
                "updated_at": _timestamps(np.full(latest.num_rows, emitted_at)),
                # Resets counted so far, including those of readings in windows still open.
                "seq_resets": self.epochs.resets[machines].astype(np.uint32),
            },
            schema=MACHINE_STATE_ARROW_SCHEMA,
        )
        self.last_state.update(machines, state, len(self.ids))
        self.stale[machines] = False
        return state

    def _stale_markers(self, now_s: float, output: WindowOutput) -> pa.Table | None:
        n = len(self.ids)
        silent_wall = (now_s - self.last_arrival_s[:n]) >= self.config.stale_after_s
        silent_event = (self.stream_max_ts - self.max_ts[:n]) >= self.config.stale_after_s * 1000
        # A machine with no closed window yet has nothing to show; it turns stale once one closes.
        turning = np.flatnonzero((silent_wall | silent_event) & ~self.stale[:n] & self.last_state.known(n))
        if not len(turning):
            return None
        self.stale[turning] = True
        silent = turning[silent_wall[turning]]
        if len(silent):
            output.silent = [self.ids[i] for i in silent.tolist()]
        return self.last_state.rows(turning, "stale", int(now_s * 1000), self.epochs.resets[turning])

    def _consolidate(self) -> None:
        if len(self.buffer) > 1:
            # Chunks may carry different channels: a channel a chunk lacks is NaN (not reported) there.
            keys = dict.fromkeys(k for c in self.buffer for k in c)
            self.buffer = [{
                k: np.concatenate([c[k] if k in c else np.full(len(c["ts"]), np.nan) for c in self.buffer]) for k in keys
            }]

    @property
    def open_readings(self) -> int:
        return sum(len(c["ts"]) for c in self.buffer)


def _take(rows: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in rows.items()}


def _concat(a: pa.Table | None, b: pa.Table | None) -> pa.Table | None:
    if a is None or b is None:
        return a if b is None else b
    return pa.concat_tables([a, b])


def _issue_rows(table: pa.Table, duplicate: np.ndarray, reset_rows: np.ndarray | None, now_ms: int) -> pa.Table:
    parts = []
    if duplicate.any():
        parts.append(reading_issues.from_readings(table, np.flatnonzero(duplicate), reading_issues.DUPLICATE, now_ms))
    if reset_rows is not None:
        parts.append(reading_issues.from_readings(table, np.sort(reset_rows), reading_issues.SEQ_RESET, now_ms))
    return pa.concat_tables(parts)


def _timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(ms, pa.int64()).cast(pa.timestamp("ms", "UTC"))


def _late_letters(
    table: pa.Table, rows: np.ndarray, closed_until: np.ndarray, reset_at: np.ndarray
) -> list[DeadLetter]:
    """`reset_at`: per late row, the start of the sequence epoch it precedes, or _NEVER (its window closed)."""
    picked = table.select(["raw", "machine_id", "ts", "kafka_partition", "kafka_offset"]).take(pa.array(rows))
    return [
        DeadLetter(
            value=row["raw"],
            key=row["machine_id"].encode(),
            reason=LATE,
            detail=(
                f"ts={row['ts']} falls in a window already closed (windows through {until} are emitted)"
                if reset == _NEVER
                else f"ts={row['ts']} precedes its machine's sequence reset at ts={reset} (a re-sent or delayed "
                "reading of the previous sequence epoch)"
            ),
            topic="",
            partition=row["kafka_partition"],
            offset=row["kafka_offset"],
        )
        for row, until, reset in zip(picked.to_pylist(), closed_until[rows].tolist(), reset_at.tolist())
    ]


class _LastState:
    """The latest `machine_state` row of each machine as columns indexed by machine index."""

    def __init__(self) -> None:
        self.rows_of: np.ndarray = np.zeros(0, dtype=np.int64)  # midx -> row in `table`, -1 unknown
        self.table = MACHINE_STATE_ARROW_SCHEMA.empty_table()

    def update(self, machines: np.ndarray, state: pa.Table, n_machines: int) -> None:
        if len(self.rows_of) < n_machines:
            self.rows_of = np.concatenate((self.rows_of, np.full(n_machines - len(self.rows_of), -1)))
        keep = np.flatnonzero(~np.isin(np.arange(len(self.rows_of)), machines) & (self.rows_of >= 0))
        kept = self.table.take(pa.array(self.rows_of[keep]))
        self.table = pa.concat_tables([kept, state]).combine_chunks()
        self.rows_of[keep] = np.arange(len(keep))
        self.rows_of[machines] = np.arange(len(keep), len(keep) + len(machines))

    def known(self, n_machines: int) -> np.ndarray:
        known = np.zeros(n_machines, dtype=bool)
        known[: len(self.rows_of)] = self.rows_of[:n_machines] >= 0
        return known

    def add_missing_columns(self) -> None:
        """A snapshot's table from before `seq_resets` was a column: zero until the next window closes."""
        if "seq_resets" not in self.table.column_names:
            self.table = self.table.append_column(
                MACHINE_STATE_ARROW_SCHEMA.field("seq_resets"), pa.array(np.zeros(self.table.num_rows, np.uint32))
            )

    def rows(self, machines: np.ndarray, state: str, updated_at_ms: int, seq_resets: np.ndarray) -> pa.Table:
        picked = self.table.take(pa.array(self.rows_of[machines]))
        picked = picked.set_column(
            picked.schema.get_field_index("seq_resets"), MACHINE_STATE_ARROW_SCHEMA.field("seq_resets"),
            pa.array(seq_resets.astype(np.uint32)),
        )
        picked = picked.set_column(
            picked.schema.get_field_index("state"), "state", pa.array([state] * len(machines), pa.string())
        )
        picked = picked.set_column(
            picked.schema.get_field_index("updated_at"), "updated_at", _timestamps(np.full(len(machines), updated_at_ms))
        )
        return picked.cast(MACHINE_STATE_ARROW_SCHEMA)
