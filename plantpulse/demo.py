"""`plantpulse demo`: broker + flow + simulator on embedded defaults, a live view, and a summary.

The flow and the simulator (and, with `--notify`, the notifier) run as child processes, each in its own
process group, so Ctrl-C and errors stop everything and leave nothing behind. The live view reads the
flow's Prometheus endpoint and the `alerts` and `incidents` topics (only what is new at each refresh); the
summary queries ClickHouse after the flow has released the embedded database, and the demo ends by drawing the
Fleet now and Machine detail dashboards of the run to PNG (under DATA_DIR/snapshot) and printing their paths.

The demo shows anomaly incidents within its first two minutes: it writes a copy of the model specs with a
short warm-up (`DEMO_WARMUP_WINDOWS`) under DATA_DIR for its flow, and the simulator keeps the fleet healthy
until that warm-up is over (`--faults-after`), so the models learn healthy baselines first, as they would on
a working plant.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import traceback
import urllib.request
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from connectors.broker import EmbeddedBroker, free_port
from connectors.clickhouse import run_sql
from connectors.device_registry import KeyRegistry
from connectors.incident_feed import fold_incident
from connectors.kafka import read_topic
from connectors.topics import ensure_topics
from models.spec import load_model_specs
from plantpulse.output import result_table
from plantpulse.settings import Settings
from sim.fleet import build_fleet, write_fleet_csv

EXAMPLE_QUERIES = [
    "SELECT count() FROM window_stats FINAL",
    "SELECT rule_id, severity, count() FROM alerts FINAL GROUP BY rule_id, severity ORDER BY count() DESC",
    "SELECT machine_id, max(vibration_max) AS peak FROM window_stats FINAL GROUP BY machine_id ORDER BY peak DESC LIMIT 10",
    "SELECT state, count() FROM machine_state FINAL GROUP BY state",
    "SELECT kind, rule_id, status, count() FROM incidents FINAL GROUP BY kind, rule_id, status "
    "ORDER BY kind, rule_id, status",
    "SELECT machine_id, rule_id, acknowledged_by, acknowledged_at - opened_at AS seconds_to_ack FROM incidents FINAL "
    "WHERE acknowledged_at IS NOT NULL ORDER BY opened_at DESC LIMIT 10",
    "SELECT kind, count() AS resolved, avg(resolved_at - opened_at) AS mean_seconds_open FROM incidents FINAL "
    "WHERE status = 'resolved' GROUP BY kind",
    "SELECT transition, actor, count() FROM incident_events GROUP BY transition, actor ORDER BY transition, actor",
]
# Scored windows before a machine's model may alert, in the demo only (the packaged specs say 20: 200 s).
# On the demo's fleet with faults after the warm-up, 4 to 8 windows detect the same faults at a similar
# false-alarm rate (`plantpulse replay --grid physics.warmup_windows=4,5,6,8` of a recording at the demo's
# 20 readings per machine-second), and 4 leave the faults time to show in a two-minute demo: a threshold
# incident needs a fault's ramp (>= 20 s) and the rule's 20 s hold after the onset.
DEMO_WARMUP_WINDOWS = 4
OPEN_INCIDENT_ROWS = 10  # the live view lists this many open incidents, then "+N more"
DEMO_WEBHOOK_URL_ENV = "PLANTPULSE_DEMO_WEBHOOK_URL"
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


@dataclass
class LiveCounters:
    received: float = 0.0
    accepted: float = 0.0
    windows: float = 0.0
    rows_written: float = 0.0
    duplicates: float = 0.0
    dead_letters: dict[str, float] = field(default_factory=dict)
    alerts: float = 0.0


@dataclass
class IncidentBoard:
    """Incidents folded from the `incidents` topic: each transition record carries the incident's whole state,
    the highest `version` per `incident_id` is its current state. Folding a record twice changes nothing, so
    a transition re-sent after a flow crash is not counted twice."""

    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_opened_at: dict[str, int] = field(default_factory=dict)  # kind -> earliest opened_at (epoch ms)

    def fold(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            fold_incident(self.current, row)
            kind, opened_at = row["kind"], row["opened_at"]
            self.first_opened_at[kind] = min(self.first_opened_at.get(kind, opened_at), opened_at)

    @property
    def opened(self) -> int:
        return len(self.current)

    @property
    def resolved(self) -> int:
        return sum(row["status"] == "resolved" for row in self.current.values())

    def open_incidents(self) -> list[dict[str, Any]]:
        """Incidents not resolved (open or acknowledged), newest first."""
        rows = [row for row in self.current.values() if row["status"] != "resolved"]
        rows.sort(key=lambda row: (row["opened_at"], row["incident_id"]), reverse=True)
        return rows


class NotificationReceiver:
    """The `--notify` demo's webhook endpoint: a local HTTP server (its own thread, while entered) that counts
    each POST, keeps the last one's `text` and appends the bodies to `log` (JSON lines)."""

    def __init__(self, log: Path) -> None:
        self.count = 0
        self.last = ""
        self.url = ""
        self._path = log
        self._lock = threading.Lock()

    def record(self, body: bytes) -> None:
        try:
            payload = orjson.loads(body)
            text = str(payload.get("text", "")) if isinstance(payload, dict) else ""
        except orjson.JSONDecodeError:
            text = body[:200].decode("utf-8", "replace")
        with self._lock:
            self.count += 1
            self.last = text or "(no text)"
            self._log.write(body.rstrip(b"\n") + b"\n")
            self._log.flush()

    def snapshot(self) -> tuple[int, str]:
        with self._lock:
            return self.count, self.last

    def __enter__(self) -> NotificationReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name for it
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                receiver.record(self.rfile.read(length))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # stderr lines would tear through the live view; the bodies go to the log file

        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self._path.open("ab")
        self._server = HTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free one
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/notifications"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()  # returns once serve_forever has stopped
        self._thread.join(5.0)
        self._server.server_close()
        self._log.close()


