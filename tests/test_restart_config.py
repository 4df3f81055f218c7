"""Configuration from files, state from snapshots: after a restart the model specs and the threshold rules are
the current files', and a change resets only the state that depends on what changed.

- A model spec change resets the learned state of the machines under that spec only (their scores equal a
  fresh model's on the windows after the restart); the others continue as if never interrupted.
- A machine type that gets a spec table of its own starts afresh under it; the `[default]` machines keep theirs.
- A changed, added or removed threshold rule restarts only its own breach runs.

Checked on the pure logic (snapshot/restore) and through the flow with a real Bytewax recovery store.
"""

from __future__ import annotations

import csv
import logging
import pickle
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.anomaly_logic import AnomalyLogic
from flows.decode import BatchDecoder, ValidationLimits
from flows.pipeline import process_telemetry
from flows.rules import ThresholdRule
from flows.window_logic import restore_windows
from flows.window_state import ShardWindows, WindowConfig
from models.fleet_models import FleetModels
from models.spec import ModelSpecs, load_model_specs
from plantpulse.settings import PACKAGED_MODELS_FILE
from sim import Simulator, build_fleet, record_only
from tests import flowkit
from tests.test_models_fleet import synthetic

SCORE_COLUMNS = ["machine_id", "window_start", "model", "detector", "score", "threshold", "warming_up", "is_anomaly",
                 "alert_raised", "top_features"]
TYPES = {"M000": "pump", "M001": "pump", "M002": "compressor", "M003": "compressor", "M004": "cnc", "M005": "cnc"}


def packaged(**overrides: str) -> ModelSpecs:
    return load_model_specs(PACKAGED_MODELS_FILE).with_overrides(overrides)


# Before: pumps have a spec table of their own; compressors and cnc machines use [default].
BEFORE = packaged(**{"pump.threshold.floor": "9"})
# After: the pump spec changed; cnc machines got a table of their own; [default] (compressors) unchanged.
AFTER = packaged(**{"pump.threshold.floor": "10", "cnc.threshold.floor": "8"})


def typed_windows(count: int) -> pa.Table:
    table = synthetic(len(TYPES), count, seed=3)
    types = pa.array([TYPES[m] for m in table["machine_id"].to_pylist()])
    return table.set_column(table.schema.get_field_index("machine_type"), table.schema.field("machine_type"), types)


def only(table: pa.Table, machine_type: str) -> pa.Table:
    return table.filter(pc.is_in(table["machine_id"], pa.array([m for m, t in TYPES.items() if t == machine_type])))


def scores_of(models: FleetModels, table: pa.Table) -> pa.Table:
    return models.score(table, now_ms=0).scores.select(SCORE_COLUMNS)


def test_a_spec_change_resets_only_the_groups_it_affects(caplog: pytest.LogCaptureFixture) -> None:
    windows = typed_windows(80)
    before, after = windows.slice(0, 40 * len(TYPES)), windows.slice(40 * len(TYPES))
    uninterrupted = FleetModels(BEFORE)
    scores_of(uninterrupted, before)
    straight = scores_of(uninterrupted, after)

    logic = AnomalyLogic(FleetModels(BEFORE))
    logic.models.score(before, now_ms=0)
    with caplog.at_level(logging.INFO, logger="plantpulse.anomaly"):
        restored = AnomalyLogic.restore(logic.snapshot(), lambda: FleetModels(AFTER))
        resumed = scores_of(restored.models, after)
    assert restored.models.specs.for_type("pump").threshold_floor == 10.0

    # Compressors: their spec ([default]) did not change, so they go on exactly as if never restarted.
    assert only(resumed, "compressor").equals(only(straight, "compressor"))
    # Pumps (changed spec) and cnc machines (a new table of their own) start afresh: warming up again.
    for machine_type in ("pump", "cnc"):
        fresh = scores_of(FleetModels(AFTER), only(after, machine_type))
        assert only(resumed, machine_type).equals(fresh), machine_type
        assert not only(resumed, machine_type).equals(only(straight, machine_type))
    assert pc.all(only(resumed, "pump")["warming_up"].slice(0, 2)).as_py()
    assert "pump" in caplog.text and "cnc" in caplog.text


def test_an_unchanged_spec_file_resumes_every_group_exactly() -> None:
    windows = typed_windows(60)
    before, after = windows.slice(0, 30 * len(TYPES)), windows.slice(30 * len(TYPES))
    uninterrupted = FleetModels(BEFORE)
    scores_of(uninterrupted, before)
    logic = AnomalyLogic(FleetModels(BEFORE))
    logic.models.score(before, now_ms=0)
    # The file is read again at the restart (a new, equal ModelSpecs object): nothing is reset.
    restored = AnomalyLogic.restore(logic.snapshot(), lambda: FleetModels(packaged(**{"pump.threshold.floor": "9"})))
    assert scores_of(restored.models, after).equals(scores_of(uninterrupted, after))


