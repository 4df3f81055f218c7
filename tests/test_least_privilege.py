"""Least privilege: ClickHouse roles on a real engine, Grafana's access settings, Kubernetes policies.

ClickHouse. The embedded chDB has no writable user directory, so `CREATE ROLE/USER` cannot run on it (the
first test shows it). Its engine does enforce grants, settings profiles and quotas of users defined in a
users.xml (`chdb_options={"config-file": ...}`), and every chDB query runs as the `default` user. So each
role of connectors/sql/access_control.sql is tested for real by opening the same database in a fresh
process whose `default` user *is* that role: the role's GRANT statements, cut out of the SQL file (without
`TO role`), become its `<grants>`, its settings profile (with the MAX/CONST constraints) and quota become
its profile and quota. What this does not run on chDB: CREATE USER/ROLE, GRANT role TO user and the
password parameters; those statements are checked to parse on the 26.9 engine (the error is the missing
user directory, not syntax) and textually (every password a query parameter).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import yaml

from connectors.clickhouse_access import USERS, AccessError, access_sql, passwords_from_env, render_access
from connectors.clickhouse_sink import TABLE_SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "plantpulse"
MACHINES = 10


# ---------------------------------------------------------------------------------------------------------
# The access SQL, read independently of connectors.clickhouse_access (regular expressions over the file).

@dataclass
class Role:
    grants: list[str] = field(default_factory=list)  # "GRANT <privileges> ON <db>.<table>" (no TO)
    profile: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # setting -> (value, MAX v|CONST)
    quota: dict[str, str] = field(default_factory=dict)


def _statements() -> list[str]:
    return [re.sub(r"\s+", " ", s) for s in render_access(DATABASE)]


def _roles() -> dict[str, Role]:
    """user -> its role's grants, settings profile and quota, as the SQL file assigns them."""
    statements = _statements()
    role_of = {m.group(2): m.group(1) for s in statements if (m := re.fullmatch(r"GRANT (\w+) TO (\w+)", s))}
    grants: dict[str, list[str]] = {}
    for s in statements:
        m = re.fullmatch(r"GRANT (.+) ON (\S+) TO (\w+)", s)
        if m:
            grants.setdefault(m.group(3), []).append(f"GRANT {m.group(1)} ON {m.group(2)}")
    profiles: dict[str, dict[str, tuple[str, str | None]]] = {}
    for s in statements:
        m = re.fullmatch(r"CREATE SETTINGS PROFILE IF NOT EXISTS (\w+) SETTINGS (.+)", s)
        if m:
            entries = {}
            for part in m.group(2).split(","):
                sm = re.fullmatch(r"\s*(\w+) = ('?\w+'?)(?: (MAX \d+|CONST))?\s*", part)
                assert sm, f"unreadable profile setting {part!r}"
                entries[sm.group(1)] = (sm.group(2).strip("'"), sm.group(3))
            profiles[m.group(1)] = entries
    quotas: dict[str, dict[str, str]] = {}
    for s in statements:
        m = re.fullmatch(r"CREATE QUOTA IF NOT EXISTS (\w+) KEYED BY user_name FOR INTERVAL 1 hour MAX (.+)", s)
        if m:
            quotas[m.group(1)] = dict(re.findall(r"(\w+) = (\d+)", m.group(2)))
    profile_of = {m.group(1): m.group(2) for s in statements
                  if (m := re.fullmatch(r"ALTER USER (\w+) DEFAULT ROLE \w+ SETTINGS PROFILE '(\w+)'", s))}
    quota_of = {m.group(2): m.group(1) for s in statements if (m := re.fullmatch(r"ALTER QUOTA (\w+) TO (\w+)", s))}
    return {
        user: Role(grants.get(role_of[user], []), profiles.get(profile_of.get(user, ""), {}),
                   quotas.get(quota_of.get(user, ""), {}))
        for user in USERS
    }


