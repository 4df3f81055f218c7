"""`plantpulse grafana build|push`, `plantpulse snapshot` and the demo's closing snapshot, as users run them.

The commands run in-process (typer's CliRunner): the seeded database of `dashboard_db` is embedded chDB, which
this process holds, so only an in-process command can read it (a second process gets the "in use" error, which
is checked too). `grafana push` goes to the local stand-in for Grafana's HTTP API of tests/test_grafana_push.py
(Grafana's server cannot be installed on these machines; that module says which documented shapes it checks).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner, Result

from connectors.clickhouse_client import connect
from grafana.build import PROVISIONING_ROOT
from grafana.provisioning_files import GRAFANA_ENV
from plantpulse.cli import app
from plantpulse.demo import write_snapshot
from tests import test_grafana_push as fake_api
from tests.dashboard_seed import DashboardSeed
from tests.processes import PLANTPULSE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The stand-in Grafana (a fresh one per test), under a name of its own: `grafana` is also the package's name.
fake_grafana = fake_api.grafana


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, args, env=env)


def stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_pngs(paths: list[Path], machine: str | None = None) -> None:
    assert [p.name for p in paths][0] == "fleet-now.png" and len(paths) == 2, paths
    if machine is not None:
        assert paths[1].name == f"machine-{machine}.png"
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
        with Image.open(path) as image:
            image.verify()  # a whole, readable PNG, not only its first bytes
        assert path.stat().st_size > 20_000, (path, path.stat().st_size)  # drawn panels, not an empty canvas


# --- grafana build -------------------------------------------------------------------------------------------


def test_build_check_passes_on_the_committed_tree() -> None:
    result = invoke(["grafana", "build", "--check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("files up to date") and result.stderr == ""


def test_build_check_lists_changed_and_stale_files_and_build_rewrites_them(tmp_path: Path) -> None:
    root = tmp_path / "provisioning"
    shutil.copytree(PROVISIONING_ROOT, root)
    assert invoke(["grafana", "build", "--check", "--root", str(root)]).exit_code == 0
    board = next((root / "dashboards" / "plantpulse").glob("*.json"))
    board.write_text(board.read_text().replace('"title"', '"title" ', 1))  # a hand edit
    stale = root / "dashboards" / "plantpulse" / "retired.json"
    stale.write_text("{}\n")
    checked = invoke(["grafana", "build", "--check", "--root", str(root)])
    assert checked.exit_code == 1, checked.output
    assert checked.stdout == ""
    assert f"differs from the generator: {board}" in checked.stderr
    assert f"differs from the generator: {stale}" in checked.stderr
    assert "plantpulse grafana build" in stderr_lines(checked)[-1]
    built = invoke(["grafana", "build", "--root", str(root)])
    assert built.exit_code == 0, built.output
    assert board.relative_to(root).as_posix() in built.stdout and not stale.exists()
    assert invoke(["grafana", "build", "--check", "--root", str(root)]).exit_code == 0


# --- grafana push --------------------------------------------------------------------------------------------


def push_env(**values: str) -> dict[str, str | None]:
    """Nothing of the Grafana environment from the outer process (None unsets), then `values`."""
    return {name: None for name in GRAFANA_ENV} | {"GRAFANA_TOKEN": None} | values


def test_push_creates_every_object_and_prints_a_line_each(fake_grafana: tuple[fake_api.FakeGrafana, str]) -> None:
    fake, url = fake_grafana
    password = f"pw-{uuid.uuid4().hex}"
    result = invoke(["grafana", "push", "--url", url, "--token", fake_api.TOKEN], push_env(CLICKHOUSE_PASSWORD=password))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    pushed = {(line.split()[1], line.split()[2]) for line in lines}
    expected_boards = {"plantpulse-fleet", "plantpulse-machine", "plantpulse-incidents", "plantpulse-pipeline"}
    assert {uid for kind, uid in pushed if kind == "dashboard"} == expected_boards == set(fake.dashboards)
    assert {uid for kind, uid in pushed if kind == "datasource"} == set(fake.datasources)
    assert {uid for kind, uid in pushed if kind == "alert-rule"} == set(fake.rules) and fake.rules
    assert ("folder", "plantpulse") in pushed and len(pushed) == len(lines)
    assert all(line.startswith("created ") for line in lines if " alert-rule-group " not in line), lines
    clickhouse = fake.datasources["plantpulse-clickhouse"]
    assert clickhouse["secureJsonData"] == {"password": password} and password not in result.output
    # Unset non-secret settings take the compose/k8s values, and the command says so.
    assert clickhouse["jsonData"]["host"] == GRAFANA_ENV["CLICKHOUSE_HOST"][0]
    assert "CLICKHOUSE_HOST" in result.stderr and len(stderr_lines(result)) == 1
    # Again, the token from GRAFANA_TOKEN and a host from the environment: the same objects, updated.
    again = invoke(["grafana", "push", "--url", url],
                   push_env(CLICKHOUSE_PASSWORD=password, GRAFANA_TOKEN=fake_api.TOKEN, CLICKHOUSE_HOST="ch.example"))
    assert again.exit_code == 0, again.output
    assert [line.split()[1:3] for line in again.stdout.splitlines()] == [line.split()[1:3] for line in lines]
    assert all(line.startswith("updated ") for line in again.stdout.splitlines())
    assert fake.datasources["plantpulse-clickhouse"]["jsonData"]["host"] == "ch.example"
    assert set(fake.dashboards) == expected_boards


def test_push_errors_are_one_line_and_exit_2(fake_grafana: tuple[fake_api.FakeGrafana, str]) -> None:
    fake, url = fake_grafana
    wrong = invoke(["grafana", "push", "--url", url, "--token", "glsa_wrong"], push_env(CLICKHOUSE_PASSWORD="pw"))
    assert wrong.exit_code == 2 and wrong.stdout == "", wrong.output
    assert len(stderr_lines(wrong)) == 1, wrong.stderr
    assert wrong.stderr.startswith("plantpulse: grafana push: folder 'plantpulse': HTTP 401") and "--token" in wrong.stderr
    assert "glsa_wrong" not in wrong.output and not fake.folders
    requests = len(fake.requests)
    for args, env, message in (
        (["--token", fake_api.TOKEN], push_env(), "CLICKHOUSE_PASSWORD"),  # no secret: nothing is sent
        ([], push_env(CLICKHOUSE_PASSWORD="pw"), "GRAFANA_TOKEN"),
        (["--token", fake_api.TOKEN, "--url", "grafana:3000"], push_env(CLICKHOUSE_PASSWORD="pw"), "expected http(s)://"),
    ):
        result = invoke(["grafana", "push", "--url", url, *args], env)
        assert result.exit_code == 2 and len(stderr_lines(result)) == 1, result.output
        assert result.stderr.startswith("plantpulse: ") and message in result.stderr, result.stderr
    assert len(fake.requests) == requests
    unreachable = invoke(["grafana", "push", "--url", "http://127.0.0.1:9", "--token", fake_api.TOKEN],
                         push_env(CLICKHOUSE_PASSWORD="pw"))
    assert unreachable.exit_code == 2 and len(stderr_lines(unreachable)) == 1, unreachable.output
    assert "cannot reach Grafana" in unreachable.stderr


# --- snapshot ------------------------------------------------------------------------------------------------


def test_snapshot_rejects_a_bad_since() -> None:
    for since in ("30", "0m", "-5m", "1w", "soon"):
        result = invoke(["snapshot", "--out", "unused", "--since", since])
        assert result.exit_code == 2 and len(stderr_lines(result)) == 1, result.output
        assert "--since" in result.stderr and "30m" in result.stderr
    assert not Path("unused").exists()


def seed_env(seed: DashboardSeed) -> dict[str, str | None]:
    settings = seed.settings
    return {"CLICKHOUSE_URL": settings.clickhouse_url, "CLICKHOUSE_DATABASE": seed.database,
            "WINDOW_SECONDS": str(settings.window_seconds), "DATA_DIR": str(settings.data_dir)}


def since_seed(seed: DashboardSeed) -> str:
    """A `--since` reaching back before the seed's first reading."""
    return f"{math.ceil((datetime.now(UTC) - seed.time_from).total_seconds() / 60) + 1}m"


