"""Model specs: which detector, feature options, warm-up, threshold and alerting, per machine type.

The spec file (TOML, `MODELS_FILE`; packaged default `plantpulse/config/models.toml`) has a `[default]`
table and optional tables per machine type that override some of its keys; a machine type without a
table uses `[default]`. A table may name another one as its `base` (default: `[default]`) and then
overrides that one's keys: the packaged file keeps the simulator's physics in `[physics]` and its four
machine types say `base = "physics"`::

    [default]
    features = "physics"                # or "channels": generic features of any channels
                                        # (models/channel_features.py), no sensor units anywhere
    channels = []                       # features = "channels": the channels used (empty: all the machine sends)
    channel_features = ["mean"]         # ... and which of "mean", "spread", "step" of each
    detector = "robust_zscore"          # or "half_space_trees" (physics), "multivariate" (channels)
    warmup_windows = 20                 # a machine alerts only after this many scored windows
    feature_min_windows = 5             # a feature scores once its machine x mode baseline learned this many
    prior_windows = 10                  # weight of a feature's prior level (see [default.prior])
    settle_windows = 3                  # after a mode change, this many windows score only settle_features
    settle_features = ["temperature_rise", "temperature_climb", "pressure_fall"]   # and learn nothing
    alpha = 0.05                        # baseline adaptation rate per window (robust_zscore)
    deviation_alpha = 0.02              # adaptation rate of the baseline's spread
    huber_clip = 3.0                    # a learned residual counts at most this many robust scales
    thermal_tau_s = 300                 # thermal time constant taken out of temperature_rise
    exclude_features = []               # features this type does not use
    [default.threshold]
    quantile = 0.99                     # adaptive threshold: margin x this quantile of the machine's scores,
    margin = 1.5                        # never below floor (in the detector's score units)
    floor = 7.0
    rate = 0.02
    [default.alert]
    min_windows = 1                     # consecutive anomalous windows before an alert
    cooldown_windows = 6                # one alert per anomalous episode, and none within this many windows
    learn_below = 0.6                   # windows scoring above this fraction of the threshold are not learned
    relearn_after_windows = 90          # ... unless that lasts this long: then it is the new normal
    learn_in_warmup = false             # true: learn every warm-up window, even one over the threshold (a
                                        # covariance from a few windows scores its first windows high)
    [default.incident]                  # incidents, not the model (flows/incidents.py)
    resolve_after_windows = 6           # quiet scored windows before an anomaly incident resolves
    critical_ratio = 2.0                # a score of this many times the threshold makes it critical
    [default.regression]                # operating-point regressions of the *_residual features
    alpha = 0.01                        # their forgetting rate per window
    min_windows = 10                    # slopes used once a machine x mode has learned this many windows
    ridge = 0.01                        # ridge penalty, as a fraction of each regressor's variance
    extrapolation = 0.2                 # residuals / sqrt(1 + this x squared Mahalanobis distance of the
                                        # operating point from the learned ones): trust a fit less far out
    [default.min_deviation]             # noise floors of the robust z-score, per feature, in its unit
    temperature = 0.5
    [default.prior]                     # expected level of machine-independent features
    temperature_rise = 0.0
    [default.weight]                    # robust_zscore: a feature's z-score counts this many times
    log_vibration_residual = 1.5        # (a steadier feature may alert at a lower z)
    [default.trend]                     # robust_zscore: EWMA of each feature's z along its fault direction,
    alpha = 0.5                         # scored in its own standard deviations (a creeping fault adds up)
    [default.trend_weight]              # ... times this weight; 0 or unset: the feature has no trend
    log_vibration_residual = 1.6
    [default.hst]                       # half_space_trees only
    n_trees = 10
    height = 6
    window_size = 50
    margin = 0.5
    seed = 42
    [default.multivariate]              # multivariate only (models/multivariate.py)
    alpha = 0.003                       # forgetting rate of the mean and covariance per window
    shrinkage = "oas"                   # weight of the identity in the shrunk correlations: "oas" (the
                                        # Oracle Approximating Shrinkage estimate) or a number in [0, 1]
    min_count = 5                       # windows a feature needs before it counts
    smooth = 1.0                        # EWMA rate of the standardised rows (1: no smoothing)
    [default.seasonal]                  # the seasonal span detector (models/seasonal_residual.py), OR'ed
    enabled = false                     # with the detector above; needs features = "channels" and "mean"
    period_s = 604800                   # the profile's period (a week) ...
    slot_s = 3600                       # ... in slots of this length (168 hours of the week)
    level_tau_s = 604800                # time constant of the forecaster's level
    profile_rate = 0.2                  # a slot's profile moves this far to each visit's mean (1/visits first)
    min_visits = 2                      # periods a slot must have been seen in before it forecasts
    span_s = 345600                     # time constant of the mean of the forecast's z (4 days)
    normaliser_tau_s = 1209600          # time constant of the score's normaliser (14 days) ...
    normaliser_warmup_s = 172800        # ... which scores once it learned this long (48 hours)
    threshold = 2.5758                  # fixed: Phi^-1(0.995), a two-sided nominal 99 %
    cooldown_s = 604800                 # no seasonal alert within this long of the machine's previous one

    [pump]
    base = "physics"                    # another table to start from instead of [default]
    [pump.threshold]
    floor = 9.0

The flow and `plantpulse replay` both read it; `--grid pump.threshold.floor=8,10` overrides keys by their
dotted names (`ModelSpecs.with_overrides`).

>>> specs = ModelSpecs({"default": {"warmup_windows": 10}, "pump": {"threshold": {"floor": 9.0}}})
>>> specs.for_type("pump").threshold_floor, specs.for_type("pump").warmup_windows, specs.for_type("cnc").name
(9.0, 10, 'default')
>>> specs.with_overrides({"default.alert.min_windows": "3"}).for_type("pump").alert_min_windows
3
>>> specs.with_overrides({"pump.colour": "red"})
Traceback (most recent call last):
...
ValueError: model specs <specs> + overrides: [pump] has unknown key 'colour' = 'red'
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from models.channel_features import FEATURE_KINDS
from models.features import FEATURES
from models.seasonal_residual import SeasonalResidual
from plantpulse.schema import CHANNEL_NAME_PATTERN, SENSORS

DETECTORS = ("robust_zscore", "half_space_trees", "multivariate")
FEATURE_SETS = ("physics", "channels")


@dataclass(frozen=True)
class ModelSpec:
    """One machine type's model. Field names are the spec file's dotted keys with `_` for `.`."""

    name: str = "default"
    features: str = "physics"  # "physics": the simulator's sensors (models.features); "channels": any
    detector: str = "robust_zscore"
    channels: tuple[str, ...] = ()  # features = "channels": the channels used (empty: all the machine sends)
    channel_features: tuple[str, ...] = ("mean",)  # ... and which of FEATURE_KINDS (channel_features.py)
    warmup_windows: int = 20
    settle_windows: int = 3
    alpha: float = 0.05
    deviation_alpha: float = 0.02
    huber_clip: float = 3.0
    thermal_tau_s: float = 300.0
    exclude_features: tuple[str, ...] = ()
    settle_features: tuple[str, ...] = ("temperature_rise", "temperature_climb", "pressure_fall")
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.5
    threshold_floor: float = 7.0
    threshold_rate: float = 0.02
    alert_min_windows: int = 1
    alert_cooldown_windows: int = 30
    alert_relearn_after_windows: int = 90
    alert_learn_below: float = 0.6
    hst_n_trees: int = 10
    hst_height: int = 6
    hst_window_size: int = 50
    hst_margin: float = 0.5
    hst_seed: int = 42
    multivariate_alpha: float = 0.003  # models.multivariate: forgetting rate of mean and covariance per window
    multivariate_shrinkage: str = "oas"  # ... weight of the identity in the shrunk correlations: "oas" or 0..1
    multivariate_min_count: int = 5  # ... windows a feature needs before it counts
    multivariate_smooth: float = 1.0  # ... EWMA rate of the standardised rows (1: none)
    alert_learn_in_warmup: bool = False  # learn every warm-up window, even one over the threshold
    # models.seasonal_residual, OR'ed with `detector` (features = "channels" only); times in seconds
    seasonal_enabled: bool = False
    seasonal_period_s: float = 7 * 86400.0
    seasonal_slot_s: float = 3600.0
    seasonal_level_tau_s: float = 7 * 86400.0
    seasonal_profile_rate: float = 0.2
    seasonal_min_visits: int = 2
    seasonal_span_s: float = 4 * 86400.0
    seasonal_normaliser_tau_s: float = 14 * 86400.0
    seasonal_normaliser_warmup_s: float = 48 * 3600.0
    seasonal_threshold: float = 2.5758  # Phi^-1(0.995)
    seasonal_cooldown_s: float = 7 * 86400.0
    feature_min_windows: int = 5
    prior_windows: int = 10
    regression_alpha: float = 0.01
    regression_min_windows: int = 10
    regression_ridge: float = 0.01
    regression_extrapolation: float = 0.0
    min_deviation: dict[str, float] = field(default_factory=dict)
    prior: dict[str, float] = field(default_factory=dict)
    weight: dict[str, float] = field(default_factory=dict)
    trend_alpha: float = 0.5
    trend_weight: dict[str, float] = field(default_factory=dict)
    # Incidents (flows/incidents.py), not the model: changing them does not reset a machine's learned state.
    incident_resolve_after_windows: int = 0  # quiet scored windows before an incident resolves; 0: the setting
    incident_critical_ratio: float = 0.0  # a score this many times its threshold is critical; 0: never

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, need: str) -> ValueError:
            return ValueError(f"model spec [{self.name}]: {key} = {value!r}: {need}")

        if self.detector not in DETECTORS:
            raise bad("detector", self.detector, f"expected one of {list(DETECTORS)}")
        if self.features not in FEATURE_SETS:
            raise bad("features", self.features, f"expected one of {list(FEATURE_SETS)}")
        if self.features == "physics" and self.detector == "multivariate":
            raise bad("detector", self.detector, 'the multivariate detector needs features = "channels"')
        if self.features == "channels" and self.detector == "half_space_trees":
            raise bad("detector", self.detector, 'features = "channels" works with robust_zscore or multivariate')
        if self.multivariate_shrinkage != "oas" and not _is_fraction(self.multivariate_shrinkage):
            raise bad("multivariate.shrinkage", self.multivariate_shrinkage, 'expected "oas" or a number in [0, 1]')
        if not 0 < self.multivariate_alpha <= 1 or not 0 < self.multivariate_smooth <= 1:
            raise bad("multivariate", (self.multivariate_alpha, self.multivariate_smooth), "need alpha and smooth in (0, 1]")
        if self.multivariate_min_count < 2:
            raise bad("multivariate.min_count", self.multivariate_min_count, "must be >= 2")
        self._check_seasonal(bad)
        unknown_kinds = [k for k in self.channel_features if k not in FEATURE_KINDS]
        if unknown_kinds or not self.channel_features:
            raise bad("channel_features", self.channel_features, f"expected a non-empty subset of {list(FEATURE_KINDS)}")
        bad_channels = [c for c in self.channels if not re.match(CHANNEL_NAME_PATTERN, c) and c not in SENSORS]
        if bad_channels:
            raise bad("channels", bad_channels, f"channel names match {CHANNEL_NAME_PATTERN}")
        for key in ("warmup_windows", "alert_min_windows", "alert_cooldown_windows", "alert_relearn_after_windows",
                    "hst_n_trees", "hst_height", "hst_window_size", "feature_min_windows"):
            if getattr(self, key) < 1:
                raise bad(key.replace("_", ".", 1) if key.startswith(("alert_", "hst_")) else key, getattr(self, key),
                          "must be >= 1")
        if self.incident_resolve_after_windows < 0 or self.incident_critical_ratio < 0:
            raise bad("incident", (self.incident_resolve_after_windows, self.incident_critical_ratio),
                      "need resolve_after_windows >= 0 and critical_ratio >= 0")
        if self.settle_windows < 0:
            raise bad("settle_windows", self.settle_windows, "must be >= 0")
        if not 0 < self.alpha <= 1:
            raise bad("alpha", self.alpha, "must be in (0, 1]")
        if not 0 < self.deviation_alpha <= 1:
            raise bad("deviation_alpha", self.deviation_alpha, "must be in (0, 1]")
        if not self.huber_clip > 0:
            raise bad("huber_clip", self.huber_clip, "must be > 0")
        if not 0 < self.alert_learn_below <= 1:
            raise bad("alert.learn_below", self.alert_learn_below, "must be in (0, 1]")
        if not self.thermal_tau_s > 0:
            raise bad("thermal_tau_s", self.thermal_tau_s, "must be > 0")
        if not 0 < self.threshold_quantile < 1:
            raise bad("threshold.quantile", self.threshold_quantile, "must be in (0, 1)")
        if self.threshold_margin <= 0 or self.threshold_floor < 0 or not 0 < self.threshold_rate < 1:
            raise bad("threshold", (self.threshold_margin, self.threshold_floor, self.threshold_rate),
                      "need margin > 0, floor >= 0 and 0 < rate < 1")
        if not 0 < self.regression_alpha <= 1:
            raise bad("regression.alpha", self.regression_alpha, "must be in (0, 1]")
        if self.regression_min_windows < 1 or self.regression_ridge < 0 or self.regression_extrapolation < 0:
            raise bad("regression", (self.regression_min_windows, self.regression_ridge, self.regression_extrapolation),
                      "need min_windows >= 1, ridge >= 0 and extrapolation >= 0")
        if not 0 < self.trend_alpha <= 1:
            raise bad("trend.alpha", self.trend_alpha, "must be in (0, 1]")
        if self.prior_windows < 0:
            raise bad("prior_windows", self.prior_windows, "must be >= 0")
        for name, feature in [*((f"min_deviation.{k}", k) for k in self.min_deviation),
                            *((f"prior.{k}", k) for k in self.prior),
                            *((f"weight.{k}", k) for k in self.weight),
                            *((f"trend_weight.{k}", k) for k in self.trend_weight),
                            *(("exclude_features", k) for k in self.exclude_features),
                            *(("settle_features", k) for k in self.settle_features)]:
            if feature not in FEATURES:
                raise bad(name, feature, f"unknown feature; expected one of {list(FEATURES)}")
        for table, values in (("min_deviation", self.min_deviation), ("weight", self.weight)):
            for key, value in values.items():
                if not value > 0:
                    raise bad(f"{table}.{key}", value, "must be > 0")
        for key, value in self.trend_weight.items():
            if not value >= 0:
                raise bad(f"trend_weight.{key}", value, "must be >= 0 (0: no trend)")

    def _check_seasonal(self, bad: Callable[[str, Any, str], ValueError]) -> None:
        """The `[<type>.seasonal]` table; its detector's own checks name the key (the same names) and value."""
        if not self.seasonal_enabled:
            return
        if self.features != "channels" or "mean" not in self.channel_features:
            raise bad("seasonal.enabled", True, 'the seasonal detector needs features = "channels" with "mean" '
                      "in channel_features (it forecasts each channel's window mean); set seasonal.enabled = false")
        if not self.seasonal_threshold > 0 or self.seasonal_cooldown_s < 0:
            raise bad("seasonal", (self.seasonal_threshold, self.seasonal_cooldown_s),
                      "need threshold > 0 and cooldown_s >= 0")
        try:
            SeasonalResidual(0, **self.seasonal_options())
        except ValueError as exc:
            raise ValueError(f"model spec [{self.name}]: seasonal: {exc}") from exc

    def seasonal_options(self) -> dict[str, Any]:
        """Keyword arguments of `models.seasonal_residual.SeasonalResidual` (the `[<type>.seasonal]` table)."""
        return {"period_s": self.seasonal_period_s, "slot_s": self.seasonal_slot_s,
                "level_tau_s": self.seasonal_level_tau_s, "profile_rate": self.seasonal_profile_rate,
                "min_visits": self.seasonal_min_visits, "span_s": self.seasonal_span_s,
                "normaliser_tau_s": self.seasonal_normaliser_tau_s,
                "normaliser_warmup_s": self.seasonal_normaliser_warmup_s}

    def multivariate_options(self) -> dict[str, Any]:
        """Keyword arguments of `models.multivariate.Multivariate` (the `[<type>.multivariate]` table)."""
        shrinkage = None if self.multivariate_shrinkage == "oas" else float(self.multivariate_shrinkage)
        return {"alpha": self.multivariate_alpha, "shrinkage": shrinkage,
                "min_count": self.multivariate_min_count, "smooth": self.multivariate_smooth}

    def min_deviations(self) -> list[float]:
        """Noise floor per feature, in FEATURES order (1e-3 where unset)."""
        return [self.min_deviation.get(f, 1e-3) for f in FEATURES]

    def weights(self) -> list[float]:
        """Score weight per feature, in FEATURES order (1 where unset)."""
        return [self.weight.get(f, 1.0) for f in FEATURES]

    def trend_weights(self) -> list[float]:
        """Trend weight per feature, in FEATURES order (0 where unset: no trend)."""
        return [self.trend_weight.get(f, 0.0) for f in FEATURES]

    def priors(self) -> list[float]:
        """Prior level per feature, in FEATURES order (NaN where unset)."""
        return [self.prior.get(f, math.nan) for f in FEATURES]

    def feature_mask(self) -> list[bool]:
        """Whether each feature (FEATURES order) is used."""
        return [f not in self.exclude_features for f in FEATURES]


