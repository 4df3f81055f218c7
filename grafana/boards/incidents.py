"""Incidents: open / acknowledged / resolved by severity and rule, time to acknowledge and resolve, noisiest machines
and rules, the open ones."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as model

from grafana.boards.common import Board, fixed_color, machine_link
from grafana.names import DASHBOARD_TITLES, INCIDENTS_UID

_SCOPE = "Incidents of the selected machines opened in the range, plus every one still open."


def _status_colors(panel: barchart.Panel) -> barchart.Panel:
    return (panel.override_by_name("open", fixed_color("red"))
            .override_by_name("acknowledged", fixed_color("orange"))
            .override_by_name("resolved", fixed_color("green")))


def build() -> model.Dashboard:
    board = Board(INCIDENTS_UID, DASHBOARD_TITLES[INCIDENTS_UID], "Who is on what, how fast incidents are handled, "
                  "and where they come from.", time_from="now-24h")
    board.add(_status_colors(barchart.Panel().x_field("severity").stacking(cm.StackingMode.NORMAL)), 8, 8,
              "incidents.by_severity", title="By severity", description=_SCOPE)
    board.add(table.Panel(), 16, 8, "incidents.by_rule", title="By rule", description=_SCOPE)
    board.add(
        table.Panel().unit("s"), 12, 8, "incidents.response_times",
        description="Seconds from opening to acknowledgement / resolution (wall clock); empty until something was "
        "acknowledged or resolved. " + _SCOPE,
    )
    board.add(timeseries.Panel().unit("s").draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60), 12, 8,
              "incidents.response_trend", description="Medians for the incidents opened in each interval.")
    board.add(table.Panel().override_by_name("machine_id", machine_link()), 12, 8, "incidents.noisiest_machines",
              description="Most incidents. " + _SCOPE)
    board.add(table.Panel(), 12, 8, "incidents.noisiest_rules", description="Most incidents. " + _SCOPE)
    board.add(
        table.Panel().override_by_name("machine_id", machine_link()), 24, 10, "incidents.open_list",
        description="Open and acknowledged incidents, critical first. Acknowledge or resolve with "
        "`plantpulse alerts ack|resolve <incident_id>`.",
    )
    return board.build()
