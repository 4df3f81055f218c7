"""Threshold rules: breaches held for N seconds raise one alert per window, across window boundaries."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flows.rules import RulesFileError, load_rules
from tests.flowkit import batches_of, config, encode, readings_frame, run_pipeline
from tests.reference import threshold_alerts_reference

T0 = 1_700_000_000_000

RULES = """
[[rule]]
id = "hot"
sensor = "temperature"
op = ">"
threshold = 95.0
for_seconds = 8
severity = "critical"

[[rule]]
id = "leak"
sensor = "pressure"
op = "<"
threshold = 1.0
for_seconds = 5
severity = "warning"
machine_types = ["pump"]
"""


def breach_readings(seed: int) -> list[dict]:
    """Machines with random breach episodes of random lengths, some spanning window boundaries."""
    rng = random.Random(seed)
    readings = []
    episodes = {m: [(rng.randrange(0, 100), rng.randrange(1, 25)) for _ in range(3)] for m in range(12)}
    for second in range(120):
        for m in range(12):
            hot = any(start <= second < start + length for start, length in episodes[m])
            leak = any(start + 3 <= second < start + 3 + length for start, length in episodes[m])
            readings.append(
                {
                    "machine_id": f"M{m:03d}",
                    "ts": T0 + second * 1000 + rng.randrange(0, 300),
                    "seq": second,
                    "status": "running",
                    "temperature": 97.0 if hot else 70.0,
                    "pressure": 0.5 if leak else 4.0,
                }
            )
    return readings


@pytest.mark.parametrize("workers", [1, 3])
def test_alerts_equal_reference(tmp_path: Path, workers: int) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    rules = load_rules(tmp_path / "rules.toml")
    types = {f"M{m:03d}": ("pump" if m % 2 else "cnc") for m in range(12)}
    readings = breach_readings(seed=workers)
    result = run_pipeline(
        batches_of([encode(r) for r in readings], 40), config(rules=rules, machine_types=types, shards=5), workers
    )
    frame = readings_frame(readings)
    expected_hot = threshold_alerts_reference(frame, 10_000, "temperature", 95.0, None, 8)
    expected_leak = threshold_alerts_reference(frame, 10_000, "pressure", None, 1.0, 5, types, {"pump"})
    alerts = result.alerts

    def got(rule: str) -> set:
        chosen = alerts[alerts.rule_id == rule]
        return set(zip(chosen.machine_id, chosen.window_start))

    assert expected_hot and expected_leak  # the episodes do produce breaches
    assert got("hot") == expected_hot
    assert got("leak") == expected_leak
    assert alerts.alert_id.is_unique
    hot = alerts[alerts.rule_id == "hot"]
    assert (hot.value == 97.0).all() and (hot.duration_s >= 8).all() and (hot.severity == "critical").all()


def test_bad_rules_file_names_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nid = "x"\nsensor = "humidity"\nop = ">"\nthreshold = 1\nseverity = "critical"\n')
    with pytest.raises(RulesFileError, match=r"rule #1 \(x\).*sensor='humidity'"):
        load_rules(path)
    path.write_text('[[rule]]\nid = "x"\nsensor = "rpm"\nop = ">"\nseverity = "critical"\n')
    with pytest.raises(RulesFileError, match="missing field 'threshold'"):
        load_rules(path)
