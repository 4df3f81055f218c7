"""The command line as users run it: broker, run (with a recovery store, also as `python -m bytewax.run`),
sim, signals, exit codes.

Why SIGINT/SIGTERM exits used to be flaky here (each case is checked below):

- A signal that arrived during the flow's start-up killed the process: the stop handlers were installed only
  just before Bytewax started, so a SIGINT in the start-up was a KeyboardInterrupt outside any handler (click's
  "Aborted!", exit 1 or 130) and a SIGTERM the default death (-15). The metrics endpoint comes up *inside*
  start-up (while the flow is built), and the old resumed-run check signalled a fixed 2 s after it answered:
  on a loaded machine that was still start-up. `plantpulse run` now installs the handlers first; a stop asked
  for before the flow started ends it there, with exit 0.
- Before the clean stop (`plantpulse.stopping`), SIGINT raised KeyboardInterrupt wherever the single worker
  (the main thread) was in Python step or sink code; the sinks' `close()` then ran while Rust unwound that
  panic, and any exception out of a `close()` (a second signal's KeyboardInterrupt included) aborted the process
  ("panic in a destructor during cleanup", SIGABRT, exit -6). The first signal now raises nothing.
- `plantpulse broker` waited for tansu in one blocking waitpid(): a SIGINT landing just before that syscall is
  handled only when it returns (Python runs signal handlers between bytecodes), i.e. never, as tansu runs on.
  Seen once in ~380 start/Ctrl-C cycles (and once in 1,800 with a bare "print, then Popen.wait()" script);
  it now waits in 0.5 s slices (Popen polls then).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.broker import free_port
from sim import build_fleet, read_fleet_csv
from tests.processes import PLANTPULSE, flow_env, scrape

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BYTEWAX_RUN = [sys.executable, "-m", "bytewax.run", "flows.telemetry:flow"]
RECEIVED = "plantpulse_readings_received_total"
LAKE_ROWS = "plantpulse_lake_rows_written_total"


def _stop(process: subprocess.Popen, sig: signal.Signals = signal.SIGINT) -> int:
    os.killpg(process.pid, sig)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(port: int, process: subprocess.Popen, log: Path, done: Callable[[dict[str, float]], bool],
              timeout_s: float = 90) -> dict[str, float]:
    """The flow's metrics once `done(metrics)` holds; fails if the process exits or time runs out first."""
    deadline = time.monotonic() + timeout_s
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        samples = scrape(port) or {}
        if samples and done(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout_s} s (last {samples.get(RECEIVED)} received): "
                         f"{log.read_text()[-2000:]}")


