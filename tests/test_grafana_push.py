"""grafana.push against a local stand-in for Grafana's HTTP API.

Grafana's server cannot be installed on these machines, so these tests run `push` (the real grafana-client
over real HTTP) against a small server on a loopback port that implements only the endpoints push uses and
checks every request against the shapes Grafana's HTTP API documents (method, path, `Authorization: Bearer`,
JSON body fields and types) and answers as documented: 404 for an unknown uid, 409 for a duplicate, 412 for a
stale version, 401 for a bad token. It keeps state (folders, datasources, dashboards and alert rules by uid,
with versions), so idempotence and overwriting are observable. Documentation followed:
- folders: https://grafana.com/docs/grafana/latest/developers/http_api/folder/
- data sources: https://grafana.com/docs/grafana/latest/developers/http_api/data_source/
- dashboards: https://grafana.com/docs/grafana/latest/developers/http_api/dashboard/
- alert rules: https://grafana.com/docs/grafana/latest/developers/http_api/alerting_provisioning/
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.push import FOLDER_UID, GrafanaPushError, Provisioning, connect, load_provisioning, push

TOKEN = "glsa_test_token_0123456789"


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status, self.body = status, body


def _require(body: dict[str, Any], field_types: dict[str, type | tuple[type, ...]], what: str) -> None:
    for name, kind in field_types.items():
        if not isinstance(body.get(name), kind):
            raise ApiError(400, {"message": f"{what}: field {name} is required as {kind}, got {body.get(name)!r}"})


@dataclass
class FakeGrafana:
    """State and routes of the stand-in; `requests` records (method, path, headers, body) of every call."""

    prefix: str = ""
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    fail: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, headers, body))
        if not path.startswith(self.prefix + "/api/"):
            return 404, {"message": "Not found"}
        path = path[len(self.prefix):]
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key"}
        if (method, path) in self.fail:
            return self.fail[(method, path)]
        if method in ("POST", "PUT") and not isinstance(body, dict):
            return 400, {"message": "bad request data: the body must be a JSON object"}
        if method in ("POST", "PUT") and "application/json" not in headers.get("content-type", ""):
            return 415, {"message": "Content-Type must be application/json"}
        for pattern, route in self.routes():
            match = re.fullmatch(pattern, f"{method} {path}")
            if match:
                try:
                    return route(body, *match.groups())
                except ApiError as exc:
                    return exc.status, exc.body
        return 404, {"message": f"no route {method} {path}"}

    def routes(self) -> list[tuple[str, Any]]:
        return [
            (r"GET /api/folders/([^/]+)", self.get_folder),
            (r"POST /api/folders", self.create_folder),
            (r"PUT /api/folders/([^/]+)", self.update_folder),
            (r"GET /api/datasources/uid/([^/]+)", self.get_datasource),
            (r"POST /api/datasources", self.create_datasource),
            (r"PUT /api/datasources/uid/([^/]+)", self.update_datasource),
            (r"GET /api/dashboards/uid/([^/]+)", self.get_dashboard),
            (r"POST /api/dashboards/db", self.save_dashboard),
            (r"GET /api/v1/provisioning/alert-rules/([^/]+)", self.get_rule),
            (r"POST /api/v1/provisioning/alert-rules", self.create_rule),
            (r"PUT /api/v1/provisioning/alert-rules/([^/]+)", self.update_rule),
            (r"PUT /api/v1/provisioning/folder/([^/]+)/rule-groups/([^/]+)", self.put_group),
        ]

    # folders: GET 200/404, POST 200/409 (uid optional, max 40), PUT 200/404/412 (version or overwrite)
    def get_folder(self, _: Any, uid: str) -> tuple[int, Any]:
        return (200, self.folders[uid]) if uid in self.folders else (404, {"message": "folder not found"})

    def create_folder(self, body: dict[str, Any]) -> tuple[int, Any]:
        _require(body, {"title": str}, "folder")
        uid = body.get("uid") or uuid.uuid4().hex[:10]
        if not isinstance(uid, str) or len(uid) > 40:
            raise ApiError(400, {"message": "uid must be a string of at most 40 characters"})
        if uid in self.folders:
            raise ApiError(409, {"message": "a folder with the same uid already exists"})
        self.folders[uid] = {"id": next(self.ids), "uid": uid, "title": body["title"], "version": 1}
        return 200, self.folders[uid]

    def update_folder(self, body: dict[str, Any], uid: str) -> tuple[int, Any]:
        if uid not in self.folders:
            raise ApiError(404, {"message": "folder not found"})
        _require(body, {"title": str}, "folder")
        folder = self.folders[uid]
        if body.get("overwrite") is not True and body.get("version") != folder["version"]:
            raise ApiError(412, {"message": "the folder has been changed by someone else", "status": "version-mismatch"})
        folder.update(title=body["title"], version=folder["version"] + 1)
        return 200, folder

    # datasources: POST needs name+type, PUT name+type+access; names and uids are unique (409)
    def get_datasource(self, _: Any, uid: str) -> tuple[int, Any]:
        if uid not in self.datasources:
            return 404, {"message": "Data source not found"}
        stored = self.datasources[uid]
        public = {k: v for k, v in stored.items() if k != "secureJsonData"}
        return 200, {**public, "secureJsonFields": {k: True for k in stored.get("secureJsonData", {})}}

    def _check_datasource(self, body: dict[str, Any], uid: str | None) -> None:
        _require(body, {"name": str, "type": str}, "datasource")
        for name, kind in (("jsonData", dict), ("secureJsonData", dict), ("access", str), ("url", str),
                           ("isDefault", bool), ("basicAuth", bool)):
            if name in body and not isinstance(body[name], kind):
                raise ApiError(400, {"message": f"datasource field {name} must be {kind}"})
        if body.get("access", "proxy") not in ("proxy", "direct"):
            raise ApiError(400, {"message": "access must be proxy or direct"})
        if not all(isinstance(v, str) for v in body.get("secureJsonData", {}).values()):
            raise ApiError(400, {"message": "secureJsonData values must be strings"})
        if any(d["name"] == body["name"] and d["uid"] != uid for d in self.datasources.values()):
            raise ApiError(409, {"message": "data source with the same name already exists"})

    def create_datasource(self, body: dict[str, Any]) -> tuple[int, Any]:
        uid = body.get("uid") or uuid.uuid4().hex[:10]
        self._check_datasource(body, None)
        if uid in self.datasources:
            raise ApiError(409, {"message": "data source with the same uid already exists"})
        self.datasources[uid] = {**body, "uid": uid, "id": next(self.ids), "version": 1}
        return 200, {"datasource": self.get_datasource(None, uid)[1], "id": self.datasources[uid]["id"],
                     "message": "Datasource added", "name": body["name"]}

    def update_datasource(self, body: dict[str, Any], uid: str) -> tuple[int, Any]:
        if uid not in self.datasources:
            raise ApiError(404, {"message": "Data source not found"})
        _require(body, {"access": str}, "datasource")
        self._check_datasource(body, uid)
        stored = self.datasources[uid]
        self.datasources[uid] = {**body, "uid": uid, "id": stored["id"], "version": stored["version"] + 1}
        return 200, {"datasource": self.get_datasource(None, uid)[1], "id": stored["id"],
                     "message": "Datasource updated", "name": body["name"]}

    # dashboards: POST /api/dashboards/db creates or updates; 412 version-mismatch / name-exists
    def get_dashboard(self, _: Any, uid: str) -> tuple[int, Any]:
        if uid not in self.dashboards:
            return 404, {"message": "Dashboard not found"}
        stored = self.dashboards[uid]
        meta = {"folderUid": stored["folderUid"], "version": stored["version"]}
        return 200, {"dashboard": stored["dashboard"], "meta": meta}

    def save_dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        _require(body, {"dashboard": dict}, "dashboard save")
        board = body["dashboard"]
        _require(board, {"title": str, "uid": str}, "dashboard")
        uid, folder, overwrite = board["uid"], body.get("folderUid"), body.get("overwrite", False)
        if not board["title"].strip() or len(uid) > 40:
            raise ApiError(400, {"message": "Dashboard title cannot be empty and uid is at most 40 characters"})
        if not isinstance(overwrite, bool) or (folder is not None and folder not in self.folders):
            raise ApiError(400, {"message": "overwrite must be a boolean and folderUid an existing folder"})
        existing = self.dashboards.get(uid)
        if existing is None and board.get("id") is not None:
            raise ApiError(404, {"message": "Dashboard not found"})
        if existing and not overwrite and board.get("version") != existing["version"]:
            raise ApiError(412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"})
        if any(d["dashboard"]["title"] == board["title"] and d["folderUid"] == folder and u != uid
               for u, d in self.dashboards.items()):
            raise ApiError(412, {"message": "A dashboard with the same name in the folder already exists",
                                 "status": "name-exists"})
        version = existing["version"] + 1 if existing else 1
        stored_id = existing["dashboard"]["id"] if existing else next(self.ids)
        self.dashboards[uid] = {"dashboard": {**board, "id": stored_id, "version": version}, "folderUid": folder,
                                "version": version}
        return 200, {"id": stored_id, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": version,
                     "slug": "x"}

    # alert rules (provisioning API): required fields of ProvisionedAlertRule; rule groups by folder+title
    def get_rule(self, _: Any, uid: str) -> tuple[int, Any]:
        return (200, self.rules[uid]) if uid in self.rules else (404, {"message": "rule not found"})

    def _check_rule(self, body: dict[str, Any]) -> None:
        _require(body, RULE_FIELDS, "alert rule")
        if body["noDataState"] not in NO_DATA_STATES or body["execErrState"] not in EXEC_ERR_STATES:
            raise ApiError(400, {"message": "unrecognized noDataState or execErrState"})
        if body["folderUID"] not in self.folders or not body["data"]:
            raise ApiError(400, {"message": "folder not found or no queries"})
        for query in body["data"]:
            _require(query, {"refId": str, "datasourceUid": str, "model": dict}, "alert query")

    def create_rule(self, body: dict[str, Any]) -> tuple[int, Any]:
        self._check_rule(body)
        if body.get("uid") in self.rules:
            raise ApiError(409, {"message": "a rule with this uid already exists"})
        self.rules[body["uid"]] = {**body, "version": 1}
        return 201, self.rules[body["uid"]]

    def update_rule(self, body: dict[str, Any], uid: str) -> tuple[int, Any]:
        if uid not in self.rules:
            raise ApiError(404, {"message": "rule not found"})
        self._check_rule(body)
        self.rules[uid] = {**body, "version": self.rules[uid]["version"] + 1}
        return 200, self.rules[uid]

    def put_group(self, body: dict[str, Any], folder: str, group: str) -> tuple[int, Any]:
        _require(body, {"title": str, "interval": int, "folderUid": str}, "rule group")
        # Grafana evaluates on a 10 s base interval: a group interval must be a positive multiple of it.
        if body["interval"] <= 0 or body["interval"] % 10 or body["title"] != group or body["folderUid"] != folder:
            raise ApiError(400, {"message": "invalid rule group interval, title or folder"})
        self.groups[(folder, group)] = body
        return 200, body


# ProvisionedAlertRule's required fields and states (grafana pkg/services/ngalert/api/tooling/definitions/
# provisioning_alert_rules.go: "for" is a Prometheus model.Duration, a string like "5m" in JSON).
NO_DATA_STATES = {"Alerting", "NoData", "OK", "KeepLast"}
EXEC_ERR_STATES = {"Alerting", "Error", "OK", "KeepLast"}
RULE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "title": str, "ruleGroup": str, "folderUID": str, "condition": str, "data": list, "noDataState": str,
    "execErrState": str, "for": str, "orgID": int}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGrafana

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            status, answer = 400, {"message": "invalid JSON"}
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = self.fake.handle(self.command, self.path, headers, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- provisioning content -------------------------------------------------------------------------------------

DATASOURCES = """\
apiVersion: 1
datasources:
  - name: PlantPulse ClickHouse
    uid: plantpulse-clickhouse
    type: grafana-clickhouse-datasource
    orgId: 1
    editable: false
    jsonData: {host: clickhouse, port: 8123, protocol: http, secure: false, username: plantpulse,
               defaultDatabase: plantpulse}
    secureJsonData: {password: $CLICKHOUSE_PASSWORD}
  - name: PlantPulse Prometheus
    uid: plantpulse-prometheus
    type: prometheus
    access: proxy
    url: http://prometheus:9090
    isDefault: false
