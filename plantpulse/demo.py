"""`plantpulse demo`: broker + flow + simulator on embedded defaults, a live view, and a summary.

The flow and the simulator run as child processes (each in its own process group, so Ctrl-C and errors
stop everything and leave nothing behind). The live view reads the flow's Prometheus endpoint and the
`alerts` topic; the summary queries ClickHouse after the flow has released the embedded database.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from connectors.broker import EmbeddedBroker, free_port
from connectors.clickhouse import run_sql
from connectors.kafka import read_topic
from connectors.topics import ensure_topics
from plantpulse.output import result_table
from plantpulse.settings import Settings
from sim.fleet import build_fleet, write_fleet_csv

EXAMPLE_QUERIES = [
    "SELECT count() FROM window_stats FINAL",
    "SELECT rule_id, severity, count() FROM alerts FINAL GROUP BY rule_id, severity ORDER BY count() DESC",
    "SELECT machine_id, max(vibration_max) AS peak FROM window_stats FINAL GROUP BY machine_id ORDER BY peak DESC LIMIT 10",
    "SELECT state, count() FROM machine_state FINAL GROUP BY state",
]


@dataclass
class LiveCounters:
    received: float = 0.0
    accepted: float = 0.0
    windows: float = 0.0
    rows_written: float = 0.0
    duplicates: float = 0.0
    dead_letters: dict[str, float] = field(default_factory=dict)
    alerts: float = 0.0


def run_demo(settings: Settings, duration: float | None, machines: int, rate: float, seed: int) -> None:
    console = Console()
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen] = []
    with EmbeddedBroker(log_dir=data_dir / "logs") as broker:
        metrics_port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "DATA_DIR": str(data_dir),
            "METRICS_PORT": str(metrics_port),
            "MACHINES_FILE": str(data_dir / "machines.csv"),
        }
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap, data_dir=data_dir, machines_file=data_dir / "machines.csv"
        )
        ensure_topics(settings)
        write_fleet_csv(settings.machines_file, build_fleet(machines, seed))
        console.print(f"[bold]PlantPulse demo[/] broker {broker.bootstrap} · data in {data_dir} · Ctrl-C stops")
        logs = data_dir / "logs"
        try:
            flow = _spawn([sys.executable, "-m", "plantpulse.cli", "run"], env, logs / "flow.log")
            children.append(flow)
            sim_args = [sys.executable, "-m", "plantpulse.cli", "sim", "--machines", str(machines), "--rate", str(rate),
                        "--seed", str(seed), "--faults", "all", "--fault-rate", "0.1",
                        "--imperfections", "duplicates=0.002,late=0.0005,out_of_order=0.01,malformed=0.001"]
            sim_args += ["--duration", str(duration)] if duration else ["--duration", str(10 * 365 * 86400)]
            simulator = _spawn(sim_args, env, logs / "sim.log")
            children.append(simulator)
            counters = _live(console, settings, metrics_port, flow, simulator, duration)
            _drain(console, settings, metrics_port, flow, counters)
        finally:
            for child in children:
                _stop(child)
        _summary(console, settings, counters)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("wb")
    return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(child: subprocess.Popen, timeout: float = 10.0) -> None:
    if child.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def scrape(port: int) -> LiveCounters | None:
    """Read the flow's Prometheus endpoint; None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    counters = LiveCounters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, sample.value
            if name == "plantpulse_readings_received_total":
                counters.received = value
            elif name == "plantpulse_readings_accepted_total":
                counters.accepted = value
            elif name == "plantpulse_windows_emitted_total":
                counters.windows = value
            elif name == "plantpulse_duplicates_total":
                counters.duplicates = value
            elif name == "plantpulse_dead_letters_total":
                counters.dead_letters[sample.labels["reason"]] = value
            elif name == "plantpulse_alerts_total":
                counters.alerts += value
            elif name == "plantpulse_clickhouse_rows_inserted_total" and sample.labels.get("table") == "window_stats":
                counters.rows_written = value
    return counters