def _users_xml(role: Role | None) -> str:
    """A users.xml whose `default` user has `role`'s privileges (None: every privilege, for the set-up)."""
    settings = "".join(f"<{k}>{escape(v)}</{k}>" for k, (v, _) in (role.profile if role else {}).items())
    constraints = ""
    for key, (_, constraint) in (role.profile if role else {}).items():
        if constraint == "CONST":
            constraints += f"<{key}><const/></{key}>"
        elif constraint:
            constraints += f"<{key}><max>{constraint.split()[1]}</max></{key}>"
    if role is None:
        access = "<access_management>1</access_management>"
    else:
        access = "<grants>" + "".join(f"<query>{escape(g)}</query>" for g in role.grants) + "</grants>"
    interval = "".join(f"<{k}>{v}</{k}>" for k, v in (role.quota if role else {}).items())
    return (
        "<clickhouse><profiles><default/>"
        f"<role>{settings}<constraints>{constraints}</constraints></role></profiles>"
        "<users><default><password></password><networks><ip>::/0</ip></networks>"
        f"<profile>role</profile><quota>role</quota>{access}</default></users>"
        f"<quotas><role><interval><duration>3600</duration>{interval}</interval></role></quotas></clickhouse>"
    )


# ---------------------------------------------------------------------------------------------------------
# A child process opens the chDB directory with a given users.xml (one engine per process and path).

def _child() -> None:
    """Entry point of the child: reads {"path", "config", "steps"} on stdin, prints outcomes as JSON."""
    request = json.loads(sys.stdin.read())
    from clickhouse_connect.driver._chdbclient import ChdbClient

    client = ChdbClient(path=request["path"], database=request.get("database"),
                        chdb_options={"config-file": request["config"]})
    outcomes: list[str] = []
    for kind, arg in request["steps"]:
        try:
            if kind == "sql":
                client.command(arg, parameters=request.get("parameters"))
            elif kind == "query":
                outcomes.append(json.dumps(client.query(arg).result_rows, default=str))
                continue
            elif kind == "call":
                _child_call(client, arg)
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test asserts on
            text = str(exc)
            code = re.search(r"\(([A-Z][A-Z_]+)\)", text)
            outcomes.append(code.group(1) if code else f"{type(exc).__name__}: {text[:300]}")
    client.close()
    print(json.dumps(outcomes))


def _child_call(client: Any, name: str) -> None:
    from connectors import clickhouse_access, clickhouse_schema

    if name == "setup":
        clickhouse_schema.apply_schema(client, DATABASE)
        for statement in clickhouse_access.render_access(DATABASE):
            if statement.startswith("CREATE TABLE"):
                client.command(statement)
        client.command(f"INSERT INTO {DATABASE}.machines (machine_id, site, line, machine_type) "
                       f"SELECT 'm' || toString(number), 'site', 'line', 'pump' FROM numbers({MACHINES})")
    elif name == "schema_is_current":
        if not clickhouse_access.schema_is_current(client, DATABASE):
            raise RuntimeError("schema_is_current is False on a database with every migration applied")
    elif name == "load_machines":
        csv_path = Path(os.environ["PLANTPULSE_TEST_MACHINES_CSV"])
        if clickhouse_schema.load_machines(client, DATABASE, csv_path) != 2:
            raise RuntimeError("load_machines did not load the two machines")
    elif name == "sink_start":
        # What ClickHouseSink._open runs at every start, as the flow's user (a current schema is left alone).
        if not clickhouse_access.schema_is_current(client, DATABASE):
            clickhouse_schema.apply_schema(client, DATABASE)
        clickhouse_schema.set_refresh_interval(client, DATABASE, 3600)
    elif name == "apply_access":
        if clickhouse_access.apply_access(client, DATABASE, {u: "x" * 20 for u in USERS}) is not False:
            raise RuntimeError("apply_access did something on chDB")
    elif name == "check_default_user":
        clickhouse_access.check_default_user(client)
    else:
        raise ValueError(name)


