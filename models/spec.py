"""Model specs: which detector, features' noise floors, warm-up, threshold and alerting, per machine type.

The spec file (TOML, `MODELS_FILE`; packaged default `plantpulse/config/models.toml`) has a `[default]`
table and optional tables per machine type that override some of its keys::

    [default]
    detector = "robust_zscore"          # or "half_space_trees"
    warmup_windows = 30                 # no alert before a machine has this many scorable windows
    settle_windows = 2                  # after a start, this many running windows are not scored
    alpha = 0.05                        # baseline adaptation rate (robust_zscore)
    [default.threshold]
    quantile = 0.99                     # adaptive threshold: margin x this quantile of the machine's scores,
    margin = 1.5                        # never below floor
    floor = 8.0
    [default.alert]
    min_windows = 2                     # consecutive anomalous windows before an alert
    cooldown_windows = 30               # no second alert for the same machine within this many windows
    relearn_after_windows = 90          # a lasting change becomes the new normal after this long
    [default.min_deviation]             # noise floors of the robust z-score, per feature
    temperature = 0.3

    [pump.threshold]
    floor = 9.0

The flow and `plantpulse replay` both read it; `--grid pump.threshold.floor=8,10` overrides keys by their
dotted names (`ModelSpecs.with_overrides`).
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from models.features import FEATURES

DETECTORS = ("robust_zscore", "half_space_trees")


@dataclass(frozen=True)
class ModelSpec:
    """One machine type's model. Field names are the spec file's dotted keys with `_` for `.`."""

    name: str = "default"
    detector: str = "robust_zscore"
    warmup_windows: int = 30
    settle_windows: int = 2  # running windows after a start that are neither scored nor learned
    alpha: float = 0.05
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.5
    threshold_floor: float = 8.0
    threshold_rate: float = 0.02
    alert_min_windows: int = 2
    alert_cooldown_windows: int = 30
    alert_relearn_after_windows: int = 90
    hst_n_trees: int = 10
    hst_height: int = 8
    hst_window_size: int = 50
    hst_seed: int = 42
    min_deviation: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"model spec {self.name!r}: detector {self.detector!r} is not one of {DETECTORS}")
        if self.warmup_windows < 1 or self.alert_min_windows < 1:
            raise ValueError(f"model spec {self.name!r}: warmup_windows and alert.min_windows must be >= 1")
        unknown = set(self.min_deviation) - set(FEATURES)
        if unknown:
            raise ValueError(f"model spec {self.name!r}: min_deviation for unknown features {sorted(unknown)}")

    def min_deviations(self) -> list[float]:
        return [self.min_deviation.get(f, 1e-3) for f in FEATURES]


_FIELDS = {f.name: f for f in fields(ModelSpec) if f.name not in ("name", "min_deviation")}


class ModelSpecs:
    """The specs of a file: `[default]` plus per-machine-type overrides."""

    def __init__(self, tables: dict[str, dict[str, Any]], source: str = "<specs>") -> None:
        if "default" not in tables:
            raise ValueError(f"{source}: needs a [default] table")
        self.source = source
        self.tables = tables
        self.default = _build("default", tables["default"], ModelSpec(), source)
        self.by_type = {
            name: _build(name, table, replace(self.default, name=name), source)
            for name, table in tables.items()
            if name != "default"
        }

    def for_type(self, machine_type: str) -> ModelSpec:
        return self.by_type.get(machine_type, self.default)

    def names(self) -> list[str]:
        return ["default", *sorted(self.by_type)]

    def with_overrides(self, overrides: dict[str, str]) -> ModelSpecs:
        """A copy with dotted keys replaced, e.g. {"default.threshold.floor": "9", "pump.alpha": "0.1"}."""
        tables = {name: _nested_copy(table) for name, table in self.tables.items()}
        for key, value in overrides.items():
            section, _, path = key.partition(".")
            if not path:
                raise ValueError(f"model override {key}={value!r}: expected <type or default>.<key>")
            target = tables.setdefault(section, {})
            *parents, leaf = path.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = _parse_value(key, value)
        return ModelSpecs(tables, f"{self.source} + {overrides}")


def load_model_specs(path: str | Path) -> ModelSpecs:
    """Read a spec file; errors name the file, the table and the key."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"model specs {path}: {exc}") from exc
    return ModelSpecs(tables, str(path))


def parse_grid(items: list[str]) -> list[dict[str, str]]:
    """`["a=1,2", "b=x"]` -> every combination: `[{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]`."""
    keys, choices = [], []
    for item in items:
        key, sep, values = item.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise ValueError(f"--grid {item!r}: expected key=value1,value2,...")
        keys.append(key.strip())
        choices.append(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)] if keys else [{}]


def _build(name: str, table: dict[str, Any], base: ModelSpec, source: str) -> ModelSpec:
    values: dict[str, Any] = {}
    min_deviation = dict(base.min_deviation)
    for key, value in _flatten(table):
        if key.startswith("min_deviation."):
            min_deviation[key.removeprefix("min_deviation.")] = float(value)
            continue
        attribute = key.replace(".", "_")
        spec_field = _FIELDS.get(attribute)
        if spec_field is None:
            raise ValueError(f"{source}: [{name}] has unknown key {key!r} = {value!r}")
        kind = type(getattr(base, attribute))
        try:
            values[attribute] = kind(value) if kind is not bool else bool(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: [{name}] {key} = {value!r} is not a {kind.__name__}") from exc
    try:
        return replace(base, name=name, min_deviation=min_deviation, **values)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in table.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _nested_copy(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _nested_copy(v) if isinstance(v, dict) else v for k, v in table.items()}


def _parse_value(key: str, text: str) -> Any:
    """A grid/override value as TOML would read it (number, bool or string)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
