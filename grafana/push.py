"""`plantpulse grafana push`: put the provisioned folder, datasources, dashboards and alert rules into a
running Grafana through its HTTP API (grafana-client), idempotently, overwriting by uid.

The input is the same provisioning content a Grafana would read from `grafana/provisioning/`
(`grafana.build.render_all()`, or the committed files): `datasources/*.yaml`, `dashboards/**/*.json`
and, when present, `alerting/*.yaml` rule groups. Each object is looked up by uid first, then created
(on 404) or updated, so a second push changes nothing but versions, and a dashboard edited in the UI is
overwritten:

- folder: `GET /api/folders/:uid`, then `POST /api/folders` or `PUT /api/folders/:uid` with overwrite;
- datasource: `GET /api/datasources/uid/:uid`, then `POST /api/datasources` or
  `PUT /api/datasources/uid/:uid`;
- dashboard: `GET /api/dashboards/uid/:uid`, then `POST /api/dashboards/db` with `overwrite: true` and the
  folder's uid (the endpoint creates and updates);
- alert rule: `GET /api/v1/provisioning/alert-rules/:uid`, then `POST /api/v1/provisioning/alert-rules`
  or `PUT …/alert-rules/:uid`, with `X-Disable-Provenance: true` so the rules stay editable in the UI;
  then the group's evaluation interval with `PUT /api/v1/provisioning/folder/:folder/rule-groups/:group`.
Contact points and notification policies are left to file provisioning (they carry secrets).

Secrets: the datasource files reference environment variables (`$CLICKHOUSE_PASSWORD`, as Grafana's
provisioning does); they are expanded here from `env` (the process environment unless given), never read
from a file, and a missing one is an error rather than an empty password.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import niquests
import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException

from grafana.provisioning_files import GRAFANA_ENV

# Non-secret datasource settings default to the compose/k8s values; secrets (GRAFANA_ENV gives them "") do not.
DEFAULT_ENV: dict[str, str] = {name: default for name, (default, _) in GRAFANA_ENV.items() if default}

FOLDER_UID = "plantpulse"
FOLDER_TITLE = "PlantPulse"
PROVISIONING_DIR = Path(__file__).with_name("provisioning")
PUSH_MESSAGE = "plantpulse grafana push"
# Fields of a provisioning-file datasource that the HTTP API does not take (orgId comes from the token,
# `editable` is a file-provisioning notion, `version` would turn the update into an optimistic-lock check).
_FILE_ONLY_DATASOURCE_FIELDS = {"orgId", "editable", "version"}
_ENV_REFERENCE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Action = Literal["created", "updated"]


class GrafanaPushError(RuntimeError):
    """A push step failed; names the object and carries Grafana's HTTP status and response body."""

    def __init__(self, kind: str, uid: str, status: int | None, body: object, hint: str = "") -> None:
        self.kind, self.uid, self.status, self.body = kind, uid, status, body
        where = f"HTTP {status}" if status else "no response"
        super().__init__(f"grafana push: {kind} {uid!r}: {where}: {_brief(body)}{hint}")


@dataclass(frozen=True)
class Pushed:
    """One object written to Grafana."""

    kind: str  # folder | datasource | dashboard | alert-rule | alert-rule-group
    uid: str
    title: str
    action: Action

    def line(self) -> str:
        return f"{self.action:8} {self.kind:16} {self.uid}  ({self.title})"


@dataclass(frozen=True)
class Provisioning:
    """The objects to push, parsed from provisioning files (secrets still as `$VAR` references)."""

    datasources: list[dict[str, Any]]
    dashboards: list[dict[str, Any]]
    alert_groups: list[dict[str, Any]] = field(default_factory=list)


def load_provisioning(files: Mapping[str, str] | None = None) -> Provisioning:
    """Parse rendered provisioning content (relative path -> text); by default `grafana.build.render_all()`,
    or the files under grafana/provisioning/ when the generator is not importable."""
    if files is None:
        files = _default_files()
    datasources: list[dict[str, Any]] = []
    dashboards: list[dict[str, Any]] = []
    alert_groups: list[dict[str, Any]] = []
    for name, text in sorted(files.items()):
        path = PurePosixPath(name)
        top = path.parts[0] if path.parts else ""
        try:
            if top == "datasources" and path.suffix in (".yaml", ".yml"):
                datasources.extend((yaml.safe_load(text) or {}).get("datasources") or [])
            elif top == "dashboards" and path.suffix == ".json":
                dashboards.append(json.loads(text))
            elif top == "alerting" and path.suffix in (".yaml", ".yml"):
                alert_groups.extend((yaml.safe_load(text) or {}).get("groups") or [])
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ValueError(f"provisioning file {name}: not valid {path.suffix[1:]}: {exc}") from exc
    for kind, items in (("datasource", datasources), ("dashboard", dashboards), ("alert rule", _rules(alert_groups))):
        for item in items:
            if not item.get("uid"):
                raise ValueError(f"{kind} {item.get('name') or item.get('title')!r} has no uid: push overwrites by uid")
    return Provisioning(datasources, dashboards, alert_groups)


