"""Machine detail: each sensor's window mean with its min-max band, anomaly score vs threshold, incidents as
annotations (first detection to resolution), the machine's state and last readings."""

from __future__ import annotations

from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as model

from grafana.boards.common import Board, ch_annotation
from grafana.names import DASHBOARD_TITLES, MACHINE_UID
from plantpulse.schema import SENSORS

UNITS: dict[str, str] = {"temperature": "celsius", "pressure": "pressurebar", "vibration": "velocitymms", "rpm": "rotrpm",
                         "power": "kwatt"}
# The band: min and max drawn without a line, the area between them filled; the mean as the line.
_NO_LINE = model.DynamicConfigValue(id_val="custom.lineWidth", value=0)


def build() -> model.Dashboard:
    board = Board(MACHINE_UID, DASHBOARD_TITLES[MACHINE_UID], "One machine: sensors, anomaly score, incidents.",
                  time_from="now-6h", single_machine=True)
    board.dashboard = board.dashboard.annotation(ch_annotation("machine.incident_spans", "red"))
    board.add(table.Panel(), 24, 4, "machine.state", description="Latest state (machine_state) and open incidents.")
    for sensor in SENSORS:
        board.add(
            timeseries.Panel()
            .unit(UNITS[sensor])
            .override_by_name("max", [_NO_LINE, model.DynamicConfigValue(id_val="custom.fillBelowTo", value="min"),
                                      model.DynamicConfigValue(id_val="custom.fillOpacity", value=20)])
            .override_by_name("min", [_NO_LINE]),
            12, 8, f"machine.sensor.{sensor}", title=sensor.capitalize(),
            description=f"Window mean of {sensor}, shaded between the window minimum and maximum. Ranges over "
            "6 h read the hourly rollup.",
        )
    board.add(
        timeseries.Panel()
        .override_by_name("threshold", [
            model.DynamicConfigValue(id_val="custom.lineStyle", value=cm.LineStyle(fill="dash", dash=[10, 10])),
            model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
        ]),
        12, 8, "machine.anomaly_score",
        description="Highest anomaly score per interval and the model's threshold (alert above it).",
    )
    board.add(table.Panel(), 24, 8, "machine.last_readings",
              description="The newest windows' last values (up to the last hour of the range).")
    return board.build()