_PER_FEATURE = ("min_deviation", "prior", "weight", "trend_weight")  # sub-tables keyed by feature
_FIELDS = {f.name: f for f in fields(ModelSpec) if f.name not in ("name", *_PER_FEATURE)}


class ModelSpecs:
    """The specs of a file: `[default]` plus per-machine-type overrides of its keys."""

    def __init__(self, tables: dict[str, dict[str, Any]], source: str = "<specs>") -> None:
        if "default" not in tables:
            raise ValueError(f"model specs {source}: needs a [default] table")
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise ValueError(f"model specs {source}: top-level key {name!r} = {table!r} must be a table")
        self.source = source
        self.tables = tables
        self.default = _build("default", _without_base(tables["default"]), ModelSpec(), source)
        self.by_type: dict[str, ModelSpec] = {}
        for name in tables:
            if name != "default":
                self.by_type[name] = self._build_with_base(name, [])

    def _build_with_base(self, name: str, chain: list[str]) -> ModelSpec:
        """A table's spec on top of its `base` table's (default: `[default]`); bases may chain, not loop."""
        if name in self.by_type:
            return self.by_type[name]
        table = self.tables[name]
        base_name = table.get("base", "default")
        if not isinstance(base_name, str) or base_name not in self.tables:
            raise ValueError(f"model specs {self.source}: [{name}] base = {base_name!r}: no such table")
        if base_name in chain or base_name == name:
            raise ValueError(f"model specs {self.source}: [{name}] base = {base_name!r}: a loop of bases "
                             f"({' -> '.join([*chain, name, base_name])})")
        base = self.default if base_name == "default" else self._build_with_base(base_name, [*chain, name])
        return _build(name, _without_base(table), replace(base, name=name), self.source)

    def for_type(self, machine_type: str) -> ModelSpec:
        """The spec of `machine_type`, or the `[default]` spec when it has no table."""
        return self.by_type.get(machine_type, self.default)

    def names(self) -> list[str]:
        return ["default", *sorted(self.by_type)]

    def with_overrides(self, overrides: dict[str, str]) -> ModelSpecs:
        """A copy with dotted keys replaced, e.g. {"default.threshold.floor": "9", "pump.alpha": "0.1"}.

        Values are read as TOML values (numbers, booleans, lists) or else as strings, then converted to the
        field's type; an unknown key or an unconvertible value raises ValueError naming key and value.
        """
        if not overrides:
            return self
        tables = {name: _nested_copy(table) for name, table in self.tables.items()}
        for key, value in overrides.items():
            section, _, path = key.partition(".")
            if not section or not path:
                raise ValueError(f"model override {key}={value!r}: expected <machine type or default>.<key>")
            target = tables.setdefault(section, {})
            *parents, leaf = path.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
                if not isinstance(target, dict):
                    raise ValueError(f"model override {key}={value!r}: {parent!r} is not a table")
            target[leaf] = _parse_value(value)
        return ModelSpecs(tables, f"{self.source} + overrides")