def test_a_snapshot_from_before_fingerprints_resumes() -> None:
    """Models pickled by the previous version (no fingerprints, no machine types) restore: an unchanged file
    resumes every machine exactly, a changed [pump] table resets the pumps only."""
    windows = typed_windows(60)
    before, after = windows.slice(0, 30 * len(TYPES)), windows.slice(30 * len(TYPES))
    uninterrupted = FleetModels(BEFORE)
    scores_of(uninterrupted, before)
    straight = scores_of(uninterrupted, after)
    old = FleetModels(BEFORE)
    old.score(before, now_ms=0)
    del old.types
    for group in old.groups.values():
        del group.fingerprint
    snapshot = pickle.dumps(old)

    same = AnomalyLogic.restore(snapshot, lambda: FleetModels(BEFORE))
    assert scores_of(same.models, after).equals(straight)
    changed = packaged(**{"pump.threshold.floor": "10"})
    resumed = scores_of(AnomalyLogic.restore(snapshot, lambda: FleetModels(changed)).models, after)
    for machine_type in ("compressor", "cnc"):
        assert only(resumed, machine_type).equals(only(straight, machine_type)), machine_type
    assert only(resumed, "pump").equals(scores_of(FleetModels(changed), only(after, "pump")))


# --- threshold rules ----------------------------------------------------------------------------------------------

W = 10_000
T0 = 1_700_000_000_000


def rule(rule_id: str, sensor: str, op_: str, threshold: float, for_seconds: float = 20) -> ThresholdRule:
    return ThresholdRule(rule_id, sensor, op_, threshold, for_seconds, "critical", None)


HOT = rule("hot", "temperature", ">", 95.0)
LOW = rule("low", "pressure", "<", 1.0)
FAST = rule("fast", "rpm", ">", 3000.0)
LOW_CHANGED = rule("low", "pressure", "<", 1.2)  # the same id, another condition
SHAKY = rule("shaky", "vibration", ">", 40.0)  # a new rule


def breach_batches() -> list[pa.Table]:
    """One machine, a reading per second for 60 s; temperature, pressure and vibration breach their rules
    from t=5 s to t=34 s, rpm from t=7 s. Batches: [0, 13 s) and [13 s, 60 s), so the first window
    [0, 10 s) closes before the restart with breaches of 5 s (3 s for rpm) carried into the next one."""
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    readings = [
        {"machine_id": "M1", "ts": T0 + s * 1000, "seq": s, "status": "running",
         "temperature": 99.0 if 5 <= s < 35 else 60.0, "pressure": 0.5 if 5 <= s < 35 else 5.0,
         "rpm": 3500.0 if 7 <= s < 35 else 1500.0, "vibration": 50.0 if 5 <= s < 35 else 2.0}
        for s in range(60)
    ]
    parts = (readings[:13], readings[13:])
    batches = [flowkit.batches_of([flowkit.encode(r) for r in part], len(part))[0] for part in parts]
    return [decoder.decode(b, now_ms=T0 + 10**9).readings for b in batches]


def alert_durations(rules_before: list[ThresholdRule], rules_after: list[ThresholdRule], restart: bool) -> dict:
    first, second = breach_batches()
    windows = ShardWindows(WindowConfig(window_ms=W, lateness_ms=1000), rules_before, {})
    outputs = [windows.add(first, 0.0), windows.close(0.0)]
    if restart:
        windows = restore_windows(ShardWindows(WindowConfig(window_ms=W, lateness_ms=1000), rules_after, {}),
                                  pickle.dumps(windows), 0.0)
    else:
        windows.rules = rules_after
    outputs += [windows.add(second, 0.0), windows.close(0.0, flush_all=True)]
    alerts = pa.concat_tables([o.alerts for o in outputs if o.alerts is not None])
    return {(r["rule_id"], r["window_start"].timestamp() * 1000 - T0): r["duration_s"] for r in alerts.to_pylist()}


def test_a_rule_change_restarts_only_that_rules_breach_runs(caplog: pytest.LogCaptureFixture) -> None:
    before = [HOT, LOW, FAST]
    after = [LOW_CHANGED, SHAKY, HOT]  # reordered; `low` changed, `shaky` added, `fast` removed
    straight = alert_durations(before, before, restart=False)
    # Uninterrupted, the 30 s breach from t=5 s is measured whole: 25 s by the end of [20 s, 30 s).
    assert straight[("hot", 20_000)] == 25.0 and straight[("low", 20_000)] == 25.0
    with caplog.at_level(logging.INFO, logger="plantpulse.windows"):
        resumed = alert_durations(before, after, restart=True)
    # `hot` is unchanged (at another position in the file): its run continues across the restart.
    assert resumed[("hot", 20_000)] == straight[("hot", 20_000)] == 25.0
    assert resumed[("hot", 30_000)] == straight[("hot", 30_000)]
    # `low` changed and `shaky` is new: their runs start at the restart (the first window's 5 s are not
    # carried into them): 20 s by the end of [20 s, 30 s).
    assert resumed[("low", 20_000)] == 20.0 and resumed[("shaky", 20_000)] == 20.0
    assert not any(rule_id == "fast" for rule_id, _ in resumed)
    assert "low" in caplog.text and "shaky" in caplog.text and "fast" in caplog.text


