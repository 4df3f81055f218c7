"""Replay speed in its own process: `python -m bench.replay_speed RECORDING`.

Runs what `plantpulse replay RECORDING` runs for one grid point (read the recording, then the replay flow:
decode + validate, windows, rules and the anomaly models of the packaged spec, one worker) and prints
one JSON line: readings/s of the flow (the input already in memory, as the CLI's progress bar counts it)
and of the whole command path including reading the file.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import replace

import orjson

from connectors.replay_sources import open_input
from flows.pipeline import PipelineConfig
from flows.replay import replay
from plantpulse.settings import Settings


def main() -> None:
    path = sys.argv[1]
    started = time.perf_counter()
    data = open_input(path)
    read_s = time.perf_counter() - started
    base = PipelineConfig.from_settings(Settings(machines_file=None, max_event_age_seconds=0))
    config = replace(base, machine_types=data.machine_types)
    flow_started = time.perf_counter()
    out = replay(data.items, config, raw=data.raw)
    flow_s = time.perf_counter() - flow_started
    print(orjson.dumps({
        "readings": data.readings,
        "windows_scored": out.scores.num_rows,
        "anomaly_alerts": int(sum(k == "anomaly" for k in out.alerts["kind"].to_pylist())),
        "read_seconds": round(read_s, 3),
        "seconds": round(flow_s, 3),
        "events_per_s": round(data.readings / flow_s),
        "events_per_s_with_read": round(data.readings / (read_s + flow_s)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }).decode())


if __name__ == "__main__":
    main()