@dataclass
class _Live:
    """What the live view shows, updated once per refresh."""

    counters: LiveCounters = field(default_factory=LiveCounters)
    rate: float = 0.0
    elapsed: float = 0.0
    top: collections.Counter[str] = field(default_factory=collections.Counter)
    board: IncidentBoard = field(default_factory=IncidentBoard)
    alert_offsets: dict[int, int] = field(default_factory=dict)
    incident_offsets: dict[int, int] = field(default_factory=dict)
    notifier_note: str = ""  # why the notifier stopped, when it did


def issue_demo_keys(path: Path, machine_ids: list[str]) -> None:
    """A device key for every demo machine that has no active one (a rerun keeps the existing keys)."""
    registry = KeyRegistry.load(path)
    if registry.ensure(machine_ids) or not path.exists():
        registry.save(path)


def run_demo(
    settings: Settings, duration: float | None, machines: int, rate: float, seed: int, notify: bool = False
) -> None:
    console = Console()
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen] = []
    interrupted = False
    logs = data_dir / "logs"
    with (
        EmbeddedBroker(log_dir=logs) as broker,
        (NotificationReceiver(logs / "notifications.jsonl") if notify else nullcontext()) as receiver,
    ):
        metrics_port = free_port()
        models_file, default_warmup = write_demo_models(settings.models_file, data_dir / "demo-models.toml")
        faults_after = DEMO_WARMUP_WINDOWS * settings.window_seconds
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "DATA_DIR": str(data_dir),
            "METRICS_PORT": str(metrics_port),
            "MACHINES_FILE": str(data_dir / "machines.csv"),
            "MODELS_FILE": str(models_file),
        }
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap, data_dir=data_dir, machines_file=data_dir / "machines.csv"
        )
        ensure_topics(settings)
        fleet = build_fleet(machines, seed)
        write_fleet_csv(data_dir / "machines.csv", fleet)
        # Devices are authenticated in the demo too: each simulated machine gets a key, the simulator signs,
        # the flow verifies (the registry is a file in the demo's data directory, mode 0600).
        env["DEVICE_AUTH"], env["DEVICE_KEYS_FILE"] = "required", str(data_dir / "device-keys.json")
        issue_demo_keys(data_dir / "device-keys.json", [m.machine_id for m in fleet])
        console.print(f"[bold]PlantPulse demo[/] broker {broker.bootstrap} · data in {data_dir} · Ctrl-C stops")
        console.print(
            f"models warm up for {faults_after} s ({DEMO_WARMUP_WINDOWS} windows; {default_warmup} outside the demo); "
            "the simulated faults start after that"
        )
        live = _Live()
        try:
            started_ms = int(time.time() * 1000)
            flow = _spawn([sys.executable, "-m", "plantpulse.cli", "run"], env, logs / "flow.log")
            children.append(flow)
            sim_args = [sys.executable, "-m", "plantpulse.cli", "sim", "--machines", str(machines), "--rate", str(rate),
                        "--seed", str(seed), "--faults", "all", "--fault-rate", "0.1", "--faults-after", str(faults_after),
                        "--imperfections", "duplicates=0.002,late=0.0005,out_of_order=0.01,malformed=0.001"]
            sim_args += ["--duration", str(duration)] if duration else ["--duration", str(10 * 365 * 86400)]
            simulator = _spawn(sim_args, env, logs / "sim.log")
            children.append(simulator)
            notifier = None
            if receiver is not None:
                notifier = _spawn([sys.executable, "-m", "plantpulse.cli", "notify"],
                                  _notify_env(env, data_dir, receiver.url), logs / "notify.log")
                children.append(notifier)
            try:
                _live(console, settings, metrics_port, flow, simulator, notifier, receiver, duration, live,
                      broker.bootstrap)
                _drain(console, settings, metrics_port, flow, live.counters)
            except KeyboardInterrupt:
                interrupted = True  # the usual end of `make demo`: stop the processes, then draw the run
        finally:
            for child in children:
                _stop(child)
        if interrupted:
            # Ctrl-C skips the summary (the user asked to stop), but the run's dashboards are drawn: the flow has
            # stopped, so the embedded database is free, and a second Ctrl-C still interrupts the drawing.
            write_snapshot(console, settings, data_dir / "snapshot", started_ms)
            raise KeyboardInterrupt
        live.board.fold(_new_incidents(settings, live.incident_offsets, timeout_s=10.0))
        _summary(console, settings, live, started_ms, receiver)
        # Last, so the path is the final line; the flow has stopped, so the embedded database is free.
        write_snapshot(console, settings, data_dir / "snapshot", started_ms)