def _is_fraction(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def _without_base(table: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "base"}


def load_model_specs(path: str | Path) -> ModelSpecs:
    """Read a spec file; errors name the file, the table, the key and the value."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"model specs {path}: {exc}") from exc
    return ModelSpecs(tables, str(path))


# The start of a grid item: a spec key (dotted name) and "=". Tells grid items from paths and URLs.
GRID_ITEM = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")
_GRID_ITEM_SEPARATOR = re.compile(r"\s+(?=" + GRID_ITEM.pattern + ")")  # whitespace before the next key=


def parse_grid(items: list[str]) -> list[dict[str, str]]:
    """`["a=1,2", "b=x"]` -> every combination: `[{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]`.

    An item may hold several whitespace-separated `key=values` (`--grid "a=1,2 b=x"`, quoted as one value).

    >>> parse_grid(["a=1,2", "b=x"])
    [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}]
    >>> parse_grid(["a=1,2 b=x"]) == parse_grid(["a=1,2", "b=x"])
    True
    >>> parse_grid(["a=1, 2"])
    [{'a': '1'}, {'a': '2'}]
    >>> parse_grid([])
    [{}]
    """
    keys: list[str] = []
    choices: list[list[str]] = []
    for item in (part for given in items for part in _GRID_ITEM_SEPARATOR.split(given.strip())):
        key, sep, values = item.partition("=")
        options = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(options):
            raise ValueError(f"--grid {item!r}: expected key=value1,value2,... with non-empty key and values")
        if key.strip() in keys:
            raise ValueError(f"--grid {item!r}: key {key.strip()!r} given twice")
        keys.append(key.strip())
        choices.append(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def _build(name: str, table: dict[str, Any], base: ModelSpec, source: str) -> ModelSpec:
    values: dict[str, Any] = {}
    per_feature: dict[str, Any] = {table_name: dict(getattr(base, table_name)) for table_name in _PER_FEATURE}
    for key, value in _flatten(table):
        table_name, _, feature = key.partition(".")
        if table_name in per_feature and feature:
            if feature not in FEATURES:
                raise ValueError(f"model specs {source}: [{name}] {key} = {value!r}: unknown feature; "
                                 f"expected one of {list(FEATURES)}")
            per_feature[table_name][feature] = _convert(source, name, key, value, float)
            continue
        attribute = key.replace(".", "_")
        if attribute not in _FIELDS:
            raise ValueError(f"model specs {source}: [{name}] has unknown key {key!r} = {value!r}")
        values[attribute] = _convert(source, name, key, value, type(getattr(base, attribute)))
    try:
        return replace(base, name=name, **per_feature, **values)
    except ValueError as exc:
        raise ValueError(f"model specs {source}: {exc}") from exc


def _convert(source: str, name: str, key: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (int, float, str, bool or tuple of str), or ValueError naming the key and value."""
    problem = ValueError(f"model specs {source}: [{name}] {key} = {value!r} is not a {kind.__name__}")
    if kind is tuple:
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        if not all(isinstance(v, str) for v in items):
            raise problem
        return tuple(v.strip() for v in items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise problem
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise problem
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise problem
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "multivariate.shrinkage":
        return repr(float(value))  # a number or "oas"
    if not isinstance(value, str):
        raise problem
    return value


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


def _parse_value(text: str) -> Any:
    """An override value as TOML would read it (number, boolean, list), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()
