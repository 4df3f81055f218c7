"""docker-compose.yml: the whole stack on one machine, checked by parsing (there is no Docker engine here).

`docker compose up` cannot run on the development machines or in CI, so these tests read the file with
PyYAML (anchors and merge keys resolved as compose resolves them) and check what compose and the containers
would do with it: pinned images, environment names that plantpulse/settings.py knows (taken from the Settings
class), the two flow processes forming one Bytewax cluster by the StatefulSet logic of `Settings.cluster()`,
named volumes and bind mounts, healthchecks, start-up order (depends_on conditions, no cycle), host ports,
and secrets only by reference to `.env` (documented by .env.example, which holds no values).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.clickhouse_access import USERS
from plantpulse.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGE = f"plantpulse:{VERSION}"
PLANTPULSE = {name: s for name, s in SERVICES.items() if s["image"] == IMAGE}
FLOW = {name: s for name, s in PLANTPULSE.items() if s["command"] == ["run"]}
SETTINGS_NAMES = {name.upper() for name in Settings.model_fields}
# Read by the code besides Settings: the ClickHouse users' passwords (connectors.clickhouse_access, at migrate
# time) and the S3 client's standard credentials (Settings.s3_endpoint_url: "credentials: AWS_*").
OTHER_NAMES = set(USERS.values()) | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: str, filled: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?message}` against a filled-in .env."""
    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if filled.get(name):
            return filled[name]
        if kind == "-":
            return rest
        raise AssertionError(f"${{{name}}} has no value and no default")
    return INTERPOLATION.sub(one, value)