def write_snapshot(console: Console, settings: Settings, out_dir: Path, started_ms: int) -> list[Path] | None:
    """Draw this run's Fleet now and Machine detail dashboards (from `started_ms` to now) as PNG under `out_dir`
    and print where; None if that failed.

    A failure is printed (one line, the traceback in logs/snapshot.log), not raised, and the demo still exits 0:
    by then the run itself has succeeded and its summary is on screen, and the pictures are only a view of data
    that stays in the database (the line says how to draw them again). A non-zero exit would tell a script that
    the streaming demo failed, which it did not.
    """
    from grafana.snapshot import render_snapshot  # matplotlib and the dashboards' queries: only when drawing

    time_from = datetime.fromtimestamp(started_ms / 1000, UTC)
    try:
        paths = render_snapshot(settings, out_dir, time_from=time_from, time_to=datetime.now(UTC))
    except Exception as error:  # noqa: BLE001 - reported below with its traceback; the run's results stand
        log = Path(settings.data_dir) / "logs" / "snapshot.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        minutes = math.ceil((time.time() * 1000 - started_ms) / 60_000) + 1
        console.print(Text.assemble(
            ("Dashboards snapshot failed", "bold red"),
            f": {reason} (the results above stand; traceback in {log}; "
            f"draw it again: .venv/bin/plantpulse snapshot --out {out_dir} --since {minutes}m)",
        ))
        return None
    console.print(Text(f"\nDashboards snapshot: {', '.join(str(path) for path in paths)}"))
    return paths


def write_demo_models(source: Path, target: Path, warmup_windows: int = DEMO_WARMUP_WINDOWS) -> tuple[Path, int]:
    """Write `source`'s model specs to `target` with every table's warm-up set to `warmup_windows`.

    Returns (target, the default warm-up of `source`). The flow has no per-run overrides, so the demo hands
    it a spec file of its own; `ModelSpecs.with_overrides` checks the override like `replay --grid` does.
    """
    specs = load_model_specs(source)
    demo = specs.with_overrides({f"{name}.warmup_windows": str(warmup_windows) for name in specs.tables})
    text = f"# Written by `plantpulse demo` from {source}: warmup_windows = {warmup_windows} everywhere.\n\n"
    text += toml_document(demo.tables)
    if tomllib.loads(text) != demo.tables:  # the writer below covers what spec files hold; say so if not
        raise ValueError(f"demo: cannot write the model specs of {source} back as TOML")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target, specs.default.warmup_windows