def _run(path: Path, users_xml: str, steps: list[tuple[str, str]], *, database: str | None = None,
         parameters: dict[str, str] | None = None) -> list[str]:
    """Open `path` in a fresh process whose default user is described by `users_xml`; run `steps`."""
    config_dir = path.parent / f"config-{abs(hash(users_xml))}"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "users.xml").write_text(users_xml)
    (config_dir / "config.xml").write_text(
        f"<clickhouse><user_directories replace=\"replace\"><users_xml><path>{config_dir / 'users.xml'}</path>"
        "</users_xml></user_directories></clickhouse>")
    request = json.dumps({"path": str(path), "config": str(config_dir / "config.xml"), "steps": steps,
                          "database": database, "parameters": parameters})
    done = subprocess.run(
        [sys.executable, "-c", "from tests.test_least_privilege import _child; _child()"],
        input=request, capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-3000:]}")
    outcomes: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcomes


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chDB directory holding the PlantPulse schema, the acknowledgements table and ten machines."""
    path = tmp_path_factory.mktemp("access") / "engine"
    assert _run(path, _users_xml(None), [("call", "setup")]) == ["ok"]
    return path


def _denied(outcome: str) -> bool:
    return outcome == "ACCESS_DENIED"


def test_chdb_has_no_user_directory_so_apply_access_skips_it(engine: Path) -> None:
    """Why the grants are tested through users.xml: even with access_management, chDB cannot store a role."""
    outcomes = _run(engine, _users_xml(None), [("sql", "CREATE ROLE IF NOT EXISTS plantpulse_probe"),
                                               ("call", "apply_access")])
    assert outcomes == ["ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND", "ok"]


def test_every_access_statement_parses_on_the_engine(engine: Path) -> None:
    """Each statement, passwords as query parameters, reaches the engine's access layer: the errors are the
    missing user directory / unknown role, never SYNTAX_ERROR (so `IDENTIFIED ... BY {p:String}` parses)."""
    statements = render_access(DATABASE)
    parameters = {f"{user}_password": "correct horse battery staple" for user in USERS}
    outcomes = _run(engine, _users_xml(None), [("sql", s) for s in statements], parameters=parameters)
    allowed = {"ok", "ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND", "UNKNOWN_ROLE", "UNKNOWN_USER", "UNKNOWN_QUOTA"}
    bad = [(s.splitlines()[0], o) for s, o in zip(statements, outcomes) if o not in allowed]
    assert bad == []
    assert "SYNTAX_ERROR" not in outcomes


def test_ingest_writes_the_flows_tables_and_nothing_else(engine: Path, tmp_path: Path) -> None:
    """The flow's user: the start-up checks and every table the sink writes (TABLE_SCHEMAS, machines) work;
    reading them back, the acknowledgements table, DDL and deletes are refused by the engine."""
    csv_path = tmp_path / "machines.csv"
    csv_path.write_text("machine_id,site,line,machine_type\nx1,s,l,pump\nx2,s,l,fan\n")
    os.environ["PLANTPULSE_TEST_MACHINES_CSV"] = str(csv_path)
    try:
        allowed = [("call", "schema_is_current"), ("call", "load_machines")]
        allowed += [("sql", f"ALTER TABLE {DATABASE}.{view} MODIFY REFRESH EVERY 3600 SECOND APPEND")
                    for view in ("window_stats_hourly_refresh", "data_quality_refresh", "anomaly_scores_hourly_refresh")]
        tables = sorted(TABLE_SCHEMAS)
        allowed += [("sql", f"INSERT INTO {DATABASE}.{t} ({TABLE_SCHEMAS[t].names[0]}) VALUES ('probe')") for t in tables]
        refused = [("sql", f"SELECT count() FROM {DATABASE}.{t}") for t in tables]
        refused += [
            ("sql", f"INSERT INTO {DATABASE}.incident_acknowledgements (incident_id, acknowledged_by) VALUES ('i', 'x')"),
            ("sql", f"INSERT INTO {DATABASE}.window_stats_hourly_store (machine_id) VALUES ('m')"),
            ("sql", f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (v UInt32) ENGINE = Memory"),
            ("sql", f"ALTER TABLE {DATABASE}.alerts DELETE WHERE 1"),
            ("sql", f"ALTER TABLE {DATABASE}.alerts DROP COLUMN message"),
            ("sql", f"TRUNCATE TABLE {DATABASE}.alerts"),
            ("sql", f"DROP TABLE {DATABASE}.alerts"),
            ("sql", f"SYSTEM STOP MERGES {DATABASE}.alerts"),
        ]
        outcomes = _run(engine, _users_xml(_roles()["ingest"]), allowed + refused)
    finally:
        del os.environ["PLANTPULSE_TEST_MACHINES_CSV"]
    assert outcomes[: len(allowed)] == ["ok"] * len(allowed), list(zip(allowed, outcomes))
    assert [(r, o) for r, o in zip(refused, outcomes[len(allowed):]) if not _denied(o)] == []


def test_the_sinks_start_up_runs_as_ingest(engine: Path) -> None:
    assert _run(engine, _users_xml(_roles()["ingest"]), [("call", "sink_start")]) == ["ok"]


def _dashboard_sql() -> list[str]:
    """Every panel's and alert rule's query as Grafana sends it, for the last hour and one machine."""
    from grafana.macros import expand, expand_alert_query
    from grafana.queries import QUERIES

    time_to = datetime(2026, 1, 1, 12, tzinfo=UTC)
    time_from = time_to - timedelta(hours=1)
    variables: dict[str, str | list[str]] = {"site": ["site"], "line": ["line"], "machine_type": ["pump"],
                                             "machine_id": ["m1"]}
    out = []
    for key, query in sorted(QUERIES.items()):
        if key.startswith("alert."):
            out.append(expand_alert_query(query.sql, time_from=time_from, time_to=time_to, interval=timedelta(minutes=1)))
        else:
            chosen = {**variables, "machine_id": "m1"} if key.startswith("machine.") else variables
            out.append(expand(query.sql, time_from=time_from, time_to=time_to, interval=timedelta(seconds=10),
                              variables=chosen))
    return out


def _limit_probes(role: Role) -> tuple[list[tuple[str, str]], list[str]]:
    """The profile in effect (values read back), its limits unraisable, and result_overflow_mode=throw."""
    names = ["max_execution_time", "max_result_rows", "max_memory_usage"]
    steps = [("query", "SELECT " + ", ".join(f"toString(toUInt64(getSetting('{n}')))" for n in names))]
    expected = [json.dumps([[role.profile[n][0] for n in names]])]
    for name in names:
        raised = int(role.profile[name][1].split()[1]) * 2  # type: ignore[union-attr]
        steps.append(("sql", f"SELECT 1 SETTINGS {name} = {raised}"))
        expected.append("SETTING_CONSTRAINT_VIOLATION")
    steps.append(("sql", f"SELECT machine_id FROM {DATABASE}.machines SETTINGS max_result_rows = {MACHINES - 1}"))
    expected.append("TOO_MANY_ROWS_OR_BYTES")
    return steps, expected


def test_grafana_runs_every_dashboard_query_reads_nothing_else_and_writes_nothing(engine: Path) -> None:
    role = _roles()["grafana"]
    queries = _dashboard_sql()
    assert len(queries) > 20
    limits, expected_limits = _limit_probes(role)
    refused = [("sql", f"SELECT count() FROM {DATABASE}.{t}") for t in ("alerts", "incident_events", "schema_migrations",
                                                                       "incident_acknowledgements")]
    writes = [("sql", f"INSERT INTO {DATABASE}.machines (machine_id) VALUES ('forged')"),
              ("sql", f"CREATE TABLE {DATABASE}.stash (a UInt8) ENGINE = Memory")]
    steps = [("sql", q) for q in queries] + limits + refused + writes
    outcomes = _run(engine, _users_xml(role), steps, database=DATABASE)
    n = len(queries)
    failing = [(q[:200], o) for q, o in zip(queries, outcomes[:n]) if o != "ok"]
    assert failing == []
    assert outcomes[n: n + len(limits)] == expected_limits
    assert all(_denied(o) for o in outcomes[n + len(limits): n + len(limits) + len(refused)]), outcomes
    # readonly=2 refuses writes before the grants are even looked at.
    assert all(o in ("READONLY", "ACCESS_DENIED") for o in outcomes[-len(writes):]), outcomes


def test_analyst_reads_every_table_writes_none_and_cannot_raise_limits(engine: Path) -> None:
    role = _roles()["analyst"]
    listed = _run(engine, _users_xml(None), [("query", f"SELECT name FROM system.tables WHERE database = '{DATABASE}' "
                                                       "AND engine NOT LIKE '%View' ORDER BY name")])
    tables = [row[0] for row in json.loads(listed[0])]
    assert {"window_stats", "incident_acknowledgements", "machines"} <= set(tables)
    limits, expected_limits = _limit_probes(role)
    reads = [("sql", f"SELECT count() FROM {DATABASE}.{t}") for t in tables]
    writes = [("sql", f"INSERT INTO {DATABASE}.{t} ({TABLE_SCHEMAS[t].names[0]}) VALUES ('forged')")
              for t in sorted(TABLE_SCHEMAS)]
    writes += [("sql", f"ALTER TABLE {DATABASE}.alerts DELETE WHERE 1"), ("sql", f"DROP TABLE {DATABASE}.machines")]
    outcomes = _run(engine, _users_xml(role), reads + limits + writes)
    assert outcomes[: len(reads)] == ["ok"] * len(reads), list(zip(tables, outcomes))
    assert outcomes[len(reads): len(reads) + len(limits)] == expected_limits
    assert all(o in ("READONLY", "ACCESS_DENIED") for o in outcomes[-len(writes):]), outcomes


def test_operator_inserts_acknowledgements_only(engine: Path) -> None:
    ack = f"INSERT INTO {DATABASE}.incident_acknowledgements (incident_id, acknowledged_by, note) VALUES"
    steps = [
        ("sql", f"{ack} ('inc-1', 'alice', 'on it')"),
        ("query", f"SELECT incident_id, action, acknowledged_by FROM {DATABASE}.incident_acknowledgements"),
        ("sql", f"SELECT count() FROM {DATABASE}.incidents"),
        # Anything but an acknowledgement: refused by the table's constraints, or by the grants.
        ("sql", f"INSERT INTO {DATABASE}.incident_acknowledgements (incident_id, action, acknowledged_by) "
                "VALUES ('inc-1', 'resolve', 'alice')"),
        ("sql", f"{ack} ('', 'alice', '')"),
        ("sql", f"INSERT INTO {DATABASE}.incident_events (incident_id) VALUES ('inc-1')"),
        ("sql", f"INSERT INTO {DATABASE}.incidents (incident_id) VALUES ('inc-1')"),
        ("sql", f"SELECT count() FROM {DATABASE}.window_stats"),
        ("sql", f"ALTER TABLE {DATABASE}.incident_acknowledgements DELETE WHERE 1"),
    ]
    outcomes = _run(engine, _users_xml(_roles()["operator"]), steps)
    assert outcomes[:3] == ["ok", json.dumps([["inc-1", "acknowledge", "alice"]]), "ok"]
    assert outcomes[3:5] == ["VIOLATED_CONSTRAINT", "VIOLATED_CONSTRAINT"]
    assert all(_denied(o) for o in outcomes[5:]), outcomes


def test_apply_access_refuses_a_passwordless_default_user(engine: Path) -> None:
    """check_default_user on the engine's own system.users: a `default` declared with <no_password/> is refused,
    one with a password hash passes. (An *empty* plaintext password looks like any plaintext one there: that case
    is caught by main()'s login probe against a server, which cannot run here: no ClickHouse server.)"""
    no_password = _users_xml(None).replace("<password></password>", "<no_password/>")
    outcomes = _run(engine, no_password, [("call", "check_default_user")])
    assert outcomes[0].startswith("AccessError") and "passwordless" in outcomes[0]
    # The stock <password></password> reads as plaintext_password: passes this check (main() probes a login).
    assert _run(engine, _users_xml(None), [("call", "check_default_user")]) == ["ok"]


# ---------------------------------------------------------------------------------------------------------
# The access SQL as text: what the engine tests above cannot see.

def test_ingest_is_granted_insert_on_exactly_the_tables_the_flow_writes() -> None:
    grants = _roles()["ingest"].grants
    inserts = {g.split(".")[-1] for g in grants if g.startswith("GRANT INSERT ON")}
    assert inserts == set(TABLE_SCHEMAS) | {"machines"}
    others = [g for g in grants if not g.startswith("GRANT INSERT ON")]
    assert others == [f"GRANT SELECT ON `{DATABASE}`.schema_migrations"] + [
        f"GRANT ALTER VIEW MODIFY REFRESH ON `{DATABASE}`.{v}"
        for v in ("window_stats_hourly_refresh", "data_quality_refresh", "anomaly_scores_hourly_refresh")]


def test_grafana_is_granted_select_on_every_table_the_dashboards_read() -> None:
    """Tables named after FROM/JOIN in the generated dashboard JSON and alert rules (grafana/provisioning)."""
    text = "".join(p.read_text() for p in (ROOT / "grafana" / "provisioning").rglob("*") if p.suffix in (".json", ".yaml"))
    read = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", text)) - {"numbers"}
    granted = {g.split(".")[-1] for g in _roles()["grafana"].grants}
    assert read and read <= granted, read - granted
    assert all(g.startswith("GRANT SELECT ON") for g in _roles()["grafana"].grants)


def test_no_role_may_alter_drop_or_manage_access() -> None:
    forbidden = re.compile(r"\b(ALL|DROP|TRUNCATE|CREATE|SYSTEM|ACCESS MANAGEMENT|ROLE ADMIN|INTROSPECTION|"
                           r"FILE|URL|S3|REMOTE|ALTER(?! VIEW MODIFY REFRESH$))\b")
    for user, role in _roles().items():
        assert [g for g in role.grants if forbidden.search(g.split(" ON ")[0])] == [], user
    assert not re.search(r"WITH GRANT OPTION|ON \*\.\*", access_sql())


def test_readers_have_capped_profiles_and_quotas() -> None:
    roles = _roles()
    for user in ("grafana", "analyst"):
        profile = roles[user].profile
        assert profile["readonly"] == ("2", "CONST")
        for name in ("max_execution_time", "max_result_rows", "max_memory_usage"):
            value, constraint = profile[name]
            assert constraint == f"MAX {value}" and int(value) > 0, (user, name)
        assert int(roles[user].quota["queries"]) > 0 and int(roles[user].quota["execution_time"]) > 0


def test_passwords_are_query_parameters_never_literals() -> None:
    sql = access_sql()
    for user in USERS:
        assert len(re.findall(rf"USER (?:IF NOT EXISTS )?{user} IDENTIFIED WITH sha256_password BY "
                              rf"\{{{user}_password:String\}}", sql)) == 2
    assert not re.search(r"IDENTIFIED[^;]*BY\s+'", sql) and "NO_PASSWORD" not in sql.upper().replace(" ", "_")


def test_passwords_come_from_the_environment_and_must_be_long() -> None:
    env = {variable: f"{user}-0123456789abcdef" for user, variable in USERS.items()}
    assert passwords_from_env(env) == {user: f"{user}-0123456789abcdef" for user in USERS}
    with pytest.raises(AccessError, match="CLICKHOUSE_GRAFANA_PASSWORD \\(unset\\).*CLICKHOUSE_OPERATOR_PASSWORD "
                                          "\\(5 characters\\)"):
        passwords_from_env({**env, "CLICKHOUSE_GRAFANA_PASSWORD": "", "CLICKHOUSE_OPERATOR_PASSWORD": "short"})


# ---------------------------------------------------------------------------------------------------------
# Encryption at rest: the prod overlay's ClickHouse disk config, loaded by the engine.

def test_clickhouse_encrypted_disk_config_keeps_parts_unreadable(tmp_path: Path) -> None:
    """k8s/overlays/prod/clickhouse/clickhouse-encrypted-disk.xml as the engine's config (its disk path
    moved into tmp_path): new tables land on the encrypted disk and no data file holds the inserted text; the
    same rows in a table on the plain default disk do (positive control)."""
    xml = (ROOT / "k8s/overlays/prod/clickhouse/clickhouse-encrypted-disk.xml").read_text()
    assert "/var/lib/clickhouse/disks/plain/" in xml and "from_env=\"CLICKHOUSE_DISK_KEY_HEX\"" in xml
    data = tmp_path / "disks"
    (tmp_path / "config.xml").write_text(xml.replace("/var/lib/clickhouse/disks/plain/", f"{data / 'plain'}/"))
    script = (
        "import json, sys\n"
        "from clickhouse_connect.driver._chdbclient import ChdbClient\n"
        "c = ChdbClient(path=sys.argv[1], chdb_options={'config-file': sys.argv[2]})\n"
        "c.command('CREATE DATABASE d')\n"
        "c.command('CREATE TABLE d.secret (s String) ENGINE = MergeTree ORDER BY s')\n"
        "c.command(\"CREATE TABLE d.control (s String) ENGINE = MergeTree ORDER BY s \"\n"
        "          \"SETTINGS storage_policy = 'default'\")\n"
        "for t in ('secret', 'control'):\n"
        "    c.command(f\"INSERT INTO d.{t} SELECT 'machine-secret-' || toString(number) FROM numbers(1000)\")\n"
        "print(json.dumps(c.query(\"SELECT table, disk_name, path FROM system.parts WHERE database = 'd' "
        "ORDER BY table\").result_rows))\n"
    )
    env = {**os.environ, "CLICKHOUSE_DISK_KEY_HEX": "00112233445566778899aabbccddeeff"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "engine"), str(tmp_path / "config.xml")],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    parts = {table: (disk, Path(path)) for table, disk, path in json.loads(done.stdout.strip().splitlines()[-1])}
    assert parts["secret"][0] == "encrypted" and parts["control"][0] == "default"

    def holds_plaintext(part: Path) -> bool:
        return any(b"machine-secret-" in f.read_bytes() for f in part.rglob("*") if f.is_file())

    assert not holds_plaintext(parts["secret"][1]) and parts["secret"][1].is_relative_to(data)
    assert holds_plaintext(parts["control"][1])


