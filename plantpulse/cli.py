"""`plantpulse` command line: broker, topics, sim, run, sql, lake, replay, alerts, grafana, snapshot, demo. The roof of the
house: nothing imports it.

Every command reads its configuration from the environment (`plantpulse.settings`); options only cover
what differs per invocation. Errors end with a one-line reason on stderr and a non-zero exit code.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path

import typer

from plantpulse.cli_common import fail as _fail
from plantpulse.cli_common import settings_or_fail as _settings
from plantpulse.keys_cli import keys_app
from plantpulse.settings import Settings
from plantpulse.topics_cli import topics_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="PlantPulse: real-time predictive maintenance.")


app.add_typer(keys_app, name="keys")
app.add_typer(topics_app, name="topics")


def _require_kafka(settings: Settings) -> None:
    from connectors.topics import KafkaUnreachableError, check_reachable

    try:
        check_reachable(settings)
    except KafkaUnreachableError as error:
        _fail(str(error))


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def broker(port: int = typer.Option(0, help="Port to listen on (0: a free port).")) -> None:
    """Run the embedded Kafka-protocol broker (tansu) in the foreground."""
    from connectors.broker import BrokerStartError, EmbeddedBroker

    try:
        # Ctrl-C may come at any point once the address is printed (a script stops us as soon as it has
        # read it): the broker is stopped by the `with` either way, and that is a clean exit.
        with EmbeddedBroker(port=port or None) as running:
            typer.echo(f"KAFKA_BOOTSTRAP_SERVERS={running.bootstrap}", err=False)
            sys.stdout.flush()
            # In slices: Python handles a signal between bytecodes, so a SIGINT that lands just before a
            # blocking waitpid() would wait for the broker to exit by itself (rarely, a hang on Ctrl-C).
            while running.wait(timeout_s=0.5) is None:
                pass
    except KeyboardInterrupt:
        pass
    except (BrokerStartError, ImportError) as error:
        _fail(str(error))


@app.command()
def sim(
    machines: int = typer.Option(1000, min=1, help="Fleet size."),
    rate: float | None = typer.Option(None, min=1, help="Total readings per second, in real time."),
    as_fast_as_possible: bool = typer.Option(False, "--as-fast-as-possible", help="No pacing."),
    duration: float | None = typer.Option(None, min=0.001, help="Seconds of event time to simulate."),
    count: int | None = typer.Option(None, min=1, help="Number of messages to send."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same stream."),
    faults: str = typer.Option("all", help="Comma-separated fault kinds, 'all' or 'none'."),
    fault_rate: float = typer.Option(0.05, min=0, max=1, help="Fraction of machines given a fault."),
    faults_after: float = typer.Option(0.0, min=0, help="Seconds of healthy operation before the first fault."),
    imperfections: str = typer.Option("", help="e.g. 'duplicates=0.01,late=0.001,malformed=0.001'."),
    record: Path | None = typer.Option(None, help="Also record the stream (with labels) to Parquet."),
    record_only: bool = typer.Option(False, "--record-only", help="Only write --record (no Kafka), as fast as possible."),
    create_keys: bool = typer.Option(
        False, "--create-keys", help="Add device keys for simulated machines that have none (DEVICE_AUTH=required)."
    ),
) -> None:
    """Simulate the fleet and produce readings to $KAFKA_BOOTSTRAP_SERVERS / $TELEMETRY_TOPIC."""
    from sim import ProduceError, Simulator, build_fleet, parse_imperfections, produce, sync_fleet_csv
    from sim import record_only as write_recording  # `record_only` is this command's flag

    if record_only:
        if record is None or rate is not None:
            _fail("--record-only needs --record PATH and no --rate (it writes as fast as possible)")
    elif (rate is None) == (not as_fast_as_possible):
        _fail("give exactly one of --rate R or --as-fast-as-possible")
    if (duration is None) == (count is None):
        _fail("give exactly one of --duration S or --count C")
    settings = _settings()
    _logging(settings)
    if not record_only:
        _require_kafka(settings)
    try:
        fleet = build_fleet(machines, seed)
        simulator = Simulator(
            fleet, seed=seed, faults=faults, fault_rate=fault_rate, imperfections=parse_imperfections(imperfections),
            faults_after_s=faults_after,
        )
        if record_only:
            summary = write_recording(simulator, count=count, duration_s=duration, path=record)
            typer.echo(f"recorded {summary.readings:,} readings to {summary.record_path}; faults {summary.fault_events}")
            return
        if settings.machines_file is not None:
            # The flow reads machine types from it; they depend on --seed and --machines, so a file left by
            # another fleet must not survive.
            replaced = sync_fleet_csv(Path(settings.machines_file), fleet)
            if replaced is not None:
                typer.echo(f"plantpulse: {settings.machines_file} listed {replaced}; replaced by this fleet "
                           f"({machines} machines, seed {seed}). A running flow read machine types at its start: "
                           "restart it to use these", err=True)
        summary = produce(settings, simulator, rate=rate, duration_s=duration, count=count, record_path=record,
                          create_missing_keys=create_keys)
    except (ValueError, ProduceError, OSError) as error:
        _fail(str(error))
    typer.echo(
        f"sent {summary.messages:,} messages ({summary.readings:,} readings) to {summary.topic} in "
        f"{summary.wall_seconds:.1f} s ({summary.messages_per_second:,.0f}/s); faults {summary.fault_events}; "
        f"imperfections {summary.imperfections}" + (f"; recorded to {summary.record_path}" if summary.record_path else "")
    )


@app.command()
def run(
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Worker threads in this process."),
    process_id: int | None = typer.Option(None, "--process-id", "-i", help="This process's id in a cluster."),
    addresses: str | None = typer.Option(None, "--addresses", "-a", help="'host:port;host:port' of all processes."),
    processes: int | None = typer.Option(None, "--processes", "-p", min=1, help="Number of processes (checks -a)."),
) -> None:
    """Run the telemetry flow (recovery on when RECOVERY_DIR is set).

    Options override the BYTEWAX_* environment (BYTEWAX_PROCESS_ID, BYTEWAX_ADDRESSES, or the StatefulSet
    variables BYTEWAX_POD_NAME/BYTEWAX_STATEFULSET_NAME/BYTEWAX_SERVICE_NAME/BYTEWAX_REPLICAS).
    """
    from plantpulse.stopping import install_stop_handlers, stop_requested

    # First, so that a SIGTERM/SIGINT during start-up (imports, Kafka check, store, building the flow) is a
    # clean stop too, not a KeyboardInterrupt traceback or a death by SIGTERM.
    install_stop_handlers()  # SIGTERM/SIGINT drain the flow: sinks write what they hold, then exit 0
    from bytewax.run import cli_main

    from flows.launch import epoch_interval, prepare_topics, recovery_config
    from flows.telemetry import build_flow

    overrides: dict[str, object] = {}
    if process_id is not None:
        overrides["bytewax_process_id"] = process_id
    if addresses is not None:
        overrides["bytewax_addresses"] = addresses
    if workers is not None:
        overrides["bytewax_workers_per_process"] = workers
    settings = _settings(**overrides)
    _logging(settings)
    try:
        cluster_id, cluster_addresses = settings.cluster()
    except ValueError as error:
        _fail(str(error))
    if processes is not None and len(cluster_addresses or [""]) != processes:
        _fail(f"--processes {processes} but {len(cluster_addresses or [''])} address(es) are configured")
    _require_kafka(settings)
    try:
        prepare_topics(settings)  # the flow's topics exist (or KAFKA_CREATE_TOPICS), a partition per worker
        recovery = recovery_config(settings)  # the same as `python -m bytewax.run flows.telemetry:flow` gets
        flow = build_flow(settings)
    except (ValueError, OSError, LookupError) as error:  # LookupError: the telemetry topic does not exist
        _fail(str(error))
    if stop_requested():
        logging.getLogger("plantpulse").info("stopped by signal before the flow started")
        return
    try:
        cli_main(
            flow,
            workers_per_process=settings.bytewax_workers_per_process,
            process_id=cluster_id,
            addresses=cluster_addresses,
            epoch_interval=epoch_interval(settings),
            recovery_config=recovery,
        )
    except KeyboardInterrupt:
        logging.getLogger("plantpulse").info("flow stopped by signal")
    except Exception as error:
        if _stopped_by_signal(error):
            logging.getLogger("plantpulse").info("flow stopped by signal")
            return
        raise


def _stopped_by_signal(error: BaseException) -> bool:
    """Whether a Bytewax error is a forced stop by a second SIGINT/SIGTERM (the first one drains the flow):
    its own "signal received", or a KeyboardInterrupt raised inside a step that was running Python code when
    the signal came (wrapped as "error calling ..."). Either way the flow stopped like a crash would, and
    resumes from its last snapshot."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt) or "signal received" in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@app.command()