@pytest.mark.integration
def test_snapshot_draws_fleet_and_machine_pngs(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    machine = dashboard_db.incident_machine
    out = tmp_path / "pictures"
    result = invoke(["snapshot", "--out", str(out), "--machine", machine, "--since", since_seed(dashboard_db)],
                    seed_env(dashboard_db))
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert all(path.parent == out for path in paths)
    assert_pngs(paths, machine)


@pytest.mark.integration
def test_snapshot_while_another_process_holds_the_embedded_database(dashboard_db: DashboardSeed) -> None:
    """While this process holds the seed's chDB directory open (embedded ClickHouse: one process per directory), as
    a running flow does, the command in another process says so in one line and exits 2."""
    env = {**os.environ, **{k: v for k, v in seed_env(dashboard_db).items() if v is not None}}
    holder = connect(dashboard_db.settings)  # the engine holds the directory while a client is open
    try:
        done = subprocess.run([*PLANTPULSE, "snapshot", "--out", str(dashboard_db.settings.data_dir / "busy")], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert done.returncode == 2, done.stderr[-2000:]
    # The engine itself writes a "Cannot lock file" line to the process's stderr first (native code, as for
    # `plantpulse sql`); the command's own reason is one line, the last.
    ours = [line for line in done.stderr.splitlines() if line.startswith("plantpulse: ")]
    assert len(ours) == 1 and done.stderr.strip().splitlines()[-1] == ours[0] and done.stdout == "", done.stderr
    assert ours[0].startswith("plantpulse: the embedded ClickHouse at "), done.stderr
    assert "is in use by another process" in done.stderr and not (dashboard_db.settings.data_dir / "busy").exists()


# --- the demo's closing step ---------------------------------------------------------------------------------


def console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=2000), text


@pytest.mark.integration
def test_demo_ends_with_the_snapshot_paths(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    screen, text = console()
    started_ms = int(dashboard_db.time_from.timestamp() * 1000)
    paths = write_snapshot(screen, dashboard_db.settings, tmp_path / "snapshot", started_ms)
    assert paths is not None
    assert_pngs(paths, dashboard_db.incident_machine)  # the default machine: the one with the most incidents
    assert text.getvalue().strip().splitlines()[-1] == f"Dashboards snapshot: {paths[0]}, {paths[1]}"


@pytest.mark.integration
def test_a_failed_demo_snapshot_is_reported_not_raised(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    settings = dashboard_db.settings.model_copy(update={"clickhouse_database": "no_such_db", "data_dir": tmp_path})
    screen, text = console()
    assert write_snapshot(screen, settings, tmp_path / "snapshot", int(dashboard_db.time_from.timestamp() * 1000)) is None
    line = text.getvalue().strip()
    assert line.startswith("Dashboards snapshot failed: snapshot: no database 'no_such_db'") and "\n" not in line, line
    assert "plantpulse snapshot --out" in line and "--since" in line
    assert "Traceback" in (tmp_path / "logs" / "snapshot.log").read_text()
    assert not list((tmp_path / "snapshot").glob("*.png"))