# ---------------------------------------------------------------------------------------------------------
# Kubernetes: the rendered manifests, and the NetworkPolicies evaluated for who may connect to whom.

def _render(path: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed on this machine (it is on the project's machines)")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


APP = "plantpulse"  # the namespace the overlays are applied to (un-namespaced objects land there)
FLOW = {"app.kubernetes.io/name": "plantpulse", "app.kubernetes.io/component": "telemetry-flow"}
# (namespace, labels) of the pods the policies are about, and some that must be shut out.
PODS: dict[str, tuple[str, dict[str, str]]] = {
    "flow": (APP, FLOW),
    "notifier": (APP, {"app.kubernetes.io/name": "plantpulse", "app.kubernetes.io/component": "notifier"}),
    "grafana": (APP, {"app.kubernetes.io/name": "grafana"}),
    "access-job": (APP, {"app.kubernetes.io/name": "plantpulse", "app.kubernetes.io/component": "clickhouse-access"}),
    "analyst": ("analytics", {"plantpulse.io/role": "analyst"}),
    "clickhouse": ("clickhouse", {"app.kubernetes.io/name": "clickhouse"}),
    "kafka": ("kafka", {"app.kubernetes.io/name": "kafka"}),
    "ingress": ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "stranger-in-app": (APP, {"app": "something-else"}),
    "stranger-analytics": ("analytics", {"app": "notebook"}),
    "stranger-elsewhere": ("default", {"app": "web"}),
}
CLICKHOUSE_PORT, KAFKA_PORT, S3 = 8123, 9092, "52.216.0.10"


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    assert not (selector or {}).get("matchExpressions"), "the evaluator reads matchLabels only"
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: str) -> bool:
    if pod not in PODS:  # an address outside the cluster
        block = peer.get("ipBlock")
        if not block:
            return False
        import ipaddress
        ip = ipaddress.ip_address(pod)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    namespace, labels = PODS[pod]
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        ns_ok = namespace == policy_ns
    return ns_ok and ("podSelector" not in peer or _matches(peer["podSelector"], labels))


def _allowed(policies: list[dict[str, Any]], pod: str, direction: str, peer: str, port: int) -> bool:
    """Whether `direction` ("Ingress"/"Egress") traffic of `pod` with `peer` on `port` is allowed."""
    namespace, labels = PODS[pod]
    selecting = [p for p in policies if p["metadata"].get("namespace", APP) == namespace
                 and direction in p["spec"].get("policyTypes", []) and _matches(p["spec"]["podSelector"], labels)]
    if not selecting:
        return True  # no policy isolates the pod in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers_ok = not rule.get(peers_key) or any(
                _peer_matches(p, policy["metadata"].get("namespace", APP), peer) for p in rule[peers_key])
            ports_ok = not rule.get("ports") or any(p.get("port") == port for p in rule["ports"])
            if peers_ok and ports_ok:
                return True
    return False