def notify(
    routes: Path | None = typer.Option(None, "--routes", help="Routing file (default: $NOTIFY_ROUTES_FILE)."),
    until_idle: float | None = typer.Option(
        None, "--until-idle", min=0.1, help="Exit 0 once the topic is consumed and nothing happened for S seconds."
    ),
) -> None:
    """Deliver incident transitions from $INCIDENTS_TOPIC to webhooks, Slack, e-mail and logs by the routing file."""
    from plantpulse.stopping import install_stop_handlers

    install_stop_handlers()  # first, so a signal during start-up is a clean stop too
    from notify.ledger import LedgerBusyError
    from notify.service import Notifier

    settings = _settings()
    _logging(settings)
    try:
        notifier = Notifier.from_settings(settings, routes)
    except ValueError as error:  # the routing file, or a channel's environment variable
        _fail(str(error))
    _require_kafka(settings)
    try:
        notifier.run(until_idle_s=until_idle)
    except (LedgerBusyError, ValueError, LookupError, TimeoutError) as error:  # topics, ledger
        _fail(str(error))
    except (OSError, RuntimeError) as error:
        _fail(f"notify stopped: {error}", code=1)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL to run on $CLICKHOUSE_URL."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
) -> None:
    """Run SQL on the configured ClickHouse (embedded chDB or a server) and print the result.

    `plantpulse sql migrate` applies the schema and the users instead (idempotent; the compose/k8s migration step).
    """
    from connectors.clickhouse import EmbeddedDatabaseBusy, run_sql
    from plantpulse.output import print_result

    settings = _settings()
    if query.strip().lower() == "migrate":
        from plantpulse.migrate_cli import migrate

        try:
            typer.echo(migrate(settings))
        except Exception as error:  # noqa: BLE001 - passwords, server or connection: one line, not a traceback
            _fail(f"sql migrate failed: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}")
        return
    try:
        columns, rows = run_sql(settings, query)
    except EmbeddedDatabaseBusy as error:
        _fail(str(error))
    except Exception as error:  # noqa: BLE001 - any database error becomes one line, not a traceback
        _fail(f"query failed: {str(error).strip().splitlines()[0]}")
    print_result(columns, rows, output.value)


