"""Online anomaly models per machine: pure code (NumPy, pyarrow, River; no I/O besides reading a spec file),
shared by the live flow and `plantpulse replay`.

- `models.features`: features of closed windows (operating modes, missing values, thermal lag);
- `models.robust_zscore` / `models.half_space_trees` / `models.multivariate`: the detectors a spec chooses
  from, one batch interface;
- `models.seasonal_residual`: the seasonal span family, OR'ed with the spec's detector on channel machines;
- `models.threshold`: adaptive per-machine thresholds (streaming quantile with a floor);
- `models.spec`: model specs per machine type (`plantpulse/config/models.toml`), overrides, grids;
- `models.fleet_models`: `FleetModels`, window statistics in, scores and `anomaly` alerts out;
- `models.evaluation`: event-level precision, recall, F1, delay and false alarms per machine-day.

Threshold rules live in `flows/rules.py`.
"""
