"""Grafana unified-alerting provisioning: rule groups, a contact point and the notification policy, as files.

File format: Grafana's "Provision alerting resources: file provisioning" (apiVersion 1, `groups`,
`contactPoints`, `policies`). Two details of Grafana's reader matter here (pkg/services/provisioning/alerting):
- a rule's query `model` is taken raw, without `$VAR` expansion, so `$__timeFilter(...)` reaches the plugin
  intact; annotations expand only `${VAR}` (so `{{ $values.A.Value }}` is safe); contact-point settings expand
  `$VAR`, which is how the webhook URL stays out of the file;
- provisioning a notification policy replaces the organisation's whole policy tree.
Each rule: A = a ClickHouse query from QUERIES["alert.*"] (one row, one numeric `value`), C = a threshold
expression on A, the rule's condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana.dataquery import ClickHouseQuery
from grafana.names import CLICKHOUSE_UID, FLEET_UID, FOLDER_TITLE, PIPELINE_UID
from grafana.provisioning_files import env
from grafana.queries import PROM_QUERIES, QUERIES

CONTACT_POINT = "plantpulse-ops"
ORG_ID = 1


@dataclass(frozen=True)
class AlertRule:
    uid: str
    query_key: str  # QUERIES key, alert.*
    title: str
    above: float  # fires while value > above
    range_s: int  # relative time range the macros see
    pending: str  # Grafana `for`
    severity: str
    summary: str
    description: str
    no_data: str  # noDataState
    dashboard_uid: str
    panel_key: str  # QUERIES / PROM_QUERIES key of the dashboard panel the rule links to


@dataclass(frozen=True)
class RuleGroup:
    name: str
    interval: str
    rules: tuple[AlertRule, ...]


GROUPS: tuple[RuleGroup, ...] = (
    RuleGroup("plantpulse-incidents", "1m", (
        AlertRule(
            "plantpulse-open-critical-incidents", "alert.open_critical_incidents", "Open critical incidents",
            above=0, range_s=600, pending="0s", severity="critical",
            summary="{{ $values.A.Value }} critical incident(s) open",
            description="At least one critical incident is open or acknowledged. See the Incidents board or "
            "`plantpulse alerts list --open`.",
            no_data="OK", dashboard_uid=FLEET_UID, panel_key="fleet.open_incidents_by_severity",
        ),
    )),
    RuleGroup("plantpulse-pipeline", "1m", (
        AlertRule(
            "plantpulse-pipeline-lag", "alert.pipeline_lag", "Pipeline lag above 5 minutes",
            above=300, range_s=3600, pending="2m", severity="critical",
            summary="Newest window ended {{ $values.A.Value }} s ago",
            description="No window newer than 5 minutes reached ClickHouse: the flow, the broker or the sink is "
            "stuck, or the whole fleet is silent.",
            no_data="Alerting", dashboard_uid=PIPELINE_UID, panel_key="prom.event_time_lag",
        ),
        AlertRule(
            "plantpulse-dead-letter-ratio", "alert.dead_letter_ratio", "Dead-letter ratio above 1 %",
            above=0.01, range_s=900, pending="5m", severity="warning",
            summary="{{ $values.A.Value }} of the messages of the last 15 min were dead-lettered",
            description="More than 1 % of the telemetry messages could not be accepted (reading_issues, by reason on "
            "the Pipeline board).",
            no_data="OK", dashboard_uid=PIPELINE_UID, panel_key="dq.dead_letters_by_reason",
        ),
    )),
)


def panel_id(dashboard: dict[str, Any], key: str) -> int:
    """The id of the panel of `dashboard` (as build_dashboards returns it) that shows query `key`."""
    wanted = PROM_QUERIES[key].expr if key in PROM_QUERIES else QUERIES[key].sql
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if wanted in (target.get("rawSql"), target.get("expr")):
                return int(panel["id"])
    raise KeyError(f"dashboard {dashboard.get('uid')!r} has no panel showing query {key!r}")


def _rule(rule: AlertRule, dashboards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    query = QUERIES[rule.query_key]
    target = ClickHouseQuery().ref_id("A").datasource(CLICKHOUSE_UID).raw_sql(query.sql).format(query.format)
    model: dict[str, Any] = json.loads(json.dumps(target.build(), cls=JSONEncoder))
    model |= {"intervalMs": 60_000, "maxDataPoints": 43_200}
    threshold = {
        "refId": "C",
        "type": "threshold",
        "expression": "A",
        "datasource": {"type": "__expr__", "uid": "__expr__"},
        "conditions": [{"evaluator": {"type": "gt", "params": [rule.above]}}],
    }
    return {
        "uid": rule.uid,
        "title": rule.title,
        "condition": "C",
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": rule.range_s, "to": 0}, "datasourceUid": CLICKHOUSE_UID,
             "model": model},
            {"refId": "C", "datasourceUid": "__expr__", "model": threshold},
        ],
        "dashboardUid": rule.dashboard_uid,
        "panelId": panel_id(dashboards[rule.dashboard_uid], rule.panel_key),
        "noDataState": rule.no_data,
        "execErrState": "Error",
        "for": rule.pending,
        "annotations": {"summary": rule.summary, "description": rule.description},
        "labels": {"severity": rule.severity, "app": "plantpulse"},
        "isPaused": False,
    }


def rule_groups(dashboards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """alerting/rules.yaml. `dashboards` (build_dashboards()) gives the panel ids the rules link to."""
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": ORG_ID, "name": group.name, "folder": FOLDER_TITLE, "interval": group.interval,
             "rules": [_rule(rule, dashboards) for rule in group.rules]}
            for group in GROUPS
        ],
    }


def contact_points() -> dict[str, Any]:
    """alerting/contact_points.yaml: one webhook; its URL comes from the environment."""
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": ORG_ID,
                "name": CONTACT_POINT,
                "receivers": [
                    {
                        "uid": "plantpulse-ops-webhook",
                        "type": "webhook",
                        "settings": {"url": env("GRAFANA_ALERT_WEBHOOK_URL"), "httpMethod": "POST"},
                        "disableResolveMessage": False,
                    }
                ],
            }
        ],
    }


def policies() -> dict[str, Any]:
    """alerting/policies.yaml: everything to the contact point; critical alerts repeat hourly instead of 4-hourly."""
    return {
        "apiVersion": 1,
        "policies": [
            {
                "orgId": ORG_ID,
                "receiver": CONTACT_POINT,
                "group_by": ["grafana_folder", "alertname"],
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "4h",
                "routes": [
                    {"receiver": CONTACT_POINT, "object_matchers": [["severity", "=", "critical"]],
                     "repeat_interval": "1h"},
                ],
            }
        ],
    }