def _sim(env: dict[str, str], machines: int, count: int, seed: int) -> subprocess.CompletedProcess:
    done = subprocess.run(PLANTPULSE + ["sim", "--machines", str(machines), "--as-fast-as-possible", "--count",
                                        str(count), "--seed", str(seed)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_broker_command_prints_its_address_and_stops_on_ctrl_c() -> None:
    port = free_port()
    process = subprocess.Popen(PLANTPULSE + ["broker", "--port", str(port)], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline().strip() == f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}"
    finally:
        assert _stop(process) == 0


@pytest.mark.parametrize("command", [BYTEWAX_RUN], ids=["bytewax-run"])
def test_run_initialises_recovery_store_and_resumes_from_it(kafka_settings, tmp_path: Path,
                                                            command: list[str]) -> None:
    """Positive controls only: the first run consumes the topic and a snapshot covers it (its lake rows are
    written at snapshot time), then stops on SIGTERM; more readings are produced; the resumed run (SIGINT
    stop) must consume exactly those: none (a hung flow) or more (no recovery: the topic again) fails.
    `python -m bytewax.run` gets RECOVERY_DIR, RECOVERY_PARTITIONS and SNAPSHOT_INTERVAL_SECONDS as `plantpulse run`
    does. The same sequence with `plantpulse run` (store of RECOVERY_PARTITIONS files, SIGTERM, exact resume,
    SIGINT) is tests/test_quiet_stream.py::test_a_clean_stop_writes_what_is_due_and_a_resume_stays_exactly_once."""
    settings = kafka_settings(create_topics=True, partitions=2)
    recovery = tmp_path / "recovery"
    env = flow_env(settings, tmp_path, RECOVERY_DIR=str(recovery), RECOVERY_PARTITIONS="3",
                   SNAPSHOT_INTERVAL_SECONDS="1")
    _sim(env, machines=20, count=4000, seed=2)
    for attempt, (new, stop_signal) in enumerate(((4000, signal.SIGTERM), (1500, signal.SIGINT))):
        if attempt == 1:
            _sim(env, machines=20, count=new, seed=3)
        port, log = free_port(), tmp_path / f"run-{attempt}.log"
        process = _start(command, {**env, "METRICS_PORT": str(port)}, log)
        try:
            # Every new reading read and written to the lake, i.e. snapshotted (the sim makes no invalid ones).
            metrics = _wait_for(port, process, log, lambda m, n=new: m.get(RECEIVED, 0) >= n and m.get(LAKE_ROWS, 0) >= n)
        finally:
            code = _stop(process, stop_signal)
        assert code == 0, log.read_text()[-2000:]
        # The poll that found the new readings took whole partitions: a resume from the wrong offsets
        # could not land on exactly `new`.
        assert (metrics[RECEIVED], metrics[LAKE_ROWS]) == (new, new)
        if attempt == 0:
            assert len(list(recovery.glob("part-*.sqlite3"))) == 3


def test_a_signal_during_start_up_is_a_clean_stop(kafka_settings, tmp_path: Path) -> None:
    """SIGTERM (what Kubernetes sends) and SIGINT as soon as the metrics endpoint answers, i.e. while the flow
    is still being built: exit 0 with the start-up ended, not a traceback or a death by signal."""
    settings = kafka_settings(create_topics=True, partitions=1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        port, log = free_port(), tmp_path / f"run-{sig.name}.log"
        process = _start(PLANTPULSE + ["run"], flow_env(settings, tmp_path, METRICS_PORT=str(port)), log)
        _wait_for(port, process, log, lambda m: True)
        assert _stop(process, sig) == 0, log.read_text()[-2000:]
        assert "Traceback" not in log.read_text() and "panicked" not in log.read_text(), log.read_text()[-2000:]


def test_bytewax_run_refuses_recovery_options_that_contradict_the_settings(tmp_path: Path) -> None:
    env = {**os.environ, "RECOVERY_DIR": str(tmp_path / "recovery"), "DATA_DIR": str(tmp_path), "METRICS_PORT": "0",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    for options, names in ((["-r", str(tmp_path / "other"), "-s", "10", "-b", "0"], "RECOVERY_DIR"),
                           (["-s", "5"], "SNAPSHOT_INTERVAL_SECONDS")):
        done = subprocess.run(BYTEWAX_RUN + options, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(done.stderr.strip().splitlines()) == 1 and names in done.stderr, done.stderr
        assert done.stderr.startswith("plantpulse: python -m bytewax.run was given")


def test_sim_keeps_the_machines_file_in_step_with_the_fleet(kafka_settings, tmp_path: Path) -> None:
    """Machine types depend on --seed and --machines: a second sim with another fleet replaces the file
    (and says so), the same fleet leaves it alone."""
    settings = kafka_settings(create_topics=True, partitions=1)
    env = flow_env(settings, tmp_path)
    machines_file = tmp_path / "machines.csv"
    first = _sim(env, machines=30, count=60, seed=1)
    assert read_fleet_csv(machines_file) == build_fleet(30, seed=1) and first.stderr == ""
    second = _sim(env, machines=45, count=90, seed=2)
    assert read_fleet_csv(machines_file) == build_fleet(45, seed=2)
    assert "listed a different fleet of 30 machines" in second.stderr and "replaced" in second.stderr
    again = _sim(env, machines=45, count=90, seed=2)
    assert again.stderr == "" and read_fleet_csv(machines_file) == build_fleet(45, seed=2)


def test_bad_arguments_and_unreachable_services_exit_with_one_line() -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    for args in (["sim", "--machines", "3", "--count", "5"], ["run"]):
        result = subprocess.run(PLANTPULSE + args, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("plantpulse: ")


def test_sim_record_only_needs_no_kafka_and_keeps_the_first_minutes_healthy(tmp_path: Path) -> None:
    """`--record-only` writes a labelled recording with Kafka unreachable; `--faults-after` delays every
    fault onset (checked on the labels against the recording's own first timestamps)."""
    import pyarrow.parquet as pq

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "DATA_DIR": str(tmp_path)}
    path = tmp_path / "run.parquet"
    args = ["sim", "--machines", "40", "--duration", "900", "--seed", "3", "--faults", "overheating,bearing_wear",
            "--fault-rate", "0.5", "--faults-after", "300", "--record-only", "--record", str(path)]
    done = subprocess.run(PLANTPULSE + args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    readings = pq.read_table(path, columns=["machine_id", "ts"]).to_pandas()
    labels = pq.read_table(path.with_suffix(".labels.parquet")).to_pandas()
    assert len(readings) == 40 * 900 and len(labels) > 0
    first_ts = int(readings["ts"].min())
    assert (labels["start_ts"] >= first_ts + 300_000).all(), labels["start_ts"].min() - first_ts
    assert (labels["start_ts"] < first_ts + 345_000).any(), "the first onsets follow within 45 s"
    bad = subprocess.run(PLANTPULSE + ["sim", "--count", "5", "--record-only"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("plantpulse: --record-only needs --record")