def toml_document(tables: dict[str, Any]) -> str:
    """Nested tables of strings, numbers, booleans and lists as TOML (no TOML writer among the dependencies)."""
    lines: list[str] = []

    def emit(path: list[str], table: dict[str, Any]) -> None:
        scalars = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        if path:
            lines.append(f"[{'.'.join(_toml_key(part) for part in path)}]")
        lines.extend(scalars)
        if path or scalars:
            lines.append("")
        for key, value in table.items():
            if isinstance(value, dict):
                emit([*path, key], value)

    emit([], tables)
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan read back as TOML's inf and nan
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are valid in a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ValueError(f"no TOML for {value!r}")


def demo_routes(url_env: str = DEMO_WEBHOOK_URL_ENV) -> str:
    """The `--notify` routing file: warning and critical incidents to one webhook, the local receiver."""
    return f"""# Written by `plantpulse demo --notify` (format: plantpulse/config/notify.toml). The URL is in ${url_env}.
[channel.demo-webhook]
type = "webhook"
url_env = "{url_env}"

[[route]]
name = "demo"
severity = ["warning", "critical"]
channels = ["demo-webhook"]
transitions = ["opened", "escalated", "acknowledged", "resolved"]
"""


def _notify_env(env: dict[str, str], data_dir: Path, url: str) -> dict[str, str]:
    routes = data_dir / "demo-notify.toml"
    routes.write_text(demo_routes())
    # Every demo has a new, empty broker: offsets remembered by an earlier demo's ledger mean nothing here.
    ledger_dir = data_dir / "notify-demo"
    shutil.rmtree(ledger_dir, ignore_errors=True)
    return {
        **env,
        "NOTIFY_ROUTES_FILE": str(routes),
        "NOTIFY_LEDGER_PATH": str(ledger_dir / "ledger.sqlite"),
        "NOTIFY_METRICS_PORT": "0",  # the default port may be taken by a notifier outside the demo
        DEMO_WEBHOOK_URL_ENV: url,
    }


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
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