lake_app = typer.Typer(no_args_is_help=True, help="Maintain the raw Parquet lake at $LAKE_URL.")
app.add_typer(lake_app, name="lake")


@lake_app.command("compact")
def lake_compact(
    date: str = typer.Option(..., "--date", help="Event date, YYYY-MM-DD (UTC)."),
    hour: int | None = typer.Option(None, "--hour", help="One hour 0-23 (default: every hour of the date)."),
    min_age: float = typer.Option(
        7200.0, "--min-age", min=0, help="Seconds after an hour's end before it may be compacted (live writers)."
    ),
) -> None:
    """Merge each hour's files into one, sorted by machine and time (idempotent, crash-safe)."""
    import time

    from connectors.lake_compact import compact_date
    from connectors.lake_store import open_lake, s3_settings

    settings = _settings()
    _logging(settings)
    try:
        fs, root = open_lake(settings.lake_url, **s3_settings(settings))
        results = compact_date(fs, root, date, hour, now_s=time.time(), min_age_s=min_age)
    except ValueError as error:
        _fail(str(error))
    except Exception as error:  # noqa: BLE001 - a store failure becomes one line; a rerun resumes safely
        _fail(f"lake compact failed (safe to run again): {str(error).strip().splitlines()[0]}")
    for result in results:
        if result.note != "empty":
            typer.echo(
                f"{result.directory}: {result.note}, {result.files_before} -> {result.files_after} files, "
                f"{result.rows} rows"
            )
    if all(r.note == "empty" for r in results):
        typer.echo(f"nothing to compact for {date}" + (f" hour {hour}" if hour is not None else ""))


