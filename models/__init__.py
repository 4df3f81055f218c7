"""Online anomaly models per machine: pure code (NumPy, pyarrow, River; no I/O besides reading a spec file),
shared by the live flow and `plantpulse replay`.

- `models.features`: features of closed windows (operating modes, missing values, thermal lag);
- `models.robust_zscore` / `models.half_space_trees`: the two detector families, one batch interface;
- `models.threshold`: adaptive per-machine thresholds (streaming quantile with a floor);
- `models.spec`: model specs per machine type (`plantpulse/config/models.toml`), overrides, grids;
- `models.fleet_models`: `FleetModels`, window statistics in, scores and `anomaly` alerts out;
- `models.evaluation`: event-level precision, recall, F1, delay and false alarms per machine-day.

Threshold rules live in `flows/rules.py`.
"""