def _default_files() -> dict[str, str]:
    try:
        build = importlib.import_module("grafana.build")
    except ModuleNotFoundError as exc:
        if exc.name != "grafana.build":  # the generator exists but one of its imports is missing
            raise
        build = None
    if build is not None and hasattr(build, "render_all"):
        rendered: dict[str, str] = build.render_all()
        return rendered
    return {p.relative_to(PROVISIONING_DIR).as_posix(): p.read_text() for p in PROVISIONING_DIR.rglob("*") if p.is_file()}


def connect(url: str, token: str, *, timeout: float = 10.0) -> GrafanaApi:
    """A grafana-client API for `url` (http(s)://host[:port][/sub/path]) authenticating with a service
    account token (Authorization: Bearer)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http(s)://host[:port][/path]")
    if not token:
        raise ValueError("--token is empty: create a Grafana service account token (Editor or Admin role)")
    # grafana-client joins the path prefix and "api" without a slash: "/grafana" must become "/grafana/".
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return GrafanaApi.from_url(urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), credential=token,
                               timeout=timeout)


def push(api: GrafanaApi, provisioning: Provisioning, *, env: Mapping[str, str] | None = None) -> list[Pushed]:
    """Create or update the folder, datasources, dashboards and alert rules; returns what was done.

    Every datasource's `$VAR` references are resolved before the first request, so a missing secret
    stops the push before Grafana is touched.
    """
    env = os.environ if env is None else env
    env = {**DEFAULT_ENV, **env}
    datasources = [_datasource_body(source, env) for source in provisioning.datasources]
    groups = [_alert_group_body(group) for group in provisioning.alert_groups]
    done = [_push_folder(api)]
    for body in datasources:
        done.append(_push_datasource(api, body))
    for board in provisioning.dashboards:
        done.append(_push_dashboard(api, board))
    for group in groups:
        done.extend(_push_alert_group(api, group))
    return done


# --- objects --------------------------------------------------------------------------------------------------


def _error(kind: str, uid: str, exc: Exception) -> GrafanaPushError:
    if isinstance(exc, GrafanaException):
        hint = ""
        if exc.status_code == 401:
            hint = " (check --token: Grafana rejected it)"
        elif exc.status_code == 403:
            hint = " (the token's role may not write this object, or a provisioning file made it read-only)"
        return GrafanaPushError(kind, uid, exc.status_code, exc.response or exc.message, hint)
    return GrafanaPushError(kind, uid, None, f"cannot reach Grafana: {exc}")


def _call(kind: str, uid: str, request: Callable[[], Any]) -> Any:
    try:
        return request()
    except (GrafanaException, niquests.exceptions.RequestException) as exc:
        raise _error(kind, uid, exc) from exc


def _exists(kind: str, uid: str, lookup: Callable[[], Any]) -> bool:
    """True if Grafana has the object (200), False on 404; any other answer is an error."""
    try:
        lookup()
    except GrafanaException as exc:
        if exc.status_code == 404:
            return False
        raise _error(kind, uid, exc) from exc
    except niquests.exceptions.RequestException as exc:
        raise _error(kind, uid, exc) from exc
    return True


def _push_folder(api: GrafanaApi) -> Pushed:
    if _exists("folder", FOLDER_UID, lambda: api.folder.get_folder(FOLDER_UID)):
        _call("folder", FOLDER_UID, lambda: api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True))
        return Pushed("folder", FOLDER_UID, FOLDER_TITLE, "updated")
    _call("folder", FOLDER_UID, lambda: api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID))
    return Pushed("folder", FOLDER_UID, FOLDER_TITLE, "created")


def _datasource_body(source: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    where = f"datasource {source.get('uid')!r}"
    body = {k: v for k, v in _expand_env(source, env, where).items() if k not in _FILE_ONLY_DATASOURCE_FIELDS}
    body.setdefault("access", "proxy")
    return body


def _push_datasource(api: GrafanaApi, body: Mapping[str, Any]) -> Pushed:
    uid = str(body["uid"])
    if _exists("datasource", uid, lambda: api.datasource.get_datasource_by_uid(uid)):
        _call("datasource", uid, lambda: api.datasource.update_datasource_by_uid(uid, body))
        return Pushed("datasource", uid, str(body.get("name")), "updated")
    _call("datasource", uid, lambda: api.datasource.create_datasource(body))
    return Pushed("datasource", uid, str(body.get("name")), "created")


def _push_dashboard(api: GrafanaApi, board: Mapping[str, Any]) -> Pushed:
    uid = str(board["uid"])
    # id identifies a dashboard within one Grafana database; by uid is the portable key, so drop it.
    model = {**board, "id": None}
    existed = _exists("dashboard", uid, lambda: api.dashboard.get_dashboard(uid))
    payload = {"dashboard": model, "folderUid": FOLDER_UID, "overwrite": True, "message": PUSH_MESSAGE}
    _call("dashboard", uid, lambda: api.dashboard.update_dashboard(payload))
    return Pushed("dashboard", uid, str(board.get("title")), "updated" if existed else "created")


def _alert_group_body(group: Mapping[str, Any]) -> dict[str, Any]:
    """A file-provisioning rule group (name, folder title, interval "1m", rules) as the API's AlertRuleGroup."""
    name = str(group["name"])
    folder = group.get("folder", FOLDER_TITLE)
    if folder not in (FOLDER_TITLE, FOLDER_UID):
        raise ValueError(f"alert rule group {name!r} is in folder {folder!r}; push manages only {FOLDER_TITLE!r}")
    org = int(group.get("orgId", 1))
    rules = [{**rule, "folderUID": FOLDER_UID, "ruleGroup": name, "orgID": org} for rule in group.get("rules") or []]
    interval = _seconds(str(group.get("interval", "1m")), f"alert rule group {name!r} interval")
    return {"title": name, "folderUid": FOLDER_UID, "interval": interval, "rules": rules}


