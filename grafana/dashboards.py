"""The PlantPulse dashboards, built with grafana-foundation-sdk (one module per board under grafana/boards)."""

from __future__ import annotations

import json
from collections.abc import Callable

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from grafana.boards import fleet, incidents, machine, pipeline
from grafana.names import FLEET_UID, INCIDENTS_UID, MACHINE_UID, PIPELINE_UID

BUILDERS: dict[str, Callable[[], model.Dashboard]] = {
    FLEET_UID: fleet.build,
    MACHINE_UID: machine.build,
    INCIDENTS_UID: incidents.build,
    PIPELINE_UID: pipeline.build,
}


def dashboard_json(uid: str) -> dict[str, object]:
    """One dashboard as the JSON object Grafana stores (plain dicts and lists, ready for json.dumps)."""
    if uid not in BUILDERS:
        raise KeyError(f"no PlantPulse dashboard with uid {uid!r}; known: {sorted(BUILDERS)}")
    encoded: dict[str, object] = json.loads(json.dumps(BUILDERS[uid](), cls=JSONEncoder))
    return encoded


def build_dashboards() -> dict[str, dict[str, object]]:
    """Every dashboard by uid."""
    return {uid: dashboard_json(uid) for uid in BUILDERS}
