"""`make bench`: engine throughput (project flow vs per-event flow), the cost of recovery snapshots and the
recovery store's size, replay speed, anomaly-model quality on held-out seeds, the spec variants on the
tuning seeds, and end-to-end latency.

    python -m bench.run                                       # every section (long)
    python -m bench.run --only recovery-cost [--readings N]   # one section (or several)
    python -m bench.run --skip-e2e --skip-quality             # all but some
    python -m bench.run --only soak --soak-minutes 10         # the soak, shorter than its default 30 minutes

Sections: engine, recovery-cost, replay, model-quality, tuning, end-to-end, soak (`bench/soak.py`: the live flow
at `--soak-rate` readings/s, default 20,000, for `--soak-minutes`, default 30; series in bench/results/soak/),
incident-noise (`bench/incident_noise.py`: incidents vs raw detections on a simulated hour of 500 machines),
incident-latency (`bench/incident_latency.py`: from a threshold condition completing to the incident on the topic
and in ClickHouse, through the broker at 50,000 readings/s, recovery on, median of 3 runs),
dashboard-queries (`bench/dashboard_queries.py`: every Grafana panel and alert-rule query, 5 runs each, over 1 h and
24 h of a 500-machine hour produced through the broker and the flow into chDB),
real-data (`bench/real_data.py`: the packaged models on SKAB and NAB from ../shared/datasets, skipped when absent),
sim-realism (`bench/sim_realism.py`: nuisance faults and transport imperfections on, sensor health, precision at a
realistic prevalence),
live-scaling (`bench/live_scaling.py`: `plantpulse run` as 1 and as 2 processes, StatefulSet environment on loopback,
reading the same backlog of `--scaling-readings` readings, default 1,000,000, of `--scaling-machines` machines, default
2,000, from the embedded broker; `--runs` interleaved runs each).
`--readings N` sets the input of engine, replay and recovery-cost (defaults: 2,000,000 for engine and replay, 8,000,000 for
recovery-cost, whose 10 s snapshot interval needs a long input; `--recovery-readings` sets it alone).

Results go to `bench/results/latest.json` and `bench/results/run-<UTC time>.json`, both rewritten after each
section, so an interrupted run keeps what it finished (`--results-dir DIR` sends a trial run's files to DIR;
`bench.model_quality` itself always writes its rows to bench/results/model_quality.json). Every section
carries its provenance: when it was measured, at which commit (and whether the tree was dirty), by which
command, and the command that measures it alone again. A partial run never passes older figures off as
its own: the sections it did not measure move under `previous` in latest.json, each still with the
provenance of the run that measured it, and the run file holds only what this run measured (layout:
`bench/results_file.py`). At the end, the README's benchmark blocks are regenerated from latest.json
(`python -m bench.readme`), unless the run went to another `--results-dir`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from bench import dashboard_queries, incident_latency, incident_noise, measure, readme, real_data, sim_realism, soak
from bench.results_file import RESULTS, command_line, git_state, load, provenance, utc_now, write

# command-line name -> results key
SECTION_NAMES = {
    "engine": "engine",
    "recovery-cost": "recovery_cost",
    "replay": "replay",
    "model-quality": "model_quality",
    "tuning": "tuning",
    "end-to-end": "end_to_end",
    "soak": "soak",
    "incident-noise": "incident_noise",
    "incident-latency": "incident_latency",
    "dashboard-queries": "dashboard_queries",
    "real-data": "real_data",
    "sim-realism": "sim_realism",
    "device-auth": "device_auth",
    "live-scaling": "live_scaling",
}
SKIP_FLAGS = {"engine": "skip_engine", "recovery-cost": "skip_recovery_cost", "replay": "skip_replay",
              "model-quality": "skip_quality", "tuning": "skip_tuning", "end-to-end": "skip_e2e", "soak": "skip_soak",
              "incident-noise": "skip_incident_noise", "incident-latency": "skip_incident_latency",
              "dashboard-queries": "skip_dashboard_queries", "real-data": "skip_real_data",
              "sim-realism": "skip_sim_realism", "device-auth": "skip_device_auth",
              "live-scaling": "skip_live_scaling"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTION_NAMES), metavar="SECTION",
                        type=lambda name: name.replace("_", "-"),  # incident_noise as well as incident-noise
                        help=f"measure only these sections ({', '.join(SECTION_NAMES)})")
    parser.add_argument("--readings", type=int, default=None,
                        help="input readings of engine, replay and recovery-cost (defaults 2M, 2M, 8M)")
    parser.add_argument("--recovery-readings", type=int, default=None,
                        help="input of recovery-cost alone: long enough for several 10 s snapshot intervals")
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-event-runs", type=int, default=1)
    parser.add_argument("--soak-minutes", type=float, default=30.0, help="length of the soak (default 30)")
    parser.add_argument("--soak-rate", type=int, default=20_000, help="readings/s of the soak (default 20,000)")
    parser.add_argument("--scaling-readings", type=int, default=1_000_000,
                        help="backlog of live-scaling, read by 1 and by 2 processes (default 1,000,000)")
    parser.add_argument("--scaling-machines", type=int, default=2_000, help="machines of that backlog (default 2,000)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where latest.json and the run file go (default bench/results; another for trials)")
    for name, flag in SKIP_FLAGS.items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true",
                            help=f"do not measure {name} (latest.json keeps the old figures under 'previous')")
    args = parser.parse_args(argv)
    if args.only and any(getattr(args, flag) for flag in SKIP_FLAGS.values()):
        parser.error("--only and --skip-* exclude each other")
    for flag in ("readings", "recovery_readings", "machines", "runs", "per_event_runs", "soak_minutes", "soak_rate",
                 "scaling_readings", "scaling_machines"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    return args


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [name for name in SECTION_NAMES if name in args.only]
    return [name for name, flag in SKIP_FLAGS.items() if not getattr(args, flag)]


def plan(args: argparse.Namespace) -> dict[str, tuple[str, Callable[[], dict]]]:
    """For each command-line section name: (the command measuring it alone, a function measuring it)."""
    readings = args.readings or 2_000_000
    recovery_readings = args.recovery_readings or args.readings or 8_000_000
    common = f"--machines {args.machines} --runs {args.runs}"
    return {
        "engine": (f"python -m bench.run --only engine --readings {readings} {common} "
                   f"--per-event-runs {args.per_event_runs}",
                   lambda: measure.engine(readings, args.machines, args.runs, args.per_event_runs)),
        "recovery-cost": (f"python -m bench.run --only recovery-cost --recovery-readings {recovery_readings} {common}",
                          lambda: measure.recovery_cost(recovery_readings, args.machines, args.runs)),
        "replay": (f"python -m bench.run --only replay --readings {readings} {common}",
                   lambda: measure.replay_speed(readings, args.machines, args.runs)),
        "model-quality": ("python -m bench.run --only model-quality", measure.model_quality),
        "tuning": ("python -m bench.run --only tuning", measure.tuning),
        "end-to-end": ("python -m bench.run --only end-to-end", measure.end_to_end),
        "soak": (f"python -m bench.run --only soak --soak-minutes {args.soak_minutes:g} --soak-rate {args.soak_rate}",
                 lambda: soak.run_soak(soak.SoakConfig(minutes=args.soak_minutes, rate=args.soak_rate),
                                       directory=args.results_dir / "soak")),
        "incident-noise": (incident_noise.NoiseConfig().reproduce(), incident_noise.measure),
        "incident-latency": ("python -m bench.run --only incident-latency", incident_latency.measure),
        "dashboard-queries": (dashboard_queries.reproduce(), dashboard_queries.measure),
        "real-data": ("python -m bench.run --only real-data", real_data.measure),
        "sim-realism": ("python -m bench.run --only sim-realism", sim_realism.measure),
        "device-auth": (f"python -m bench.run --only device-auth --readings {readings} {common}",
                        lambda: measure.device_auth(readings, args.machines, args.runs)),
        "live-scaling": (f"python -m bench.run --only live-scaling --scaling-readings {args.scaling_readings} "
                         f"--scaling-machines {args.scaling_machines} --runs {args.runs}",
                         lambda: measure.live_scaling(args.scaling_readings, args.scaling_machines, args.runs)),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = selected(args)
    if not names:
        raise SystemExit("bench.run: every section is skipped; nothing to measure")
    load(args.results_dir / "latest.json")  # refuse a results file of another format before measuring for an hour
    args.results_dir.mkdir(parents=True, exist_ok=True)
    steps = plan(args)
    run = {"date": utc_now(), **git_state(), "command": command_line()}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    measured: dict[str, dict] = {}
    for name in names:
        reproduce, measure_section = steps[name]
        git = git_state()  # per section: a long run may see the tree change under it
        section = measure_section()
        key = SECTION_NAMES[name]
        measured[key] = {"provenance": provenance(git, reproduce), **section}
        if key == "model_quality":  # its per-run rows stay in model_quality.json: say which run they are
            rows = json.loads((RESULTS / "model_quality.json").read_text())
            (args.results_dir / "model_quality.json").write_text(
                json.dumps({"provenance": measured[key]["provenance"], **rows}, indent=2) + "\n")
        latest, run_file = write(measured, run, stamp=stamp, results_dir=args.results_dir)
        print(f"{name}: written to {latest} and {run_file}", flush=True)
    print(json.dumps({key: measured[key] for key in measured}, indent=2))
    if args.results_dir.resolve() == RESULTS.resolve():  # a trial elsewhere must not reach the README
        print("README.md: benchmark blocks regenerated" if readme.update() else "README.md: unchanged", flush=True)


if __name__ == "__main__":
    main()
