"""Pipeline health and data quality: the flow's own metrics (Prometheus) and what arrived vs what was expected
(ClickHouse: reading_issues, data_quality)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as model

from grafana.boards.common import Board, machine_link, steps
from grafana.names import DASHBOARD_TITLES, PIPELINE_UID

_COMPLETENESS = steps((None, "red"), (0.95, "orange"), (0.99, "green"))


def _percent(panel: table.Panel) -> table.Panel:
    return panel.override_by_name("completeness", [
        model.DynamicConfigValue(id_val="unit", value="percentunit"),
        model.DynamicConfigValue(id_val="decimals", value=2),
        model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
        model.DynamicConfigValue(id_val="thresholds", value=_COMPLETENESS.build()),
    ])


def build() -> model.Dashboard:
    board = Board(PIPELINE_UID, DASHBOARD_TITLES[PIPELINE_UID], "Is the pipeline keeping up, and is the data complete?",
                  time_from="now-6h")
    # The flow's metrics (Prometheus, scraped from METRICS_PORT).
    board.add(timeseries.Panel().unit("cps").min(0), 6, 8, "prom.readings_received", "prom.readings_accepted",
              title="Readings in", description="Messages read from the telemetry topic and readings accepted, per second.")
    board.add(timeseries.Panel().unit("short").min(0), 6, 8, "prom.consumer_lag",
              description="Messages not yet consumed, per topic partition.")
    board.add(timeseries.Panel().unit("s").min(0), 6, 8, "prom.event_time_lag",
              description="Wall clock minus the end of the newest window the flow emitted.")
    board.add(timeseries.Panel().unit("ops").min(0), 6, 8, "prom.sink_retries",
              description="Retried inserts / produce calls per second, per sink.")
    # What arrived (ClickHouse).
    board.add(
        stat.Panel()
        .reduce_options(cb.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields(""))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .override_by_name("completeness", [
            model.DynamicConfigValue(id_val="unit", value="percentunit"),
            model.DynamicConfigValue(id_val="decimals", value=2),
            model.DynamicConfigValue(id_val="thresholds", value=_COMPLETENESS.build()),
        ]),
        24, 4, "dq.summary",
        description="Received (accepted + late) vs expected from the machines' sequence numbers and reporting "
        "intervals, over the range (data_quality, per machine and hour).",
    )
    board.add(timeseries.Panel().draw_style(cm.GraphDrawStyle.BARS).stacking(
        cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(70), 8, 8, "dq.dead_letters_by_reason",
        description="Messages dead-lettered, by reason (reading_issues).")
    board.add(barchart.Panel().x_field("reason").orientation(cm.VizOrientation.HORIZONTAL), 8, 8,
              "dq.dead_letter_totals", description="Dead letters over the range, by reason.")
    board.add(timeseries.Panel().draw_style(cm.GraphDrawStyle.BARS).fill_opacity(70), 8, 8, "dq.duplicates_late",
              description="Duplicates dropped, late events (after their window closed) and sequence restarts.")
    board.add(
        timeseries.Panel().unit("percentunit").min(0).max(1).thresholds(_COMPLETENESS)
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.LINE)),
        12, 8, "dq.completeness_trend",
        description="Fleet completeness per hour: (readings + late) / expected. The line marks 99 %.",
    )
    board.add(_percent(table.Panel().override_by_name("machine_id", machine_link())), 12, 8, "dq.below_99",
              description="Machines whose completeness over the range is below 99 %, worst first.")
    board.add(_percent(table.Panel().override_by_name("machine_id", machine_link())), 24, 10,
              "dq.completeness_by_machine",
              description="One row per machine and hour, worst first (up to 500 rows).")
    return board.build()