def test_same_rules_in_a_new_order_resume_exactly() -> None:
    before = [HOT, LOW, FAST]
    straight = alert_durations(before, before, restart=False)
    assert alert_durations(before, [FAST, HOT, LOW], restart=True) == straight


# --- through the flow, with a Bytewax recovery store ------------------------------------------------------------

MACHINES, SECONDS = 16, 420


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict[str, str]]:
    work = tmp_path_factory.mktemp("restart-config")
    simulator = Simulator(build_fleet(MACHINES, 7), seed=7, faults="none", imperfections={},
                          start_ts_ms=1_764_000_000_437)
    record_only(simulator, duration_s=SECONDS, path=work / "fleet.parquet")
    raw = pq.read_table(work / "fleet.parquet")["raw"].to_pylist()
    with open(work / "fleet.machines.csv", newline="") as handle:
        types = {row["machine_id"]: row["machine_type"] for row in csv.DictReader(handle)}
    return flowkit.batches_of(raw, 400), types


def run_flow(batches: list, cfg, store: Path | None, crash_after: int | None) -> tuple[pa.Table, pa.Table]:
    stats: list[pa.Table] = []
    scores: list[pa.Table] = []
    seen = [0]

    def crash(batch):
        seen[0] += 1
        if crash_after is not None and seen[0] > crash_after:
            raise RuntimeError("simulated crash")
        return batch

    flow = Dataflow("restart_config")
    raw = op.map("crash", op.input("in", flow, TestingSource(batches)), crash)
    streams = process_telemetry("process", raw, cfg)
    op.output("stats", streams.window_stats, TestingSink(stats))
    op.output("scores", streams.anomaly_scores, TestingSink(scores))
    if store is None:
        run_main(flow)
    elif crash_after is None:
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(store))
    else:
        with pytest.raises(Exception, match="crash"):
            run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(store))
    empty = pa.table({})
    return (pa.concat_tables(stats) if stats else empty), (pa.concat_tables(scores) if scores else empty)


def test_a_restart_with_a_changed_spec_file_through_the_flow(recording, tmp_path: Path) -> None:
    batches, types = recording
    changed_type = "pump"
    before = packaged(**{f"{changed_type}.threshold.floor": "9"})
    after = packaged(**{f"{changed_type}.threshold.floor": "11", f"{changed_type}.warmup_windows": "15"})

    def cfg(specs: ModelSpecs):
        return flowkit.config(lateness_ms=1_000, shards=4, machine_types=types, models=specs, idle_close_s=3600.0)

    _, straight = run_flow(batches, cfg(before), store=None, crash_after=None)
    store = tmp_path / "recovery"
    store.mkdir()
    init_db_dir(store, 1)
    run_flow(batches, cfg(before), store, crash_after=len(batches) // 2)
    stats, resumed = run_flow(batches, cfg(after), store, crash_after=None)

    key = [("machine_id", "ascending"), ("window_start", "ascending")]
    resumed = resumed.select(SCORE_COLUMNS).sort_by(key)
    straight = straight.select(SCORE_COLUMNS).sort_by(key)
    changed = pc.equal(resumed["model"], changed_type)
    assert 0 < pc.sum(changed).as_py() < resumed.num_rows
    assert resumed.num_rows < straight.num_rows, "the second run resumed from a snapshot, it did not start over"
    # Unaffected groups: the same scores as the uninterrupted run, for every window scored after the restart.
    others = resumed.filter(pc.invert(changed))
    assert others.equals(_matching(straight, others))
    # The changed group: a fresh model (the new spec) fed the windows scored after the restart.
    mine = stats.filter(pc.equal(stats["machine_type"], changed_type)).sort_by(key)
    fresh = FleetModels(after).score(mine, now_ms=0).scores.select(SCORE_COLUMNS).sort_by(key)
    assert resumed.filter(changed).equals(fresh)
    assert pc.any(fresh["warming_up"]).as_py() and not resumed.filter(changed).equals(_matching(straight, fresh))


def _matching(table: pa.Table, rows: pa.Table) -> pa.Table:
    """`table`'s rows with the (machine_id, window_start) keys of `rows`, in `rows`' order."""
    wanted = {(m, w): i for i, (m, w) in enumerate(zip(rows["machine_id"].to_pylist(), rows["window_start"].to_pylist()))}
    keys = zip(table["machine_id"].to_pylist(), table["window_start"].to_pylist())
    picked = sorted((wanted[k], i) for i, k in enumerate(keys) if k in wanted)
    return table.take(pa.array([i for _, i in picked], pa.int64()))
