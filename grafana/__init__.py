"""Grafana dashboards and alert rules generated as code. Empty until the dashboards work lands; Grafana
itself cannot run on the development machines, so panels' SQL will be executed against ClickHouse in tests."""
