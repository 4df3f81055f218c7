"""Fleet now: machines by state, open incidents by severity, readings/s, risk heat map by line, top 10 by risk."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import heatmap, piechart, stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import piechart as pm

from grafana.boards.common import Board, fixed_color, machine_link, steps
from grafana.names import DASHBOARD_TITLES, FLEET_UID


def build() -> model.Dashboard:
    board = Board(FLEET_UID, DASHBOARD_TITLES[FLEET_UID], "The whole fleet at a glance: what is healthy, what is drifting, "
                  "what is open.", time_from="now-1h")
    board.add(
        piechart.Panel()
        .pie_type(pm.PieChartType.DONUT)
        .display_labels([pm.PieChartLabels.NAME, pm.PieChartLabels.VALUE])
        .reduce_options(cb.ReduceDataOptions().values(True).calcs([]).fields("/^machines$/"))
        .override_by_name("ok", fixed_color("green"))
        .override_by_name("stale", fixed_color("orange"))
        .override_by_name("in_incident", fixed_color("red")),
        8, 8, "fleet.machine_states",
        description="Current state per machine: in_incident (an incident not resolved), else ok or stale "
        "(silent for STALE_AFTER_SECONDS). Source: machine_state, incidents.",
    )
    board.add(
        stat.Panel()
        .reduce_options(cb.ReduceDataOptions().values(True).calcs([]).fields("/^incidents$/"))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .thresholds(steps((None, "green"), (1, "red"))),
        8, 8, "fleet.open_incidents_by_severity",
        description="Incidents open or acknowledged, per severity (Incidents board for details).",
    )
    board.add(
        timeseries.Panel().unit("cps").fill_opacity(10).min(0),
        8, 8, "fleet.readings_rate",
        description="Accepted readings per second. Ranges over 6 h read the hourly rollup.",
    )
    board.add(
        heatmap.Panel()
        .calculate(False)
        .display_name("${__field.labels.line}")
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("YlOrRd").steps(64)
               .scale(hm.HeatmapColorScale.LINEAR).min(0).max(2))
        .y_axis(heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT))
        .cell_gap(1)
        .show_tooltip(),
        24, 9, "fleet.risk_heatmap",
        description="Per line and interval, the highest anomaly score / threshold of its machines (1 = at the "
        "threshold). Warm-up windows are left out.",
    )
    board.add(
        table.Panel()
        .override_by_name("machine_id", machine_link())
        .override_by_name("risk", [model.DynamicConfigValue(id_val="decimals", value=2)]),
        24, 9, "fleet.top_risk",
        description="Highest score / threshold in the range; click a machine for its detail board.",
    )
    return board.build()
