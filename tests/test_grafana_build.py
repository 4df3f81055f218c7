"""Grafana provisioning generated from Python (grafana/build.py): the committed files are the generator's output,
and their structure holds what the issue-14 contract fixes. Expectations are stated here, not read back from the
generator. Executing the SQL is tests/test_grafana_queries.py's job."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana import build
from grafana.queries import PROM_QUERIES, QUERIES
from plantpulse.schema import SENSORS

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "grafana" / "provisioning"

DASHBOARDS = {  # uid -> title (contract / issue)
    "plantpulse-fleet": "Fleet now",
    "plantpulse-machine": "Machine detail",
    "plantpulse-incidents": "Incidents",
    "plantpulse-pipeline": "Pipeline health and data quality",
}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "plantpulse-clickhouse"}
PROMETHEUS = {"type": "prometheus", "uid": "plantpulse-prometheus"}
# Keys and columns the snapshot renderer relies on (contract).
FIXED_COLUMNS: dict[str, tuple[str, ...]] = {
    "fleet.machine_states": ("state", "machines"),
    "fleet.open_incidents_by_severity": ("severity", "incidents"),
    "fleet.risk_heatmap": ("time", "line", "risk"),
    "fleet.top_risk": ("machine_id", "line", "risk", "open_incidents", "state"),
    "fleet.readings_rate": ("time", "readings_per_s"),
    **{f"machine.sensor.{s}": ("time", "mean", "min", "max") for s in SENSORS},
    "machine.anomaly_score": ("time", "score", "threshold"),
    "machine.incident_spans": ("time", "timeEnd", "text", "tags"),
}
FORMAT_CODES = {"time_series": 0, "table": 1, "logs": 2}  # sqlutil.FormatQueryOption
ENV_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*\}$")


def _load(rel: str) -> Any:
    text = (ROOT / rel).read_text(encoding="utf-8")
    return json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return build.render_all()


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    found = [_load(p.relative_to(ROOT).as_posix()) for p in sorted((ROOT / "dashboards").rglob("*.json"))]
    return {d["uid"]: d for d in found}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p.get("type") != "row"]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load("alerting/rules.yaml")["groups"] for rule in group["rules"]]


def test_committed_files_are_the_generator_output(rendered: dict[str, str]) -> None:
    committed = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file())
    assert committed == sorted(rendered), "run `python -m grafana.build` and commit grafana/provisioning"
    for rel, text in rendered.items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, f"{rel} differs: run `python -m grafana.build`"
        assert text.endswith("\n") and not text.endswith("\n\n"), rel
    assert build.render_all() == rendered, "the generator is not deterministic"
    assert build.main(["--check"]) == 0


def test_check_reports_an_edited_a_missing_and_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "provisioning"
    shutil.copytree(ROOT, root)
    assert build.differences(root) == []
    board = root / "dashboards/plantpulse/fleet.json"
    board.write_text(board.read_text().replace("Fleet now", "Fleet later"))
    (root / "alerting/policies.yaml").unlink()
    (root / "dashboards/plantpulse/old-board.json").write_text("{}\n")
    expected = ["alerting/policies.yaml", "dashboards/plantpulse/fleet.json", "dashboards/plantpulse/old-board.json"]
    assert build.differences(root) == expected
    assert build.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert all(rel in err for rel in expected), err
    assert build.main(["--root", str(root)]) == 0
    assert build.differences(root) == []
    assert not (root / "dashboards/plantpulse/old-board.json").exists()


def test_every_file_parses_and_the_provider_reads_the_boards_into_one_folder(dashboards: dict[str, dict[str, Any]]) -> None:
    for path in ROOT.rglob("*.yaml"):
        assert _load(path.relative_to(ROOT).as_posix())["apiVersion"] == 1, path
    (provider,) = _load("dashboards/plantpulse.yaml")["providers"]
    # By title, the folder the alert rules name too (Grafana creates it for whichever it provisions first).
    assert (provider["type"], provider["folder"], provider.get("folderUid")) == ("file", "PlantPulse", None)
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards/plantpulse"
    assert {uid: d["title"] for uid, d in dashboards.items()} == DASHBOARDS
    assert {p.parent.name for p in (ROOT / "dashboards").rglob("*.json")} == {"plantpulse"}


def test_datasources_have_fixed_uids_and_take_connection_and_password_from_the_environment() -> None:
    sources = {d["uid"]: d for d in _load("datasources/plantpulse.yaml")["datasources"]}
    assert {uid: d["type"] for uid, d in sources.items()} == {CLICKHOUSE["uid"]: CLICKHOUSE["type"],
                                                              PROMETHEUS["uid"]: PROMETHEUS["type"]}
    clickhouse = sources[CLICKHOUSE["uid"]]
    assert set(clickhouse["jsonData"]) == {"host", "port", "protocol", "secure", "username", "defaultDatabase"}
    assert all(ENV_REF.match(str(v)) for v in clickhouse["jsonData"].values()), clickhouse["jsonData"]
    assert clickhouse["secureJsonData"] == {"password": "${CLICKHOUSE_PASSWORD}"}
    assert ENV_REF.match(sources[PROMETHEUS["uid"]]["url"])


def test_no_literal_secret_in_any_file() -> None:
    secret_key = re.compile(r"password|secret|token|credential|apikey|api_key", re.IGNORECASE)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if secret_key.search(str(key)) and not isinstance(value, dict | list):
                    assert ENV_REF.match(str(value)), f"{path}.{key} is not a $VAR reference"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for path in ROOT.rglob("*"):
        if path.is_file():
            rel = path.relative_to(ROOT).as_posix()
            walk(_load(rel), rel)
            assert "secureJsonData" not in path.read_text() or rel == "datasources/plantpulse.yaml", rel
    (point,) = _load("alerting/contact_points.yaml")["contactPoints"]
    assert [r["settings"]["url"] for r in point["receivers"]] == ["${GRAFANA_ALERT_WEBHOOK_URL}"]


def test_every_panel_uses_a_provisioned_datasource_and_a_query_from_queries(dashboards: dict[str, dict[str, Any]]) -> None:
    sources = {(d["type"], d["uid"]) for d in _load("datasources/plantpulse.yaml")["datasources"]}
    by_sql = {q.sql: q for q in QUERIES.values()}
    by_expr = {q.expr: q for q in PROM_QUERIES.values()}
    for uid, dashboard in dashboards.items():
        panels = _panels(dashboard)
        assert panels and len({p["id"] for p in panels}) == len(panels), uid
        for panel in panels:
            where = f"{uid} panel {panel['id']} {panel['title']!r}"
            assert (panel["datasource"]["type"], panel["datasource"]["uid"]) in sources, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where
                if target["datasource"] == CLICKHOUSE:
                    assert target["rawSql"] in by_sql, f"{where}: SQL not taken from grafana.queries.QUERIES"
                    query = by_sql[target["rawSql"]]
                    assert (target["editorType"], target["format"]) == ("sql", FORMAT_CODES[query.format]), where
                else:
                    assert target["expr"] in by_expr, f"{where}: PromQL not taken from grafana.queries.PROM_QUERIES"
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0, where


def test_template_variables_on_every_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["site", "line", "machine_type", "machine_id"], uid
        for name, variable in variables.items():
            assert (variable["type"], variable["datasource"]) == ("query", CLICKHOUSE), (uid, name)
            assert variable["query"] == QUERIES[f"var.{name}"].sql, (uid, name)
        for name in ("site", "line", "machine_type"):
            assert variables[name]["multi"] and variables[name]["includeAll"], (uid, name)
        single = uid == "plantpulse-machine"
        assert variables["machine_id"]["multi"] is not single, uid
    # Dependent variables narrow each other, and panels filter by them.
    assert "${site:singlequote}" in QUERIES["var.line"].sql and "${line:singlequote}" in QUERIES["var.machine_id"].sql
    assert "${machine_id:singlequote}" in QUERIES["machine.sensor.temperature"].sql


def test_machine_detail_shows_incidents_as_annotation_spans(dashboards: dict[str, dict[str, Any]]) -> None:
    annotations = dashboards["plantpulse-machine"]["annotations"]["list"]
    (incidents,) = [a for a in annotations if a["datasource"] == CLICKHOUSE]
    assert incidents["enable"] and incidents["target"]["rawSql"] == QUERIES["machine.incident_spans"].sql
    assert incidents["target"]["format"] == FORMAT_CODES["table"]


def test_alert_rules_query_clickhouse_with_sql_from_queries() -> None:
    rules = {rule["title"]: rule for rule in _alert_rules()}
    thresholds = {title: [d for d in rule["data"] if d["model"].get("type") == "threshold"] for title, rule in rules.items()}
    expected = {  # title -> (query key, fires above)
        "Open critical incidents": ("alert.open_critical_incidents", 0),
        "Pipeline lag above 5 minutes": ("alert.pipeline_lag", 300),
        "Dead-letter ratio above 1 %": ("alert.dead_letter_ratio", 0.01),
    }
    assert set(rules) == set(expected)
    for title, (key, above) in expected.items():
        rule = rules[title]
        query = next(d for d in rule["data"] if d["refId"] == "A")
        assert query["datasourceUid"] == CLICKHOUSE["uid"] and query["model"]["datasource"] == CLICKHOUSE, title
        assert query["model"]["rawSql"] == QUERIES[key].sql and query["relativeTimeRange"]["from"] > 0, title
        (threshold,) = thresholds[title]
        assert rule["condition"] == threshold["refId"] and threshold["model"]["expression"] == "A", title
        assert threshold["model"]["conditions"][0]["evaluator"] == {"type": "gt", "params": [above]}, title
        assert rule["dashboardUid"] in DASHBOARDS, title
    assert len({rule["uid"] for rule in rules.values()}) == len(rules)
    assert {g["folder"] for g in _load("alerting/rules.yaml")["groups"]} == {"PlantPulse"}
    (policy,) = _load("alerting/policies.yaml")["policies"]
    (point,) = _load("alerting/contact_points.yaml")["contactPoints"]
    assert policy["receiver"] == point["name"]


def test_queries_have_the_contract_columns_and_none_is_orphaned(dashboards: dict[str, dict[str, Any]]) -> None:
    for key, columns in FIXED_COLUMNS.items():
        assert QUERIES[key].columns == columns, key
    for key, query in QUERIES.items():
        assert query.key == key and query.format in FORMAT_CODES and query.columns, key
        if key.startswith("alert."):
            assert query.columns == ("value",) and "${" not in query.sql, f"{key}: alert rules have no variables"
    used: set[str] = set()
    for dashboard in dashboards.values():
        texts = [t.get("rawSql") or t.get("expr") for p in _panels(dashboard) for t in p["targets"]]
        texts += [v["query"] for v in dashboard["templating"]["list"]]
        texts += [a["target"]["rawSql"] for a in dashboard["annotations"]["list"] if a["datasource"] == CLICKHOUSE]
        used |= {k for k, q in QUERIES.items() if q.sql in texts} | {k for k, q in PROM_QUERIES.items() if q.expr in texts}
    alert_sql = {d["model"].get("rawSql") for rule in _alert_rules() for d in rule["data"]}
    used |= {k for k, q in QUERIES.items() if q.sql in alert_sql}
    assert set(QUERIES) | set(PROM_QUERIES) == used, f"orphans: {sorted(set(QUERIES) | set(PROM_QUERIES) - used)}"


def test_prometheus_panels_read_metrics_the_flow_exports() -> None:
    """Each PromQL names its metrics, and each name is registered by the flow or its connectors (source text)."""
    sources = "\n".join(p.read_text(encoding="utf-8") for d in ("flows", "connectors") for p in (REPO / d).rglob("*.py"))
    for key, query in PROM_QUERIES.items():
        for metric in query.metrics:
            assert metric in query.expr, key
            assert f'"{metric}"' in sources, f"{key}: no metric {metric!r} defined in flows/ or connectors/"
