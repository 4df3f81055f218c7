"""Stable identifiers shared by the dashboards, the alert rules and the provisioning files (see the issue-14 contract)."""

from __future__ import annotations

CLICKHOUSE_UID = "plantpulse-clickhouse"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PROMETHEUS_UID = "plantpulse-prometheus"
PROMETHEUS_TYPE = "prometheus"

# One folder for dashboards and alert rules. `plantpulse grafana push` creates it with this uid. File provisioning
# names it by title only: Grafana provisions alert rules before dashboards and creates a rule group's folder by
# title with a uid of its own; a dashboard provider asking for uid `plantpulse` would then create a second
# "PlantPulse" folder (or fail on Grafana versions that want unique titles), while one asking by title finds it.
FOLDER_UID = "plantpulse"
FOLDER_TITLE = "PlantPulse"

FLEET_UID = "plantpulse-fleet"
MACHINE_UID = "plantpulse-machine"
INCIDENTS_UID = "plantpulse-incidents"
PIPELINE_UID = "plantpulse-pipeline"
DASHBOARD_TITLES: dict[str, str] = {
    FLEET_UID: "Fleet now",
    MACHINE_UID: "Machine detail",
    INCIDENTS_UID: "Incidents",
    PIPELINE_UID: "Pipeline health and data quality",
}
TAG = "plantpulse"
