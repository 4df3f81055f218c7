"""Incidents: the lifecycle in `IncidentBook`, early threshold detection, and the flow on one worker and a cluster."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.early_rules import EarlyBreaches
from flows.incidents import CommandRejected, Detection, IncidentBook
from flows.rules import ThresholdRule, load_rules
from flows.window_state import ShardWindows, WindowConfig
from plantpulse.schema import SENSORS
from plantpulse.settings import PACKAGED_RULES_FILE
from tests.flowkit import batches_of, config, encode, run_pipeline

W = 10_000
BASE = 1_764_000_000_000  # a multiple of the window
OVERHEAT = ThresholdRule("overheat", "temperature", ">", 95.0, 20.0, "critical", None)


def detection(window: int, severity: str = "warning", value: float = 1.0, machine: str = "M1", opens: bool = True,
              rule: str = "r1") -> Detection:
    return Detection(machine, "pump", rule, "threshold", severity, "temperature", BASE + window * W,
                     BASE + window * W + 5_000, value, 0.5, f"value {value}", resolve_after=3, opens=opens)


# -- IncidentBook -------------------------------------------------------------------------------------

def test_one_incident_per_episode_escalates_and_resolves_after_quiet_windows() -> None:
    book = IncidentBook(W)
    opened = book.detect(detection(0, value=2.0), "plant-a", now_ms=100)
    assert [r["transition"] for r in opened.transitions] == ["opened"]
    row = opened.transitions[0]
    assert row["incident_id"] == f"M1/r1/{BASE}" and row["site"] == "plant-a" and row["status"] == "open"
    # Further detections update, a more severe one escalates, a milder one never lowers it.
    assert book.detect(detection(1, value=1.5), "plant-a", 200).transitions == []
    escalated = book.detect(detection(2, severity="critical", value=3.0), "plant-a", 300).transitions
    assert [(r["transition"], r["severity"], r["detections"], r["peak_value"]) for r in escalated] == [
        ("escalated", "critical", 3, 3.0)
    ]
    assert book.detect(detection(3, severity="warning"), "plant-a", 400).states[-1]["severity"] == "critical"
    # Quiet: windows 4, 5 pass; window 6 is the third quiet window after the last detection (3).
    for window in (4, 5):
        assert book.window_closed("M1", BASE + window * W, "threshold", 500).states == []
    assert book.window_closed("M1", BASE + 6 * W, "anomaly", 500).states == [], "only its own kind's windows count"
    resolved = book.window_closed("M1", BASE + 6 * W, "threshold", 600).transitions
    assert [(r["transition"], r["status"], r["resolved_reason"], r["version"]) for r in resolved] == [
        ("resolved", "resolved", "quiet", 5)
    ]
    # A new detection opens a new incident.
    again = book.detect(detection(9), "plant-a", 700).transitions
    assert [r["incident_id"] for r in again] == [f"M1/r1/{BASE + 9 * W}"]


def test_a_detection_after_a_long_gap_resolves_the_old_incident_first() -> None:
    """A catch-up may read the later detection before the quiet windows in between have closed."""
    book = IncidentBook(W)
    book.detect(detection(0), "", 1)
    late = book.detect(detection(4), "", 2).transitions  # windows 1-3 were quiet (resolve_after=3)
    assert [(r["transition"], r["incident_id"]) for r in late] == [
        ("resolved", f"M1/r1/{BASE}"), ("opened", f"M1/r1/{BASE + 4 * W}")
    ]
    assert [r["transition"] for r in book.detect(detection(7), "", 3).transitions] == []  # 5, 6 quiet: still open


def test_operator_commands_and_their_refusals() -> None:
    book = IncidentBook(W)
    incident_id = book.detect(detection(0), "", 1).transitions[0]["incident_id"]
    with pytest.raises(CommandRejected, match="no such incident"):
        book.command("ack", "M1/r1/0", "ana", "", 2)
    with pytest.raises(CommandRejected, match="'by'"):
        book.command("ack", incident_id, " ", "", 2)
    acked = book.command("ack", incident_id, "ana", "on my way", 5).transitions[0]
    assert (acked["transition"], acked["status"], acked["acknowledged_by"], acked["acknowledged_at"]) == (
        "acknowledged", "acknowledged", "ana", 5)
    assert (acked["actor"], acked["note"]) == ("ana", "on my way")
    with pytest.raises(CommandRejected, match="already acknowledged by ana"):
        book.command("ack", incident_id, "bo", "", 6)
    with pytest.raises(CommandRejected, match="note"):
        book.command("resolve", incident_id, "ana", "", 7)
    closed = book.command("resolve", incident_id, "ana", "bearing replaced", 8).transitions[0]
    assert (closed["status"], closed["resolved_reason"], closed["resolved_by"]) == ("resolved", "manual", "ana")
    with pytest.raises(CommandRejected, match="already resolved"):
        book.command("ack", incident_id, "bo", "", 9)
    comment = book.command("comment", incident_id, "bo", "root cause: lubrication", 10).transitions[0]
    assert (comment["transition"], comment["status"], comment["version"]) == ("commented", "resolved", 4)
    assert book.detect(detection(1), "", 11).transitions[0]["transition"] == "opened"  # manual close: a new one


def test_stale_machine_resolves_all_its_incidents() -> None:
    book = IncidentBook(W)
    book.detect(detection(0, rule="a"), "", 1)
    book.detect(detection(0, rule="b"), "", 1)
    book.detect(detection(0, rule="a", machine="M2"), "", 1)
    resolved = book.machine_stale("M1", 5).transitions
    assert sorted((r["rule_id"], r["resolved_reason"]) for r in resolved) == [("a", "stale"), ("b", "stale")]
    assert book.machines_with_open() == {"M2"}


def test_a_detection_that_may_not_open_only_extends() -> None:
    book = IncidentBook(W)
    assert book.detect(detection(0, opens=False), "", 1).states == []
    book.detect(detection(1), "", 2)
    assert book.detect(detection(2, opens=False), "", 3).states[-1]["detections"] == 2


# -- early detection ----------------------------------------------------------------------------------

def _reference_completions(temps: list[float], rule: ThresholdRule = OVERHEAT) -> list[tuple[int, int]]:
    """(window of the completing run's last held reading, completion event time) per run, by a plain loop over
    1 Hz readings at BASE + i s: a value holds until the next reading."""
    found, start, fired = [], None, False
    for i, temp in enumerate(temps):
        ts = BASE + i * 1000
        if start is not None and not fired and ts - start >= rule.for_seconds * 1000:
            previous = ts - 1000
            found.append((previous - previous % W, start + int(rule.for_seconds * 1000)))
            fired = True
        if temp > rule.threshold:
            if start is None:
                start, fired = ts, False
        else:
            start = None
    return found


def _early(temps: list[float], cuts: list[int], rule: ThresholdRule = OVERHEAT) -> list[tuple[int, int]]:
    breaches = EarlyBreaches(1)
    breaches.grow(1)
    found = []
    bounds = [0, *sorted(set(cuts)), len(temps)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if a == b:
            continue
        ts = BASE + np.arange(a, b, dtype=np.int64) * 1000
        sensors = {"temperature": np.asarray(temps[a:b], dtype=float)}
        for d in breaches.observe([rule], np.zeros(b - a, dtype=np.int32), ts, np.arange(a, b), sensors,
                                  np.array(["pump"], dtype=object), W):
            found.append((d.window_start, d.completed_ts))
    return found


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.tuples(st.booleans(), st.integers(1, 45)), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_early_detection_matches_a_plain_loop_whatever_the_batches(runs: list[tuple[bool, int]], cuts: list[int]) -> None:
    temps = [99.0 if hot else 60.0 for hot, length in runs for _ in range(length)]
    expected = _reference_completions(temps)
    assert _early(temps, [c for c in cuts if c < len(temps)]) == expected
    assert _early(temps, []) == expected


def test_early_detection_opens_in_the_window_the_closed_evaluation_fires_first() -> None:
    """Readings every second: the closed-window rule evaluation (flows.rules) fires first in the window the early
    detection names, one window length earlier in wall time (or more)."""
    temps = [60.0] * 13 + [99.0] * 37 + [60.0] * 40
    shard = ShardWindows(WindowConfig(window_ms=W, lateness_ms=0), [OVERHEAT], {})
    table = pa.table({
        "machine_id": ["M1"] * len(temps), "ts": BASE + np.arange(len(temps), dtype=np.int64) * 1000,
        "seq": np.arange(len(temps)), "status": ["running"] * len(temps), "temperature": temps,
        **{s: [1.0] * len(temps) for s in SENSORS if s != "temperature"},
    })
    added, closing = shard.add(table, now_s=0.0), shard.close(0.0, flush_all=True)
    early = (added.early or []) + (closing.early or [])  # held until the machine's earlier windows closed
    closed = closing.alerts
    assert closed is not None
    first_closed = min(closed["window_start"].cast(pa.int64()).to_pylist())
    assert [d.window_start for _, _, d in early] == [first_closed] == [BASE + 30_000]
    assert early[0][2].completed_ts == BASE + 33_000


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(300, 2_600), st.booleans()), min_size=5, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=5),
)
def test_every_early_detection_names_a_window_the_closed_evaluation_fires_in(
    steps: list[tuple[int, bool]], cuts: list[int]
) -> None:
    """Off-grid timestamps (readings 0.3-2.6 s apart, windows starting between readings): the early detection's
    window always has a closed-window alert for the rule, and it is the first alert of its run."""
    ts = BASE + 700 + np.cumsum([step for step, _ in steps]).astype(np.int64)
    temps = [99.0 if hot else 60.0 for _, hot in steps]
    shard = ShardWindows(WindowConfig(window_ms=W, lateness_ms=0), [OVERHEAT], {})
    table = pa.table({
        "machine_id": ["M1"] * len(ts), "ts": ts, "seq": np.arange(len(ts)), "status": ["running"] * len(ts),
        "temperature": temps, **{s: [1.0] * len(ts) for s in SENSORS if s != "temperature"},
    })
    early, alerts = [], []
    bounds = [0, *sorted({c for c in cuts if c < len(ts)}), len(ts)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        for output in (shard.add(table.slice(a, b - a), 0.0), shard.close(0.0)):
            early += [d.window_start for _, _, d in output.early or []]
            alerts += output.alerts["window_start"].cast(pa.int64()).to_pylist() if output.alerts is not None else []
    final = shard.close(0.0, flush_all=True)
    early += [d.window_start for _, _, d in final.early or []]
    alerts += final.alerts["window_start"].cast(pa.int64()).to_pylist() if final.alerts is not None else []
    assert set(early) <= set(alerts)
    # The first alert of each run of consecutive alert windows is an early detection's window.
    firsts = [w for w in sorted(alerts) if w - W not in alerts]
    assert set(firsts) <= set(early) | {max(alerts, default=None)}


# -- the flow -----------------------------------------------------------------------------------------

def _episodes() -> tuple[list[bytes], list[tuple[str, str, int, int]]]:
    """Readings at 1 Hz for 6 machines, and the expected (machine, rule, opening window, completion) incidents,
    computed from the breach intervals by the rules' arithmetic (for_seconds after the start; the window of the
    last reading before the completion)."""
    rng = np.random.default_rng(3)
    episodes = {"A": [(30, 80)], "B": [(15, 30)], "C": [(40, 70), (180, 230)], "D": [], "E": [(100, 121)],
                "F": [(5, 45), (60, 90)]}
    messages, expected = [], []
    for machine, spans in episodes.items():
        for i in range(300):
            hot = any(a <= i < b for a, b in spans)
            reading = {"v": 1, "machine_id": machine, "ts": BASE + i * 1000, "seq": i,
                       "temperature": 99.0 + rng.random() if hot else 60.0, "pressure": 5.0, "vibration": 3.0,
                       "speed": 1000.0, "power": 10.0, "status": "running"}
            messages.append(encode(reading))
        last_window = None
        for a, b in spans:
            if b - a < 20:
                continue  # never held for 20 s
            window = BASE + ((a + 19) * 1000) // W * W
            end_window = BASE + ((b - 1) * 1000) // W * W
            if last_window is not None and window - last_window <= 6 * W:
                last_window = end_window  # within 6 windows of the previous detection: the same incident
                continue
            expected.append((machine, "overheat_critical", window, BASE + (a + 20) * 1000))
            last_window = end_window
    # Interleave machines as a broker would (time order).
    order = sorted(range(len(messages)), key=lambda k: (k % 300, k // 300))
    return [messages[k] for k in order], sorted(expected)


def _transitions(result) -> list[tuple]:
    events = result.incident_events
    return sorted(
        (r.incident_id, r.version, r.transition, r.status, r.detections, r.first_seen_ts, r.last_seen_ts,
         r.resolved_reason if isinstance(r.resolved_reason, str) else None)
        for r in events.itertuples()
    )


def test_flow_incidents_on_one_worker_and_a_cluster_do_not_depend_on_batches() -> None:
    messages, expected = _episodes()
    rules = [r for r in load_rules(PACKAGED_RULES_FILE) if r.id == "overheat_critical"]
    single = run_pipeline(batches_of(messages, 37), config(rules=rules, lateness_ms=1000))
    opened = single.incident_events[single.incident_events["transition"] == "opened"]
    columns = ("machine_id", "rule_id", "opened_window_start", "first_seen_ts")
    assert sorted(zip(*(opened[c] for c in columns))) == expected
    resolved = single.incident_events[single.incident_events["transition"] == "resolved"]
    assert sorted(resolved["incident_id"]) == sorted(opened["incident_id"]), "every episode ends (quiet)"
    assert set(resolved["resolved_reason"]) == {"quiet"}
    assert len(single.alerts) > 2 * len(opened), "incidents are fewer than the raw per-window alerts"
    cluster = run_pipeline(batches_of(messages, 13), config(rules=rules, lateness_ms=1000, shards=5), workers=3)
    assert _transitions(cluster) == _transitions(single)