def _connects(policies: list[dict[str, Any]], source: str, target: str, port: int) -> bool:
    egress = _allowed(policies, source, "Egress", target, port)
    ingress = target not in PODS or _allowed(policies, target, "Ingress", source, port)
    return egress and ingress


@pytest.fixture(scope="module", params=["k8s/base", "k8s/overlays/prod"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _render(request.param)


def test_network_policies_default_deny_and_allow_only_the_named_connections(rendered: list[dict[str, Any]]) -> None:
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert len(deny) == 1 and "namespace" not in deny[0]["metadata"]
    sources = [p for p in PODS if p not in ("clickhouse", "kafka", "dns")]
    reach_clickhouse = {s for s in sources if _connects(policies, s, "clickhouse", CLICKHOUSE_PORT)}
    assert reach_clickhouse == {"flow", "notifier", "grafana", "analyst", "access-job"}
    reach_kafka = {s for s in sources if _connects(policies, s, "kafka", KAFKA_PORT)}
    assert reach_kafka == {"flow", "notifier", "ingress"}
    # Inside PlantPulse's namespace, only the flow reaches the object store (and no port but HTTPS).
    app_pods = [p for p in PODS if PODS[p][0] == APP]
    assert {p for p in app_pods if _connects(policies, p, S3, 443)} <= {"flow", "notifier", "grafana"}
    assert _connects(policies, "flow", S3, 443) and not _connects(policies, "flow", S3, 80)
    assert not _connects(policies, "flow", "10.1.2.3", 443)  # private addresses are not "the object store"
    assert not _connects(policies, "access-job", S3, 443) and not _connects(policies, "stranger-in-app", S3, 443)
    # The flow's pods reach each other (Bytewax) and DNS; nobody else reaches the flow but Prometheus' scrape.
    assert _connects(policies, "flow", "flow", 2101) and _connects(policies, "flow", "dns", 53)
    assert {s for s in PODS if _connects(policies, s, "flow", 9464)} == {"prometheus"}
    assert {s for s in PODS if _connects(policies, s, "flow", 2101)} == {"flow"}
    assert {s for s in PODS if _connects(policies, s, "grafana", 3000)} == {"ingress"}


def test_pods_mount_no_service_account_token(rendered: list[dict[str, Any]]) -> None:
    accounts = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ServiceAccount"}
    workloads = [d for d in rendered if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job", "CronJob")]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, workload["metadata"]["name"]
        assert accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False
    assert not [d for d in rendered if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]


_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY(_|$)|CREDENTIAL", re.IGNORECASE)


def test_secrets_are_only_referenced(rendered: list[dict[str, Any]]) -> None:
    """No Secret objects with data, no secret-looking variable with an inline value or in a ConfigMap."""
    assert [d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"] == []
    for config in (d for d in rendered if d["kind"] == "ConfigMap"):
        # A `<NAME>__FILE` variable holds the path of a mounted Secret file (Grafana's admin password), not a secret.
        assert [k for k, v in config.get("data", {}).items() if _SECRET_NAME.search(k)
                and not (k.endswith("__FILE") and v.startswith("/"))] == []
    for workload in (d for d in rendered if d["kind"] == "StatefulSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if _SECRET_NAME.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
            for source in container.get("envFrom", []):
                assert set(source) <= {"configMapRef", "secretRef", "prefix"}


def test_production_overlay_encrypts_at_rest() -> None:
    docs = _render("k8s/overlays/prod")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("plantpulse-config"))
    assert config["data"]["S3_SSE"] == "AES256"
    storage = next(d for d in docs if d["kind"] == "StorageClass")
    assert storage["parameters"]["encrypted"] == "true" and storage["reclaimPolicy"] == "Retain"
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["spec"]["storageClassName"] for c in claims] == [storage["metadata"]["name"]]
    clickhouse = _render("k8s/overlays/prod/clickhouse")
    disk = next(d for d in clickhouse if d["kind"] == "ConfigMap")
    assert disk["metadata"]["namespace"] == "clickhouse"
    assert disk["data"]["plantpulse-encrypted-disk.xml"] == (
        ROOT / "k8s/overlays/prod/clickhouse/clickhouse-encrypted-disk.xml").read_text()
    # The base (development) leaves SSE to the bucket's default and the cluster's default StorageClass.
    base = _render("k8s/base")
    assert "S3_SSE" not in next(d for d in base if d["kind"] == "ConfigMap"
                                and d["metadata"]["name"].startswith("plantpulse-config-"))["data"]


# ---------------------------------------------------------------------------------------------------------
# Grafana's access settings.

def test_grafana_access_env_is_current_and_closes_anonymous_access() -> None:
    from grafana.access import ENV_FILE, render_env

    text = ENV_FILE.read_text()
    assert text == render_env(), "run python -m grafana.access"
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert settings["GF_USERS_AUTO_ASSIGN_ORG_ROLE"] == "Viewer"  # operators
    assert settings["GF_USERS_ALLOW_SIGN_UP"] == "false" and settings["GF_USERS_VIEWERS_CAN_EDIT"] == "false"
    assert settings["GF_USERS_EDITORS_CAN_ADMIN"] == "false"  # maintainers edit, do not administer
    assert settings["GF_PUBLIC_DASHBOARDS_ENABLED"] == "false" and settings["GF_SNAPSHOTS_EXTERNAL_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in settings and settings["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/")
    assert "# GF_AUTH_GENERIC_OAUTH_ROLE_ATTRIBUTE_PATH=contains(groups[*], 'plantpulse-maintainers') && 'Editor'" in text
    # Every name is a documented grafana.ini key spelled as GF_<SECTION>_<KEY>.
    sections = ("AUTH_ANONYMOUS_", "AUTH_BASIC_", "USERS_", "PUBLIC_DASHBOARDS_", "SNAPSHOTS_", "SECURITY_")
    assert all(name.startswith(tuple("GF_" + s for s in sections)) for name in settings)


def test_grafana_datasource_user_is_the_read_only_one() -> None:
    """The provisioned ClickHouse datasource takes its user from CLICKHOUSE_USER: the deployment sets it to the
    `grafana` user of access_control.sql (the datasource file documents the variable)."""
    text = (ROOT / "grafana/provisioning/datasources/plantpulse.yaml").read_text()
    assert "username: ${CLICKHOUSE_USER}" in text and "password: ${CLICKHOUSE_PASSWORD}" in text
    assert "grafana" in USERS


if __name__ == "__main__":
    _child()