class Scoring(str, Enum):
    events = "events"
    skab = "skab"
    nab = "nab"


@app.command()
def replay(
    sources: list[str] = typer.Argument(
        ..., metavar="SOURCE",
        help="Simulator recording (.parquet), lake URL/dir, or CSV/Parquet files and directories of them.",
    ),
    out: Path = typer.Option(Path("replay-report"), "--out", help="Report folder."),
    models: Path | None = typer.Option(None, "--models", help="Model spec file (default: $MODELS_FILE)."),
    grid: list[str] = typer.Option(
        [], "--grid", help="key=v1,v2 [key=v1,v2 ...] (or --grid repeated): every combination is replayed."
    ),
    scoring: Scoring = typer.Option(
        Scoring.events, "--scoring",
        help="events: event-level F1 and false alarms per machine-day; skab: SKAB's point-wise F1/FAR/MAR (the "
             "first 400 readings of each file train); nab: NAB's standard-profile score (models/benchmark_scores.py).",
    ),
    window_seconds: int | None = typer.Option(
        None, "--window-seconds", min=1, help="Window length in seconds (default: $WINDOW_SECONDS); 3600 for hourly data."
    ),
) -> None:
    """Replay recorded readings through the live flow's windows, rules and anomaly models; score and report.

    CSV/Parquet input columns: ts (or timestamp, datetime, time; epoch ms or ISO 8601), optional machine_id
    (default: the file's name), temperature, pressure, vibration, rpm, power (any subset), status, seq,
    machine_type and label (or anomaly: 0/empty/normal = healthy, 1 = anomaly, else the fault's name); every
    other numeric column is a sensor channel. Separator , ; or tab. SKAB and NAB files replay as they are.
    """
    import time
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from connectors.replay_sources import open_input
    from flows.pipeline import PipelineConfig
    from flows.replay import replay as run_replay
    from flows.replay_report import write_leaderboard, write_run
    from models.evaluation import evaluate, nab_score, skab_score
    from models.spec import load_model_specs, parse_grid
    from plantpulse.schema import RawBatch

    sources, grid = _grid_arguments(sources, grid)
    settings = _settings()
    update: dict[str, object] = {"machines_file": None}
    if window_seconds is not None:
        update["window_seconds"] = window_seconds
    try:
        data = open_input(sources[0] if len(sources) == 1 else sources, s3_endpoint_url=settings.s3_endpoint_url,
                          s3_ca_bundle=settings.s3_ca_bundle)
        specs = load_model_specs(models or settings.models_file)
        points = parse_grid(grid)
        variants = [specs.with_overrides(point) for point in points]
        base = PipelineConfig.from_settings(settings.model_copy(update=update))
    except ValueError as error:
        _fail(str(error))
    if scoring is not Scoring.events and (data.points is None or data.labels is None):
        _fail(f"replay: --scoring {scoring.value} needs labelled CSV/Parquet input (a label or anomaly column, or "
              "NAB windows beside the file)")
    machine_types = data.machine_types or base.machine_types
    rows = []
    for number, (point, variant) in enumerate(zip(points, variants), start=1):
        # A recording's age says nothing about its validity: no too-old check in a replay.
        config = replace(base, machine_types=machine_types, models=variant, limits=replace(base.limits, max_event_age_ms=0))
        with Progress(TextColumn(f"run {number}/{len(points)}"), BarColumn(), TextColumn("{task.completed:,} readings"),
                      TimeRemainingColumn(), transient=True, console=Console(stderr=True)) as progress:
            task = progress.add_task("replay", total=data.readings)

            def advance(item: object, task: TaskID = task) -> None:  # this run's task, bound now (B023)
                progress.advance(task, len(item.values) if isinstance(item, RawBatch) else getattr(item, "num_rows", 0))

            started = time.perf_counter()
            result = run_replay(data.items, config, raw=data.raw, progress=advance)
            seconds = time.perf_counter() - started
        evaluation = (
            evaluate(result.scores, data.labels, window_ms=config.windows.window_ms) if data.labels is not None else None
        )
        benchmark = None
        try:
            if scoring is Scoring.skab and data.points is not None:
                benchmark = skab_score(result.scores, data.points).summary()
            elif scoring is Scoring.nab and data.points is not None and data.labels is not None:
                benchmark = nab_score(result.scores, data.points, data.labels).summary()
        except ValueError as error:
            _fail(str(error))
        rows.append(write_run(out / f"run-{number:02d}", point, result.scores, result.window_stats, data.labels,
                              evaluation, data.readings, seconds, scoring=scoring.value, benchmark=benchmark))
        typer.echo(f"run {number}: {point or 'spec as is'}: {data.readings:,} readings in {seconds:.1f} s "
                   f"({data.readings / seconds:,.0f}/s), {rows[-1]['alerts']} alerts"
                   + (f", mean F1 {rows[-1]['mean_f1']}, {rows[-1]['false_alarms_per_machine_day']} false alarms "
                      "per machine-day" if evaluation is not None and scoring is Scoring.events else "")
                   + _benchmark_line(benchmark))
    write_leaderboard(out, rows)
    typer.echo(f"report: {out}/leaderboard.md and {out}/run-*/report.md")