def filled_env() -> dict[str, str]:
    """.env.example with every empty value given a 24-character stand-in, as the instructions say."""
    return {name: value or f"{name.lower()[:12]:x<12}-0123456789a" for name, value in env_example().items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {name: interpolate(str(value), filled_env()) for name, value in env.items()}


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the container builds them: from its environment only (the image sets DATA_DIR)."""
    for name in SETTINGS_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", "/var/lib/plantpulse")
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_image_is_pinned() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag) or re.fullmatch(r"RELEASE\.[\dT:-]+Z", tag), (
            f"{name}: {image} is not pinned to a version"
        )
    assert {s["image"].split(":")[0] for s in SERVICES.values()} >= {
        "apache/kafka", "clickhouse/clickhouse-server", "minio/minio", "minio/mc", "grafana/grafana", "plantpulse",
    }
    for name, service in PLANTPULSE.items():  # one image, built from the repository's Dockerfile
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
    assert all("build" not in s for s in SERVICES.values() if s["image"] != IMAGE)


def test_plantpulse_services_use_only_known_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(PLANTPULSE) == {"kafka-topics", "clickhouse-migrate", "simulator", "plantpulse-flow-0",
                               "plantpulse-flow-1", "notifier"}
    for name, service in PLANTPULSE.items():
        unknown = set(service.get("environment", {})) - SETTINGS_NAMES - OTHER_NAMES
        assert not unknown, f"{name}: {sorted(unknown)} are not settings (plantpulse/settings.py)"
        settings = settings_of(service, monkeypatch)  # every value valid for its field
        if "KAFKA_BOOTSTRAP_SERVERS" in service["environment"]:
            assert settings.kafka_bootstrap_servers == "kafka:9092", name


def test_commands_are_plantpulse_commands() -> None:
    """Each service's command parses as the `plantpulse` CLI would parse it (groups resolved, options checked)."""
    import typer

    from plantpulse.cli import app

    for name, service in PLANTPULSE.items():
        command: Any = typer.main.get_command(app)
        context = command.make_context("plantpulse", list(service["command"]))
        path = []
        while hasattr(command, "resolve_command"):
            tokens = [*getattr(context, "_protected_args", []), *context.args]  # click keeps the subcommand apart
            sub_name, command, remaining = command.resolve_command(context, tokens)
            path.append(sub_name)
            context = command.make_context(sub_name, remaining, parent=context)
        assert not context.args, f"{name}: {service['command']} leaves {context.args} unparsed"
        assert path == [w for w in service["command"] if not w.startswith("-")][: len(path)], name
    assert SERVICES["kafka-topics"]["command"] == ["topics", "ensure"]
    assert SERVICES["clickhouse-migrate"]["command"] == ["sql", "migrate"]


def test_sql_migrate_applies_the_schema(tmp_path: Path) -> None:
    """The one-shot `plantpulse sql migrate` of clickhouse-migrate, run here on an embedded chDB (the access SQL
    needs a server and is skipped there): exit 0, every migration recorded, and a second run changes nothing."""
    from connectors.clickhouse_schema import load_migrations

    env = {"PATH": str(Path(sys.executable).parent), "DATA_DIR": str(tmp_path), "HOME": str(tmp_path),
           "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "CLICKHOUSE_DATABASE": "plantpulse"}
    plantpulse = str(Path(sys.executable).with_name("plantpulse"))
    for _ in range(2):
        done = subprocess.run([plantpulse, "sql", "migrate"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    query = "SELECT count() AS n FROM plantpulse.schema_migrations"
    done = subprocess.run([plantpulse, "sql", query, "--format", "json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["n"] == len(load_migrations())  # JSON lines


def test_the_two_flow_processes_form_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(FLOW) == {"plantpulse-flow-0", "plantpulse-flow-1"}
    clusters = {name: settings_of(service, monkeypatch).cluster() for name, service in FLOW.items()}
    ids = {name: process_id for name, (process_id, _) in clusters.items() if process_id is not None}
    assert sorted(ids.values()) == [0, 1]
    addresses = {tuple(found or []) for _, found in clusters.values()}
    assert len(addresses) == 1, "both processes must derive the same address list"
    [cluster] = addresses
    assert len(cluster) == len(FLOW)
    for name, process_id in ids.items():
        service = FLOW[name]
        host, _, port = cluster[process_id].rpartition(":")
        # This container answers to its own address: a network alias on the network it is on.
        aliases = {alias for network in service["networks"].values() for alias in network["aliases"]}
        assert host in aliases, f"{name} is process {process_id} but does not answer to {host}"
        assert port == environment(service)["BYTEWAX_PORT"]
        for other in set(FLOW) - {name}:  # ... and no other container does
            assert host not in {a for n in FLOW[other]["networks"].values() for a in n["aliases"]}
    settings = settings_of(FLOW["plantpulse-flow-0"], monkeypatch)
    assert settings.topic_partitions >= len(cluster) * settings.bytewax_workers_per_process
    assert settings.recovery_partitions >= len(cluster) * settings.bytewax_workers_per_process


def test_each_flow_process_has_its_own_recovery_directory_and_sees_the_simulators_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layout tests/test_rescaling.py proves: a recovery directory per process (process 0 holds the store)."""
    stores, directories = set(), set()
    for name, service in FLOW.items():
        settings = settings_of(service, monkeypatch)
        mounts = dict(reversed(volume.split(":")[:2]) for volume in service["volumes"])
        [volume] = [v for target, v in mounts.items() if Path(str(settings.recovery_dir)).is_relative_to(target)]
        stores.add(volume)
        directories.add(str(settings.recovery_dir))
        assert Path(str(settings.machines_file)).is_relative_to("/var/lib/plantpulse"), name
        assert Path(str(settings.device_keys_file)).is_relative_to("/var/lib/plantpulse"), name
        assert settings.lake_url.startswith("s3://") and not settings.clickhouse_is_embedded, name
    assert len(stores) == 1 and len(directories) == len(FLOW)
    assert f"{stores.pop()}:/var/lib/plantpulse" in SERVICES["simulator"]["volumes"]


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith((".", "/")):
                assert source.startswith("./"), f"{name}: bind mounts are relative to the repository"
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
                assert volume.endswith(":ro"), f"{name}: {volume} should be read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in SERVICES["grafana"]["volumes"]


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for name, service in SERVICES.items():
        if is_one_shot(service):
            assert "healthcheck" not in service, name
            continue
        assert service.get("restart") in {"unless-stopped", "on-failure"}, name
        check = service["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        if service["image"] == IMAGE:  # the image's own probe (docker/healthcheck.py), copied where it runs
            assert check["test"] == ["CMD", "python", "/usr/local/lib/plantpulse/healthcheck.py"], name
            assert "COPY docker/healthcheck.py /usr/local/lib/plantpulse/healthcheck.py" in dockerfile
    assert {n for n, s in SERVICES.items() if is_one_shot(s)} == {"kafka-topics", "clickhouse-migrate", "minio-init"}


def test_start_order() -> None:
    graph = {}
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for other, condition in depends.items():
            assert other in SERVICES, f"{name} depends on unknown {other}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[other], f"{name} waits for {other}'s health, which it has none of"
            else:
                assert condition["condition"] == "service_completed_successfully", f"{name} -> {other}"
                assert is_one_shot(SERVICES[other]), f"{other} never completes"
        graph[name] = set(depends)
    TopologicalSorter(graph).prepare()  # raises CycleError on a cycle

    def before(first: str, then: str) -> None:
        assert first in _ancestors(graph, then), f"{then} does not wait for {first}"

    for name, service in PLANTPULSE.items():  # everything that talks to Kafka waits for its topics
        if name != "kafka-topics" and "KAFKA_BOOTSTRAP_SERVERS" in service["environment"]:
            before("kafka-topics", name)
    before("kafka", "kafka-topics")
    before("clickhouse", "clickhouse-migrate")
    before("minio", "minio-init")
    for flow in FLOW:
        for needed in ("clickhouse-migrate", "minio-init", "simulator"):
            before(needed, flow)
    before("clickhouse-migrate", "grafana")  # Grafana's ClickHouse user exists


def _ancestors(graph: dict[str, set[str]], name: str) -> set[str]:
    found: set[str] = set()
    todo = list(graph[name])
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(graph[node])
    return found


def test_host_ports_are_local_and_match_what_listens() -> None:
    published = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            address, host, container = port.split(":")
            assert address == "127.0.0.1", f"{name}: {port} would be reachable from the network"
            assert host not in published, f"host port {host} twice"
            published[host] = (name, int(container))
    assert published == {"9094": ("kafka", 9094), "8123": ("clickhouse", 8123), "9001": ("minio", 9001),
                         "9090": ("prometheus", 9090), "3000": ("grafana", 3000)}
    kafka = SERVICES["kafka"]["environment"]
    assert "HOST://:9094" in kafka["KAFKA_LISTENERS"] and "HOST://localhost:9094" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert SERVICES["minio"]["command"][-2:] == ["--console-address", ":9001"]


def test_prometheus_scrapes_the_ports_the_processes_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    expected = set()
    for service in FLOW.values():
        settings = settings_of(service, monkeypatch)
        [alias] = service["networks"]["plantpulse"]["aliases"]
        expected.add(f"{alias}:{settings.metrics_port}")
    expected.add(f"notifier:{settings_of(SERVICES['notifier'], monkeypatch).notify_metrics_port}")
    assert targets == expected


def test_secrets_only_by_reference() -> None:
    example = env_example()
    assert not (ROOT / ".env").exists() or subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False).returncode == 0, ".env must not be tracked"
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for match in INTERPOLATION.finditer(text):
        name, kind, _ = match.groups()
        assert name in example or kind == "-", f"${{{name}}} is not documented in .env.example"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example gives {name} a value"
    for name, service in SERVICES.items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key) and not key.endswith("__FILE"):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}: {key} is a literal, not a reference to .env"
    # The ClickHouse users: the administrator migrates and creates them, each component logs in as its own.
    migrate = SERVICES["clickhouse-migrate"]["environment"]
    assert set(USERS.values()) <= set(migrate)
    assert {environment(s)["CLICKHOUSE_USER"] for s in FLOW.values()} == {"ingest"}
    assert SERVICES["grafana"]["environment"]["CLICKHOUSE_USER"] == "grafana" and "grafana" in USERS


def test_grafana_provisioning_plugin_and_access() -> None:
    grafana = SERVICES["grafana"]
    env = grafana["environment"]
    assert "grafana-clickhouse-datasource" in env["GF_PLUGINS_PREINSTALL_SYNC"]
    assert grafana["env_file"] == ["grafana/grafana-access.env"]
    access = dict(line.split("=", 1) for line in (ROOT / "grafana" / "grafana-access.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert access["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ENABLED" not in env
    # The admin password arrives as a secret file, from .env.
    [secret] = grafana["secrets"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"/run/secrets/{secret}"
    assert COMPOSE["secrets"][secret] == {"environment": "GRAFANA_ADMIN_PASSWORD"}
    assert "GRAFANA_ADMIN_PASSWORD" in env_example()
    # Every variable the provisioned datasources expand is set.
    datasources = (ROOT / "grafana" / "provisioning" / "datasources" / "plantpulse.yaml").read_text()
    body = "\n".join(line for line in datasources.splitlines() if not line.startswith("#"))
    assert set(re.findall(r"\$\{(\w+)\}", body)) <= set(env)
    assert env["CLICKHOUSE_HOST"] in SERVICES and env["CLICKHOUSE_DATABASE"] == "plantpulse"
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_the_lake_bucket_is_the_one_minio_init_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    buckets = {settings_of(s, monkeypatch).lake_url.removeprefix("s3://").split("/")[0] for s in FLOW.values()}
    [bucket] = buckets
    script = " ".join(SERVICES["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert "$$" in script and not re.search(r"(?<!\$)\$[A-Z{]", script), "variables are the container shell's"
    policy = json.loads((ROOT / "docker" / "minio-lake-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert {environment(s)["S3_ENDPOINT_URL"] for s in FLOW.values()} == {"http://minio:9000"}