def _new_incidents(settings: Settings, offsets: dict[int, int], timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Incident records that arrived since `offsets` (advanced in place). Not `incidents_from_topic`: a live
    view must not wait its 30 s on a busy broker; after a timeout the offsets did not move, the next tick
    reads the same records again."""
    try:
        records = read_topic(settings, settings.incidents_topic, start_offsets=offsets, timeout_s=timeout_s)
    except TimeoutError:
        return []
    return [orjson.loads(record.value) for record in records if record.value is not None]


def _live(console: Console, settings: Settings, port: int, flow: subprocess.Popen, simulator: subprocess.Popen,
          notifier: subprocess.Popen | None, receiver: NotificationReceiver | None, duration: float | None,
          state: _Live, bootstrap: str) -> None:
    started = time.monotonic()
    previous, previous_at = 0.0, started
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while simulator.poll() is None:
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited with code {flow.returncode}; see {settings.data_dir}/logs/flow.log")
            if notifier is not None and not state.notifier_note and notifier.poll() is not None:
                # Optional: the demo goes on without it, and says where to look.
                state.notifier_note = f"notifier exited with code {notifier.returncode}, see logs/notify.log"
            time.sleep(1.0)
            state.counters = scrape(port) or state.counters
            now = time.monotonic()
            state.rate = (state.counters.received - previous) / max(now - previous_at, 1e-6)
            previous, previous_at = state.counters.received, now
            state.elapsed = now - started
            try:
                new_alerts = read_topic(settings, settings.alerts_topic, start_offsets=state.alert_offsets, timeout_s=2.0)
            except TimeoutError:
                # A busy broker did not answer in time: the offsets did not move, the next tick reads them.
                new_alerts = []
            for _, _offset, key, _value, _ in new_alerts:
                state.top[key.decode() if key else "?"] += 1
            state.board.fold(_new_incidents(settings, state.incident_offsets))
            live.update(_view(state, duration, receiver, bootstrap))
    if not console.is_terminal:
        console.line()  # Live ends its last render with a newline on a terminal only
    if simulator.returncode not in (0, None):
        raise RuntimeError(f"the simulator exited with code {simulator.returncode}; see {settings.data_dir}/logs/sim.log")


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


def format_age(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def incident_table(board: IncidentBoard, now_ms: float, limit: int = OPEN_INCIDENT_ROWS) -> Table:
    """Open incidents, newest first, at most `limit` rows and a "+N more" line."""
    rows = board.open_incidents()
    table = Table(title=f"open incidents: {len(rows)}")
    for column in ("machine", "rule / model", "sensor", "severity", "age"):
        table.add_column(column, justify="right" if column == "age" else "left")
    table.add_column("acknowledged by")
    for row in rows[:limit]:
        severity = row["severity"]
        # Anomaly incidents carry rule_id "anomaly": the model is the machine type's spec.
        source = row["rule_id"] if row["kind"] != "anomaly" else f"anomaly ({row.get('machine_type') or '?'} model)"
        table.add_row(
            row["machine_id"], source, row.get("sensor") or "", Text(severity, style=_SEVERITY_STYLE.get(severity, "")),
            format_age((now_ms - row["opened_at"]) / 1000), row.get("acknowledged_by") or "—",
        )
    if len(rows) > limit:
        table.add_row(Text(f"+{len(rows) - limit} more", style="dim"), "", "", "", "", "")
    return table


def _view(state: _Live, duration: float | None, receiver: NotificationReceiver | None, bootstrap: str) -> Group:
    counters = state.counters
    table = Table(title=f"PlantPulse live · {state.elapsed:.0f} s" + (f" of {duration:.0f} s" if duration else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("readings/s", f"{state.rate:,.0f}")
    table.add_row("readings received", f"{counters.received:,.0f}")
    table.add_row("windows emitted", f"{counters.windows:,.0f}")
    table.add_row("window rows in ClickHouse", f"{counters.rows_written:,.0f}")
    table.add_row("duplicates dropped", f"{counters.duplicates:,.0f}")
    table.add_row("dead letters", ", ".join(f"{k}={v:,.0f}" for k, v in sorted(counters.dead_letters.items())) or "0")
    table.add_row("alerts", f"{counters.alerts:,.0f}")
    table.add_row("incidents opened / resolved", f"{state.board.opened:,} / {state.board.resolved:,}")
    anomalous = Table(title="most alerted machines")
    anomalous.add_column("machine")
    anomalous.add_column("alerts", justify="right")
    for machine, count in state.top.most_common(8):
        anomalous.add_row(machine, str(count))
    top = Table.grid(padding=(0, 4))  # side by side: the incidents below need the height
    top.add_row(table, anomalous)
    parts: list[Any] = [top, incident_table(state.board, time.time() * 1000)]
    newest = state.board.open_incidents()[:1]
    if newest:
        parts.append(Text(f"acknowledge one: KAFKA_BOOTSTRAP_SERVERS={bootstrap} .venv/bin/plantpulse alerts ack "
                          f"{newest[0]['incident_id']} --by you", style="dim"))
    if receiver is not None:
        count, last = receiver.snapshot()
        line = f"notifications received: {count}" + (f", last: {last}" if last else "")
        parts.append(Text(line + (f" ({state.notifier_note})" if state.notifier_note else ""), overflow="ellipsis",
                          no_wrap=True))
    return Group(*parts)


def _summary(console: Console, settings: Settings, state: _Live, started_ms: int,
             receiver: NotificationReceiver | None) -> None:
    counters, board = state.counters, state.board
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
    # This run's incidents only: the embedded database keeps those of earlier demos in the same DATA_DIR.
    query = ("SELECT kind, rule_id, status, count() FROM incidents FINAL WHERE opened_at >= "
             "fromUnixTimestamp64Milli({started_ms:Int64}, 'UTC') GROUP BY kind, rule_id, status "
             "ORDER BY kind, rule_id, status")
    columns, rows = run_sql(settings, query, parameters={"started_ms": started_ms})
    console.print("\n[bold]incidents of this run[/]")
    console.print(result_table(columns, rows))
    ratio = f" ({counters.alerts / board.opened:,.1f} alerts per incident)" if board.opened else ""
    console.print(f"raw alerts {counters.alerts:,.0f} -> incidents {board.opened:,}{ratio}; resolved {board.resolved:,}")
    firsts = [f"first {kind} incident {(at - started_ms) / 1000:.0f} s after the start"
              for kind, at in sorted(board.first_opened_at.items(), key=lambda item: item[1])]
    if firsts:
        console.print("; ".join(firsts))
    if receiver is not None:
        count, last = receiver.snapshot()
        console.print(f"notifications received: {count}" + (f", last: {last}" if last else "")
                      + f" (bodies in {settings.data_dir}/logs/notifications.jsonl)")
    console.print("\nTry more (the embedded ClickHouse is free now):")
    for query in EXAMPLE_QUERIES:
        console.print(f'  .venv/bin/plantpulse sql "{query}"')