def _benchmark_line(benchmark: dict | None) -> str:
    """The benchmark's numbers for a run's line of output."""
    if not benchmark:
        return ""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    if benchmark["protocol"] == "skab":
        return (f"; SKAB: F1 {benchmark['f1']}, FAR {pct(benchmark['far'])}, MAR {pct(benchmark['mar'])} "
                f"(TP {benchmark['tp']}, FP {benchmark['fp']}, FN {benchmark['fn']}, TN {benchmark['tn']}; first "
                f"{benchmark['train_rows']} readings of each of {benchmark['machines']} files not scored)")
    return (f"; NAB standard profile: raw score {benchmark['raw_score']}, normalised {benchmark['normalised_score']} "
            f"(windows detected {benchmark['tp']}, missed {benchmark['fn']}, false positives {benchmark['fp']})")


def _grid_arguments(arguments: list[str], grid: list[str]) -> tuple[list[str], list[str]]:
    """SOURCEs and the grid items of `replay SOURCE... --grid a=1,2 b=3,4` (the items after the first arrive
    as positional arguments) or of a repeated `--grid`. A positional `key=values` (GRID_ITEM) that is no
    existing path is a grid item; without `--grid` it is an error."""
    from models.spec import GRID_ITEM

    items = [a for a in arguments if GRID_ITEM.match(a) and not Path(a).exists()]
    sources = [a for a in arguments if a not in items]
    if items and not grid:
        _fail(f"replay: unexpected argument(s) {' '.join(items)!r}: grid items key=v1,v2 follow --grid")
    if not sources:
        _fail("replay: give at least one SOURCE")
    return sources, [*grid, *items]


alerts_app = typer.Typer(no_args_is_help=True, help="Alert incidents: list them, acknowledge, comment, resolve.")
app.add_typer(alerts_app, name="alerts")


class IncidentSource(str, Enum):
    auto = "auto"
    kafka = "kafka"
    clickhouse = "clickhouse"


def _incidents(settings: Settings, source: IncidentSource) -> dict[str, dict]:
    """Current incidents: from a ClickHouse server, else from the `incidents` topic (the running flow owns chDB)."""
    from connectors.incident_feed import incidents_from_clickhouse, incidents_from_topic
    from connectors.topics import TopicNotFoundError

    use_clickhouse = source == IncidentSource.clickhouse or (
        source == IncidentSource.auto and not settings.clickhouse_is_embedded
    )
    try:
        if use_clickhouse:
            return incidents_from_clickhouse(settings)
        _require_kafka(settings)
        return incidents_from_topic(settings)
    except TopicNotFoundError:
        return {}
    except Exception as error:  # noqa: BLE001 - any database/broker error becomes one line
        _fail(f"cannot read incidents: {str(error).strip().splitlines()[0]}")


