"""Model spec files: parsing, per-type fallback, dotted overrides, grids, and errors that name key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.features import FEATURES
from models.spec import ModelSpecs, load_model_specs, parse_grid
from plantpulse.settings import PACKAGED_MODELS_FILE


def test_packaged_file_loads_with_default_and_fallback() -> None:
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    assert specs.names()[0] == "default"
    assert specs.for_type("no-such-type") is specs.default
    assert (specs.default.features, specs.default.detector) == ("channels", "multivariate")
    # The simulator's types share the physics table, whatever [default] says.
    for machine_type in ("pump", "compressor", "cnc", "conveyor"):
        spec = specs.for_type(machine_type)
        assert (spec.features, spec.detector) == ("physics", "robust_zscore")
        assert spec.min_deviation == specs.for_type("physics").min_deviation != {}


def test_a_table_starts_from_its_base_and_bases_may_not_loop() -> None:
    specs = ModelSpecs({"default": {"warmup_windows": 9}, "physics": {"alpha": 0.2, "threshold": {"floor": 5.0}},
                        "pump": {"base": "physics", "threshold": {"floor": 6.0}}, "cnc": {}})
    pump, cnc = specs.for_type("pump"), specs.for_type("cnc")
    assert (pump.warmup_windows, pump.alpha, pump.threshold_floor) == (9, 0.2, 6.0)
    assert (cnc.alpha, cnc.threshold_floor) == (specs.default.alpha, specs.default.threshold_floor)
    assert specs.with_overrides({"physics.alpha": "0.3"}).for_type("pump").alpha == 0.3
    with pytest.raises(ValueError, match="loop of bases"):
        ModelSpecs({"default": {}, "a": {"base": "b"}, "b": {"base": "a"}})
    with pytest.raises(ValueError, match="no such table"):
        ModelSpecs({"default": {}, "a": {"base": "nope"}})


def test_type_tables_override_default_keys_only(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[default]\nwarmup_windows = 12\n[default.threshold]\nfloor = 6.0\n'
        '[default.min_deviation]\nlog_vibration_residual = 0.02\n'
        '[pump]\ndetector = "half_space_trees"\n[pump.threshold]\nfloor = 0.8\n'
    )
    specs = load_model_specs(path)
    pump, cnc = specs.for_type("pump"), specs.for_type("cnc")
    assert (pump.name, pump.detector, pump.threshold_floor, pump.warmup_windows) == ("pump", "half_space_trees", 0.8, 12)
    assert pump.min_deviation == {"log_vibration_residual": 0.02}, "per-feature tables are inherited"
    assert (cnc.name, cnc.threshold_floor) == ("default", 6.0)
    assert specs.names() == ["default", "pump"]


def test_overrides_parse_to_the_field_type() -> None:
    specs = ModelSpecs({"default": {}})
    changed = specs.with_overrides({
        "default.threshold.quantile": "0.95", "pump.warmup_windows": "7", "cnc.detector": "half_space_trees",
        "default.min_deviation.temperature": "0.7", "default.exclude_features": '["log_power_residual"]',
    })
    assert changed.for_type("conveyor").threshold_quantile == 0.95
    assert changed.for_type("pump").warmup_windows == 7 and changed.for_type("pump").threshold_quantile == 0.95
    assert changed.for_type("cnc").detector == "half_space_trees"
    assert changed.default.min_deviation["temperature"] == 0.7
    assert changed.default.exclude_features == ("log_power_residual",)
    trended = specs.with_overrides({"default.trend.alpha": "0.3", "pump.trend_weight.temperature": "1.2",
                                    "default.regression.extrapolation": "0.5"})
    assert trended.for_type("pump").trend_weights()[FEATURES.index("temperature")] == 1.2
    assert sum(trended.for_type("cnc").trend_weights()) == 0, "no trend unless a weight is given"
    assert (trended.for_type("pump").trend_alpha, trended.for_type("pump").regression_extrapolation) == (0.3, 0.5)
    assert specs.default.threshold_quantile == 0.99, "the original is unchanged"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"default.colour": "red"}, r"\[default\] has unknown key 'colour' = 'red'"),
        ({"default.warmup_windows": "2.5"}, r"\[default\] warmup_windows = 2.5 is not a int"),
        ({"default.warmup_windows": "0"}, r"warmup_windows = 0: must be >= 1"),
        ({"default.detector": "magic"}, r"detector = 'magic': expected one of"),
        ({"pump.threshold.quantile": "1.5"}, r"\[pump\]: threshold.quantile = 1.5: must be in \(0, 1\)"),
        ({"default.min_deviation.nope": "1"}, r"min_deviation.nope = 1: unknown feature"),
        ({"default.alpha": "fast"}, r"alpha = 'fast' is not a float"),
        ({"default.trend_weight.temperature": "-1"}, r"trend_weight.temperature = -1.0: must be >= 0"),
        ({"default.trend_weight.nope": "1"}, r"trend_weight.nope = 1: unknown feature"),
        ({"default.trend.alpha": "0"}, r"trend.alpha = 0.0: must be in \(0, 1\]"),
        ({"default.regression.extrapolation": "-0.1"}, r"need min_windows >= 1, ridge >= 0 and extrapolation >= 0"),
        ({"warmup_windows": "3"}, r"model override warmup_windows='3': expected <machine type or default>.<key>"),
    ],
)
def test_bad_overrides_name_key_and_value(override: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpecs({"default": {}}).with_overrides(override)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[default\n")
    with pytest.raises(ValueError, match="broken.toml"):
        load_model_specs(broken)
    nodefault = tmp_path / "nodefault.toml"
    nodefault.write_text("[pump]\nalpha = 0.1\n")
    with pytest.raises(ValueError, match=r"nodefault.toml: needs a \[default\] table"):
        load_model_specs(nodefault)
    with pytest.raises(ValueError, match="missing.toml"):
        load_model_specs(tmp_path / "missing.toml")


def test_parse_grid_is_the_cartesian_product() -> None:
    assert parse_grid(["a=1,2", "b=x"]) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]
    assert parse_grid(["a=1,2", "b=x,y"]) == [
        {"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "2", "b": "x"}, {"a": "2", "b": "y"}]
    assert parse_grid([]) == [{}]


@pytest.mark.parametrize("item", ["a", "=1", "a=", "a=1,,2"])
def test_parse_grid_rejects_bad_items(item: str) -> None:
    with pytest.raises(ValueError, match="expected key=value1,value2"):
        parse_grid([item])


def test_parse_grid_rejects_repeated_keys() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_grid(["a=1", "a=2"])
