"""Window state survives a snapshot/restore round trip: resumed results equal an uninterrupted run."""

from __future__ import annotations

import pickle

import pyarrow as pa

from flows.decode import BatchDecoder, ValidationLimits
from flows.rules import load_rules
from flows.window_logic import ShardWindowLogic, restore_windows
from flows.window_state import ShardWindows, WindowConfig
from plantpulse.settings import PACKAGED_RULES_FILE
from tests.flowkit import batches_of, encode
from tests.test_rules import breach_readings


def _run(batches, logic_factory, snapshot_after: int | None):
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    clock = iter(range(10**9))

    def now() -> float:
        return 1_700_000_000.0 + next(clock) * 0.01

    logic = logic_factory(None, now)
    outputs = []
    for i, batch in enumerate(batches):
        if snapshot_after is not None and i == snapshot_after:
            logic = logic_factory(logic.snapshot(), now)  # a "restart" from the snapshot
        decoded = decoder.decode(batch, now_ms=1_700_000_000_000 + 10**9)
        emitted, _ = logic.on_batch([decoded.readings])
        outputs.extend(emitted)
    emitted, _ = logic.on_eof()
    outputs.extend(emitted)
    tables = [o.window_stats.drop_columns(["emitted_at"]) for o in outputs if o.window_stats is not None]
    alerts = [o.alerts.drop_columns(["raised_at"]) for o in outputs if o.alerts is not None]
    windows = pa.concat_tables(tables).sort_by([("machine_id", "ascending"), ("window_start", "ascending")])
    return windows, pa.concat_tables(alerts).sort_by("alert_id")


def test_restore_after_downtime_does_not_idle_close_open_windows() -> None:
    """A process that was down for longer than IDLE_CLOSE_SECONDS must not treat that as machine silence."""
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    windows = ShardWindows(WindowConfig(idle_close_s=15.0), [], {})
    batch = batches_of([encode(r) for r in breach_readings(seed=1)[:60]], 60)[0]
    windows.add(decoder.decode(batch, now_ms=1_700_000_000_000 + 10**9).readings, now_s=1000.0)
    open_before = windows.open_readings
    restored = restore_windows(ShardWindows(WindowConfig(idle_close_s=15.0), [], {}), pickle.dumps(windows), 5000.0)
    assert restored.close(now_s=5001.0).window_stats is None  # 4000 s of downtime: nothing idle-closed
    assert restored.open_readings == open_before
    assert restored.close(now_s=5020.0).window_stats is not None  # real silence afterwards does close


def test_resumed_state_gives_identical_windows_and_alerts() -> None:
    rules = load_rules(PACKAGED_RULES_FILE)
    low_rules = [r for r in rules]  # packaged rules; the breach data below crosses the overheating rule

    def factory(snapshot, clock):
        fresh = ShardWindows(WindowConfig(), low_rules, {})
        return ShardWindowLogic(restore_windows(fresh, snapshot, clock()), clock=clock)

    batches = batches_of([encode(r) for r in breach_readings(seed=5)], 37)
    straight = _run(batches, factory, snapshot_after=None)
    resumed = _run(batches, factory, snapshot_after=len(batches) // 2)
    assert straight[0].num_rows > 100 and straight[1].num_rows > 0
    assert resumed[0].equals(straight[0])
    assert resumed[1].equals(straight[1])


def test_a_stalled_worker_is_not_machine_silence() -> None:
    """While a sink holds the worker back (an S3 outage), readings wait in Kafka: when the worker runs
    again after 40 s, open windows must not be idle-closed; 40 s of real silence (the worker ticking
    every second without readings) does close them."""
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    batch = batches_of([encode(r) for r in breach_readings(seed=1)[:60]], 60)[0]
    readings = decoder.decode(batch, now_ms=1_700_000_000_000 + 10**9).readings

    def run(ticks: list[float]) -> int:
        now = [1000.0]
        logic = ShardWindowLogic(ShardWindows(WindowConfig(idle_close_s=15.0), [], {}), clock=lambda: now[0])
        logic.on_batch([readings])
        closed = 0
        for t in ticks:
            now[0] = t
            emitted, _ = logic.on_notify()
            closed += sum(o.window_stats.num_rows for o in emitted if o.window_stats is not None)
        return closed

    assert run([1040.0]) == 0  # one callback after a 40 s stall
    assert run([1000.0 + s for s in range(1, 41)]) > 0  # 40 one-second ticks of silence