@alerts_app.command("list")
def alerts_list(
    only_open: bool = typer.Option(False, "--open", help="Only incidents not resolved (open or acknowledged)."),
    machine: str | None = typer.Option(None, "--machine", help="Only this machine's incidents."),
    source: IncidentSource = typer.Option(IncidentSource.auto, help="auto: ClickHouse server if configured, else Kafka."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
) -> None:
    """List incidents with their effective status (open, acknowledged, resolved), newest first."""
    import time as _time

    from plantpulse.output import print_result

    settings = _settings()
    now_ms = _time.time() * 1000
    rows = [
        r for r in _incidents(settings, source).values()
        if (not only_open or r["status"] != "resolved") and (machine is None or r["machine_id"] == machine)
    ]
    rows.sort(key=lambda r: r["opened_at"], reverse=True)
    columns = ["incident_id", "status", "severity", "kind", "machine_id", "rule_id", "age_s", "detections",
               "peak_value", "acknowledged_by", "resolved_reason"]
    table = [
        [r["incident_id"], r["status"], r["severity"], r["kind"], r["machine_id"], r["rule_id"],
         round((now_ms - r["opened_at"]) / 1000), r["detections"], r["peak_value"], r["acknowledged_by"],
         r["resolved_reason"]]
        for r in rows
    ]
    print_result(columns, table, output.value)


def _act(action: str, incident_id: str, by: str, note: str, wait: float) -> None:
    """Check the incident, publish the command, and wait for the flow to record it."""
    from connectors.incident_feed import CommandNotDelivered, publish_command, wait_for_incident

    settings = _settings()
    known = _incidents(settings, IncidentSource.kafka).get(incident_id)
    if known is None:
        _fail(f"{action}: no incident {incident_id!r} (see `plantpulse alerts list`)")
    if action != "comment" and known["status"] == "resolved":
        _fail(f"{action}: incident {incident_id} is already resolved ({known['resolved_reason']})")
    if action == "ack" and known["acknowledged_by"]:
        _fail(f"ack: incident {incident_id} is already acknowledged by {known['acknowledged_by']}")
    try:
        publish_command(settings, action, incident_id, by, note)
    except CommandNotDelivered as error:
        _fail(str(error))
    transition = {"ack": "acknowledged", "resolve": "resolved", "comment": "commented"}[action]
    confirmed = wait_for_incident(
        settings, incident_id,
        lambda row: row["version"] > known["version"] and row["transition"] == transition and row["actor"] == by,
        timeout_s=wait,
    )
    if confirmed is None:
        _fail(f"{action} {incident_id}: sent, but the flow has not recorded it within {wait:g} s "
              "(is `plantpulse run` running? it applies the command when it starts)", code=1)
    typer.echo(f"{incident_id}: {confirmed['status']} ({transition} by {by}, version {confirmed['version']})")


_WAIT = typer.Option(30.0, "--wait", min=0, help="Seconds to wait for the flow to record it.")


@alerts_app.command("ack")
def alerts_ack(
    incident_id: str = typer.Argument(...),
    by: str = typer.Option(..., "--by", help="Who acknowledges."),
    note: str = typer.Option("", "--note"),
    wait: float = _WAIT,
) -> None:
    """Acknowledge an open incident ("I'm on it")."""
    _act("ack", incident_id, by, note, wait)


@alerts_app.command("resolve")
def alerts_resolve(
    incident_id: str = typer.Argument(...),
    by: str = typer.Option(..., "--by", help="Who resolves."),
    note: str = typer.Option(..., "--note", help="Why (required for a manual close)."),
    wait: float = _WAIT,
) -> None:
    """Resolve an incident by hand (a new detection later opens a new one)."""
    _act("resolve", incident_id, by, note, wait)


@alerts_app.command("comment")
def alerts_comment(
    incident_id: str = typer.Argument(...),
    by: str = typer.Option(..., "--by"),
    note: str = typer.Option(..., "--note"),
    wait: float = _WAIT,
) -> None:
    """Add a note to an incident's audit trail."""
    _act("comment", incident_id, by, note, wait)


grafana_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards and alert rules, provisioned from grafana/.")
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("build")
def grafana_build(
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 listing the files that differ."),
    root: Path | None = typer.Option(None, "--root", help="Provisioning directory (default: grafana/provisioning)."),
) -> None:
    """Regenerate grafana/provisioning from grafana/*.py (same as `python -m grafana.build`)."""
    from grafana.build import main as build_main

    try:
        code = build_main(["--check"] * check + (["--root", str(root)] if root is not None else []))
    except OSError as error:
        _fail(f"grafana build: {error}")
    raise typer.Exit(code)


@grafana_app.command("push")
def grafana_push(
    url: str = typer.Option(..., "--url", help="Grafana's address, e.g. http://localhost:3000 (or …/grafana)."),
    token: str = typer.Option(
        "", "--token", envvar="GRAFANA_TOKEN", show_default=False, help="Service account token (Editor or Admin)."
    ),
) -> None:
    """Create or update the PlantPulse folder, datasources, dashboards and alert rules in a running Grafana, by uid.

    Datasource settings come from the environment, as for Grafana's file provisioning: CLICKHOUSE_PASSWORD must
    be set; CLICKHOUSE_HOST, _PORT, _PROTOCOL, _SECURE, _USER, _DATABASE and PROMETHEUS_URL default to the
    compose/k8s service values. Contact points and notification policies stay with file provisioning (secrets).
    """
    import os

    from grafana.push import DEFAULT_ENV, GrafanaPushError, connect, load_provisioning, push

    if not token:
        _fail("grafana push: give --token or set GRAFANA_TOKEN (a Grafana service account token, Editor or Admin)")
    # push() fills unset non-secret settings from DEFAULT_ENV and refuses an unset secret.
    try:
        done = push(connect(url, token), load_provisioning(), env=os.environ)
    except (GrafanaPushError, ValueError) as error:
        _fail(" ".join(str(error).split()))  # one line, even if Grafana's answer had several
    for pushed in done:
        typer.echo(pushed.line())
    assumed = sorted(name for name in DEFAULT_ENV if name not in os.environ)
    if assumed:
        typer.echo(f"plantpulse: datasources use the compose/k8s defaults for {', '.join(assumed)} "
                   "(set them to point Grafana elsewhere)", err=True)


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str) -> float:
    """Seconds of a `--since` like 90s, 30m, 6h or 7d."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match or float(match[1]) <= 0:
        _fail(f"--since {text!r}: expected a positive number and s, m, h or d (e.g. 30m)")
    return float(match[1]) * _SINCE_UNITS[match[2]]


@app.command()
def snapshot(
    out: Path = typer.Option(..., "--out", help="Folder for fleet-now.png and machine-<id>.png."),
    machine: str | None = typer.Option(
        None, "--machine", help="Machine for the detail view (default: most incidents in the range, else latest)."
    ),
    since: str = typer.Option("30m", "--since", help="Range ending now: 90s, 30m, 6h, 7d."),
) -> None:
    """Render the Fleet now and Machine detail dashboards to PNG from $CLICKHOUSE_URL, with the dashboards' SQL."""
    from datetime import UTC, datetime, timedelta

    from connectors.clickhouse import EmbeddedDatabaseBusy
    from grafana.snapshot import render_snapshot

    span = timedelta(seconds=_since(since))
    settings = _settings()
    now = datetime.now(UTC)
    try:
        paths = render_snapshot(settings, out, time_from=now - span, time_to=now, machine_id=machine)
    except (EmbeddedDatabaseBusy, ValueError) as error:
        _fail(str(error))
    except OSError as error:  # e.g. --out not writable
        _fail(f"snapshot: {error}")
    except Exception as error:  # noqa: BLE001 - a server/database error becomes one line, not a traceback
        _fail(f"snapshot failed: {str(error).strip().splitlines()[0]}")
    for path in paths:
        typer.echo(path)


@app.command()
def demo(
    duration: float | None = typer.Option(None, min=5, help="Stop after this many seconds (default: Ctrl-C)."),
    machines: int = typer.Option(1000, min=1),
    rate: float = typer.Option(20_000, min=1, help="Readings per second, whole fleet."),
    seed: int = typer.Option(7),
    notify: bool = typer.Option(
        False, "--notify", help="Also run `plantpulse notify`, posting warning/critical incidents to a local receiver."
    ),
) -> None:
    """Start broker, flow and simulator on embedded defaults, show live progress, end with a summary."""
    from plantpulse.demo import run_demo

    settings = _settings()
    try:
        run_demo(settings, duration=duration, machines=machines, rate=rate, seed=seed, notify=notify)
    except KeyboardInterrupt:
        # Ctrl-C skips the summary (the user asked to stop); run_demo has drawn the dashboards already.
        typer.echo(f"stopped. Redraw the dashboards any time: .venv/bin/plantpulse snapshot --out "
                   f"{settings.data_dir}/snapshot")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
