"""`bench.real_data` without the real data sets: it skips with one line when they are absent, and on small
generated files in their layout it replays and scores exactly what `models.benchmark_scores` gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import real_data
from bench.readme_format import Results
from bench.readme_real_data import real_data as real_data_block

SKAB_HEADER = ("datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;"
               "Volume Flow RateRMS;anomaly;changepoint")


def test_absent_data_sets_are_skipped_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = real_data.measure(tmp_path / "nowhere")
    printed = capsys.readouterr().out.strip().splitlines()
    assert list(out) == ["skipped"] and printed == [out["skipped"]]
    assert str(tmp_path / "nowhere") in out["skipped"]
    block = real_data_block(Results({"real_data": {"provenance": {"date": "2026-11-26T00:00:00Z", "commit": None,
                                                                    "dirty": None, "reproduce": "x"}, **out}}, None))
    assert "Not measured in the latest run" in block


def _skab_file(path: Path, rows: int, fault_from: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = [SKAB_HEADER]
    for i in range(rows):
        load = 1.0 + 0.01 * np.sin(i / 30)
        current, flow = 2.0 * load + rng.normal(0, 0.01), 30.0 * load + rng.normal(0, 0.1)
        anomaly = i >= fault_from
        if anomaly:
            flow -= 3.0  # the flow falls (by ten times its spread) while the current holds
        values = [0.03 + rng.normal(0, 0.001), 0.27 + rng.normal(0, 0.001), current, 0.1 + rng.normal(0, 0.01),
                  70 + rng.normal(0, 0.1), 25 + rng.normal(0, 0.1), 230 + rng.normal(0, 0.5), flow]
        second = f"2020-03-0{seed} 10:{i // 60:02d}:{i % 60:02d}"
        lines.append(";".join([second, *(f"{v:.5f}" for v in values), f"{float(anomaly)}", "0.0"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_generated_files_in_the_data_sets_layout_are_replayed_and_scored(tmp_path: Path) -> None:
    _skab_file(tmp_path / "skab/valve2/0.csv", rows=900, fault_from=700, seed=1)
    _skab_file(tmp_path / "skab/other/1.csv", rows=900, fault_from=650, seed=2)
    hours = 1500
    temperature = 70 + 3 * np.sin(np.arange(hours) * 2 * np.pi / 24) + np.random.default_rng(3).normal(0, 0.3, hours)
    temperature[1200:1220] += 15.0  # the labelled failure
    nab = tmp_path / real_data.NAB_FILE
    nab.parent.mkdir(parents=True)
    stamps = np.datetime64("2014-01-01T00:00") + np.arange(hours).astype("timedelta64[h]")
    nab.write_text("timestamp,value\n" + "".join(f"{str(t).replace('T', ' ')}:00,{v:.4f}\n"
                                                 for t, v in zip(stamps, temperature)))
    window = [f"{str(stamps[1150]).replace('T', ' ')}:00.000000", f"{str(stamps[1250]).replace('T', ' ')}:00.000000"]
    nab.with_suffix(".windows.json").write_text(json.dumps({"realKnownCause/" + nab.name: [window]}))

    skab = real_data.measure_skab(tmp_path, {})
    assert skab["files"] == 2 and skab["readings"] == 1800
    assert skab["tp"] + skab["fn"] == (900 - 700) + (900 - 650), "every labelled test reading is counted once"
    assert skab["tp"] + skab["fp"] + skab["fn"] + skab["tn"] == 2 * (900 - 400), "the first 400 rows train"
    assert skab["f1"] == pytest.approx(2 * skab["tp"] / (2 * skab["tp"] + skab["fp"] + skab["fn"]), abs=1e-4)
    assert skab["f1"] > 0.7, "a flow falling while the current holds is caught"
    assert set(skab["by_folder"]) == {"valve2", "other"}
    assert "--scoring skab" in skab["reproduce"]
    nab_result = real_data.measure_nab(tmp_path, {})
    assert nab_result["tp"] == 1 and nab_result["fn"] == 0, "the labelled failure is detected"
    assert nab_result["max_score_in_windows"][0] > nab_result["max_score_outside_windows"]