def _live(console: Console, settings: Settings, port: int, flow: subprocess.Popen, simulator: subprocess.Popen,
          duration: float | None) -> LiveCounters:
    started = time.monotonic()
    previous, previous_at = 0.0, started
    counters = LiveCounters()
    top = collections.Counter()
    alert_offsets: dict[int, int] = {}
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while simulator.poll() is None:
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited with code {flow.returncode}; see {settings.data_dir}/logs/flow.log")
            time.sleep(1.0)
            counters = scrape(port) or counters
            now = time.monotonic()
            rate = (counters.received - previous) / max(now - previous_at, 1e-6)
            previous, previous_at = counters.received, now
            try:
                new_alerts = read_topic(settings, settings.alerts_topic, start_offsets=alert_offsets, timeout_s=2.0)
            except TimeoutError:
                # A busy broker did not answer in time: the offsets did not move, the next tick reads them.
                new_alerts = []
            for _, _offset, key, _value, _ in new_alerts:
                top[key.decode() if key else "?"] += 1
            live.update(_view(counters, rate, top, now - started, duration))
    if simulator.returncode not in (0, None):
        raise RuntimeError(f"the simulator exited with code {simulator.returncode}; see {settings.data_dir}/logs/sim.log")
    return counters


def _drain(console: Console, settings: Settings, port: int, flow: subprocess.Popen, counters: LiveCounters) -> None:
    """Wait until the flow has emitted the windows of the last readings (idle close) and written them."""
    console.print("simulator done; waiting for the last windows to close and reach ClickHouse …")
    deadline = time.monotonic() + settings.idle_close_seconds + 30
    stable_since, last_rows = time.monotonic(), -1.0
    while time.monotonic() < deadline and flow.poll() is None:
        time.sleep(1.0)
        current = scrape(port) or counters
        counters.__dict__.update(current.__dict__)
        if current.rows_written != last_rows:
            stable_since, last_rows = time.monotonic(), current.rows_written
        elif time.monotonic() - stable_since > settings.idle_close_seconds + 3 and current.rows_written >= current.windows:
            break


def _view(counters: LiveCounters, rate: float, top: collections.Counter, elapsed: float, duration: float | None) -> Group:
    table = Table(title=f"PlantPulse live · {elapsed:.0f} s" + (f" of {duration:.0f} s" if duration else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("readings/s", f"{rate:,.0f}")
    table.add_row("readings received", f"{counters.received:,.0f}")
    table.add_row("windows emitted", f"{counters.windows:,.0f}")
    table.add_row("window rows in ClickHouse", f"{counters.rows_written:,.0f}")
    table.add_row("duplicates dropped", f"{counters.duplicates:,.0f}")
    table.add_row("dead letters", ", ".join(f"{k}={v:,.0f}" for k, v in sorted(counters.dead_letters.items())) or "0")
    table.add_row("alerts", f"{counters.alerts:,.0f}")
    anomalous = Table(title="most alerted machines")
    anomalous.add_column("machine")
    anomalous.add_column("alerts", justify="right")
    for machine, count in top.most_common(8):
        anomalous.add_row(machine, str(count))
    return Group(table, anomalous)


def _summary(console: Console, settings: Settings, counters: LiveCounters) -> None:
    console.rule("summary")
    console.print(
        f"readings received {counters.received:,.0f} · accepted {counters.accepted:,.0f} · "
        f"duplicates {counters.duplicates:,.0f} · dead letters {sum(counters.dead_letters.values()):,.0f} "
        f"{ {reason: int(n) for reason, n in sorted(counters.dead_letters.items())} }"
    )
    for query in EXAMPLE_QUERIES[:2]:
        columns, rows = run_sql(settings, query)
        console.print(f"\n[bold]{query}[/]")
        console.print(result_table(columns, rows))
    console.print("\nTry more (the embedded ClickHouse is free now):")
    for query in EXAMPLE_QUERIES:
        console.print(f'  .venv/bin/plantpulse sql "{query}"')