def _push_alert_group(api: GrafanaApi, group: Mapping[str, Any]) -> list[Pushed]:
    done = [_push_alert_rule(api, rule) for rule in group["rules"]]
    name = str(group["title"])
    # The whole group, rules included: Grafana versions that treat this PUT as "replace the group" then
    # keep the rules, older ones only take the interval from it.
    _call("alert-rule-group", name,
          lambda: api.alertingprovisioning.update_rule_group(FOLDER_UID, name, group, disable_provenance=True))
    done.append(Pushed("alert-rule-group", name, f"every {group['interval']}s", "updated"))
    return done


def _push_alert_rule(api: GrafanaApi, body: Mapping[str, Any]) -> Pushed:
    uid, provisioning = str(body["uid"]), api.alertingprovisioning
    if _exists("alert-rule", uid, lambda: provisioning.get_alertrule(uid)):
        _call("alert-rule", uid, lambda: provisioning.update_alertrule(uid, body, disable_provenance=True))
        return Pushed("alert-rule", uid, str(body.get("title")), "updated")
    _call("alert-rule", uid, lambda: provisioning.create_alertrule(body, disable_provenance=True))
    return Pushed("alert-rule", uid, str(body.get("title")), "created")


# --- helpers --------------------------------------------------------------------------------------------------


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group.get("rules") or []]


def _expand_env(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Grafana provisioning's env expansion ($VAR, ${VAR}, $$ for a literal $), on every string value;
    an unset variable raises (Grafana would silently use "")."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            if match.group() == "$$":
                return "$"
            name = match.group(1) or match.group(2)
            if name not in env:
                raise ValueError(f"{where} needs the environment variable {name}, which is not set")
            return env[name]

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, Mapping):
        return {k: _expand_env(v, env, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, where) for v in value]
    return value


def _seconds(text: str, where: str) -> int:
    """A Grafana/Prometheus duration ("1m", "1h30m", "90s") in whole seconds."""
    if not text or _DURATION.sub("", text):
        raise ValueError(f"{where}: {text!r} is not a duration like 1m or 30s")
    return int(sum(int(n) * _SECONDS[unit] for n, unit in _DURATION.findall(text)))


def _brief(body: object) -> str:
    text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, default=str)
    return text if len(text) <= 500 else text[:500] + "…"
