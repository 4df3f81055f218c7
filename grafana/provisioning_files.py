"""Grafana provisioning files for the datasources and the dashboard provider, as Python data rendered to YAML.

Grafana expands `$VAR` / `${VAR}` in provisioning files when it reads them (Go `os.ExpandEnv`: no default values,
an unset variable becomes ""; `$$` is a literal `$`). Dashboard JSON files are not expanded, so they only hold
the datasource uids. The variables a Grafana pointed at grafana/provisioning needs are in GRAFANA_ENV.
"""

from __future__ import annotations

from typing import Any

import yaml

from grafana.names import (
    CLICKHOUSE_TYPE,
    CLICKHOUSE_UID,
    FOLDER_TITLE,
    PROMETHEUS_TYPE,
    PROMETHEUS_UID,
)

# Where the dashboard JSON sits inside Grafana: the provisioning directory of the official image and of the
# deb/rpm packages (GF_PATHS_PROVISIONING) with this repository's grafana/provisioning mounted on it.
GRAFANA_PROVISIONING_DIR = "/etc/grafana/provisioning"
DASHBOARDS_SUBDIR = "dashboards/plantpulse"

# Environment of the Grafana process: variable -> (value for the compose/k8s service names, meaning).
GRAFANA_ENV: dict[str, tuple[str, str]] = {
    "CLICKHOUSE_HOST": ("clickhouse", "ClickHouse host (k8s: clickhouse.clickhouse.svc)"),
    "CLICKHOUSE_PORT": ("8123", "ClickHouse port: 8123 http, 8443 https, 9000 native, 9440 native+TLS"),
    "CLICKHOUSE_PROTOCOL": ("http", "http or native"),
    "CLICKHOUSE_SECURE": ("false", "true for TLS"),
    "CLICKHOUSE_USER": ("default", "ClickHouse user (a read-only one is enough for Grafana)"),
    "CLICKHOUSE_PASSWORD": ("", "its password (a secret: from the environment only, e.g. the k8s Secret)"),
    "CLICKHOUSE_DATABASE": ("plantpulse", "the PlantPulse database (CLICKHOUSE_DATABASE of the flow)"),
    "PROMETHEUS_URL": ("http://prometheus:9090", "Prometheus that scrapes the flow's METRICS_PORT"),
    "GRAFANA_ALERT_WEBHOOK_URL": ("", "where Grafana's alert notifications are POSTed (a secret, like "
                                      "NOTIFY_OPS_WEBHOOK_URL; Grafana refuses an empty URL)"),
}


def env(name: str) -> str:
    """A reference Grafana expands at load time; only names listed in GRAFANA_ENV are allowed."""
    if name not in GRAFANA_ENV:
        raise KeyError(f"{name} is not a documented Grafana provisioning variable (grafana.provisioning_files.GRAFANA_ENV)")
    return f"${{{name}}}"


def env_comment() -> str:
    """The YAML header listing the variables, for the files that use them."""
    lines = ["Environment variables Grafana expands in this file (compose/k8s values; see the README):"]
    for name, (value, meaning) in GRAFANA_ENV.items():
        lines.append(f"  {name}={value}  # {meaning}" if value else f"  {name}  # {meaning}")
    return "\n".join(lines)


def datasources() -> dict[str, Any]:
    """datasources/plantpulse.yaml: the ClickHouse plugin datasource and Prometheus, fixed uids."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "PlantPulse ClickHouse",
                "uid": CLICKHOUSE_UID,
                "type": CLICKHOUSE_TYPE,
                "access": "proxy",
                "isDefault": True,
                "editable": False,
                # grafana/clickhouse-datasource pkg/plugin/settings.go LoadSettings: port and secure are also
                # accepted as strings, which is what an expanded variable is.
                "jsonData": {
                    "host": env("CLICKHOUSE_HOST"),
                    "port": env("CLICKHOUSE_PORT"),
                    "protocol": env("CLICKHOUSE_PROTOCOL"),
                    "secure": env("CLICKHOUSE_SECURE"),
                    "username": env("CLICKHOUSE_USER"),
                    "defaultDatabase": env("CLICKHOUSE_DATABASE"),
                },
                "secureJsonData": {"password": env("CLICKHOUSE_PASSWORD")},
            },
            {
                "name": "PlantPulse Prometheus",
                "uid": PROMETHEUS_UID,
                "type": PROMETHEUS_TYPE,
                "access": "proxy",
                "isDefault": False,
                "editable": False,
                "url": env("PROMETHEUS_URL"),
                "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            },
        ],
    }


def dashboard_provider() -> dict[str, Any]:
    """dashboards/plantpulse.yaml: a file provider reading the generated JSON into the PlantPulse folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "plantpulse",
                "orgId": 1,
                "type": "file",
                "folder": FOLDER_TITLE,  # by title, shared with the alert rules (see grafana/names.py)
                "disableDeletion": False,
                # The JSON is generated (python -m grafana.build); edits in the UI would be overwritten anyway.
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": f"{GRAFANA_PROVISIONING_DIR}/{DASHBOARDS_SUBDIR}", "foldersFromFilesStructure": False},
            }
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (SQL) as literal blocks, so the files read like the queries in grafana/queries.py."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(data: dict[str, Any], header: str) -> str:
    """`data` as YAML (keys in the order given: the documented one), after `header` as # comments."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    return comment + body