"""

ALERTING = """\
apiVersion: 1
groups:
  - orgId: 1
    name: plantpulse-pipeline
    folder: PlantPulse
    interval: 1m
    rules:
      - uid: plantpulse-open-critical
        title: Open critical incidents
        condition: B
        data:
          - refId: A
            relativeTimeRange: {from: 600, to: 0}
            datasourceUid: plantpulse-clickhouse
            model: {rawSql: "SELECT count() FROM incidents FINAL", format: 1}
          - refId: B
            datasourceUid: __expr__
            model: {type: threshold, expression: A, conditions: [{evaluator: {type: gt, params: [0]}}]}
        noDataState: OK
        execErrState: Error
        for: 0s
        labels: {severity: critical}
"""


def _board(uid: str, title: str) -> dict[str, Any]:
    return {"uid": uid, "title": title, "id": None, "version": 1, "schemaVersion": 39, "tags": ["plantpulse"],
            "panels": [{"id": 1, "type": "stat", "title": f"{title} panel"}]}


def sample_files() -> dict[str, str]:
    boards = [("plantpulse-fleet", "Fleet now"), ("plantpulse-machine", "Machine detail"),
              ("plantpulse-incidents", "Incidents"), ("plantpulse-pipeline", "Pipeline health")]
    files = {f"dashboards/plantpulse/{uid.split('-')[1]}.json": json.dumps(_board(uid, title)) for uid, title in boards}
    files["dashboards/plantpulse.yaml"] = "apiVersion: 1\nproviders: []\n"  # a file provider: not pushed
    files["datasources/plantpulse.yaml"] = DATASOURCES
    files["alerting/rules.yaml"] = ALERTING
    return files


@pytest.fixture
def password() -> str:
    return f"pw-{uuid.uuid4().hex}"


def _push(url: str, env: dict[str, str], files: dict[str, str] | None = None, token: str = TOKEN) -> list[Any]:
    return push(connect(url, token), load_provisioning(sample_files() if files is None else files), env=env)


# --- tests ----------------------------------------------------------------------------------------------------


def test_first_push_creates_everything(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    done = _push(url, {"CLICKHOUSE_PASSWORD": password})
    assert {(p.kind, p.uid, p.action) for p in done} == {
        ("folder", FOLDER_UID, "created"),
        ("datasource", "plantpulse-clickhouse", "created"), ("datasource", "plantpulse-prometheus", "created"),
        ("dashboard", "plantpulse-fleet", "created"), ("dashboard", "plantpulse-machine", "created"),
        ("dashboard", "plantpulse-incidents", "created"), ("dashboard", "plantpulse-pipeline", "created"),
        ("alert-rule", "plantpulse-open-critical", "created"),
        ("alert-rule-group", "plantpulse-pipeline", "updated"),
    }
    assert fake.folders[FOLDER_UID]["title"] == "PlantPulse"
    assert {d["folderUid"] for d in fake.dashboards.values()} == {FOLDER_UID}
    clickhouse = fake.datasources["plantpulse-clickhouse"]
    assert clickhouse["secureJsonData"] == {"password": password}  # the env value, not "$CLICKHOUSE_PASSWORD"
    assert clickhouse["jsonData"]["defaultDatabase"] == "plantpulse" and "editable" not in clickhouse
    assert fake.datasources["plantpulse-prometheus"]["access"] == "proxy"
    assert fake.rules["plantpulse-open-critical"]["folderUID"] == FOLDER_UID
    assert fake.groups[(FOLDER_UID, "plantpulse-pipeline")]["interval"] == 60
    writes = [(m, p, h) for m, p, h, _ in fake.requests if m != "GET"]
    assert all(h.get("x-disable-provenance") == "true" for m, p, h in writes if "/provisioning/" in p)
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _, _, h, _ in fake.requests)


def test_second_push_updates_in_place(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    env = {"CLICKHOUSE_PASSWORD": password}
    first = _push(url, env)
    before = {kind: set(getattr(fake, kind)) for kind in ("folders", "datasources", "dashboards", "rules")}
    second = _push(url, env)
    assert [(p.kind, p.uid) for p in second] == [(p.kind, p.uid) for p in first]
    assert {p.action for p in second} == {"updated"}
    assert {kind: set(getattr(fake, kind)) for kind in before} == before  # no duplicates, same uids
    assert {d["version"] for d in fake.dashboards.values()} == {2}
    assert fake.datasources["plantpulse-clickhouse"]["version"] == 2
    assert fake.rules["plantpulse-open-critical"]["version"] == 2


def test_a_dashboard_edited_in_grafana_is_overwritten(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    env = {"CLICKHOUSE_PASSWORD": password}
    _push(url, env)
    edited = fake.dashboards["plantpulse-fleet"]
    edited["dashboard"] = {**edited["dashboard"], "title": "Fleet (edited)", "panels": [], "version": 7}
    edited["version"] = 7
    _push(url, env)
    stored = fake.dashboards["plantpulse-fleet"]["dashboard"]
    provisioned = _board("plantpulse-fleet", "Fleet now")
    assert {k: v for k, v in stored.items() if k not in ("id", "version")} == {
        k: v for k, v in provisioned.items() if k not in ("id", "version")}
    assert fake.dashboards["plantpulse-fleet"]["version"] == 8


def test_a_wrong_token_is_a_clear_error(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    with pytest.raises(GrafanaPushError) as caught:
        _push(url, {"CLICKHOUSE_PASSWORD": password}, token="glsa_wrong")
    message = str(caught.value)
    assert caught.value.status == 401 and "folder 'plantpulse'" in message and "--token" in message
    assert "glsa_wrong" not in message
    assert not fake.folders


def test_a_refused_object_is_named_with_status_and_body(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    fake.fail[("POST", "/api/dashboards/db")] = (500, {"message": "database is locked"})
    with pytest.raises(GrafanaPushError, match=r"dashboard 'plantpulse-fleet': HTTP 500: .*database is locked"):
        _push(url, {"CLICKHOUSE_PASSWORD": password})


def test_a_missing_secret_stops_before_any_request(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    with pytest.raises(ValueError, match="CLICKHOUSE_PASSWORD"):
        _push(url, {})
    assert fake.requests == []


def test_a_grafana_under_a_sub_path(grafana: tuple[FakeGrafana, str], password: str) -> None:
    fake, url = grafana
    fake.prefix = "/grafana"
    _push(url + "/grafana", {"CLICKHOUSE_PASSWORD": password})
    assert len(fake.dashboards) == 4 and all(p.startswith("/grafana/api/") for _, p, _, _ in fake.requests)


def test_provisioning_parsing_rejects_objects_without_uid() -> None:
    files = sample_files()
    files["dashboards/plantpulse/extra.json"] = json.dumps({"title": "No uid"})
    with pytest.raises(ValueError, match="'No uid' has no uid"):
        load_provisioning(files)
    with pytest.raises(ValueError, match="alerting/rules.yaml: not valid yaml"):
        load_provisioning({**sample_files(), "alerting/rules.yaml": "groups: [unclosed"})


REPO = Path(__file__).resolve().parents[1]


def _committed_provisioning() -> dict[str, str]:
    root = REPO / "grafana" / "provisioning"
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def test_the_real_provisioning_pushes_and_holds_no_secret(grafana: tuple[FakeGrafana, str], password: str) -> None:
    """The repository's own provisioning (grafana.build.render_all(), else the committed files)."""
    provisioning = load_provisioning()
    if not provisioning.datasources and not provisioning.dashboards:
        pytest.skip("grafana/provisioning is not generated yet")
    fake, url = grafana
    env = {"CLICKHOUSE_PASSWORD": password, "PROMETHEUS_URL": "http://prometheus:9090", "CLICKHOUSE_HOST": "clickhouse"}
    done = push(connect(url, TOKEN), provisioning, env=env)
    assert {p.uid for p in done if p.kind == "datasource"} == {"plantpulse-clickhouse", "plantpulse-prometheus"}
    assert {"plantpulse-fleet", "plantpulse-machine", "plantpulse-incidents", "plantpulse-pipeline"} <= set(fake.dashboards)
    assert fake.datasources["plantpulse-clickhouse"]["secureJsonData"]["password"] == password
    # Committed files carry only references to secrets: every secureJsonData value is $VAR or ${VAR}.
    for source in Provisioning(provisioning.datasources, []).datasources:
        for key, value in (source.get("secureJsonData") or {}).items():
            assert re.fullmatch(r"\$\{?\w+\}?", str(value)), f"{source['uid']}.secureJsonData.{key} is not an env reference"
    for name, text in _committed_provisioning().items():
        assert password not in text, name
        if name.startswith("datasources/"):
            for source in (yaml.safe_load(text) or {}).get("datasources") or []:
                assert all(str(v).startswith("$") for v in (source.get("secureJsonData") or {}).values()), name
