"""Command-line argument forms that need no broker: `replay --grid` as the README writes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import connectors.replay_sources
import models.spec
from plantpulse.cli import app
from plantpulse.settings import Settings
from tests.processes import PLANTPULSE, flow_env

GRID = ["default.threshold.floor=6,8", "pump.alpha=0.02,0.05"]
POINTS = [
    {"default.threshold.floor": a, "pump.alpha": b} for a in ("6", "8") for b in ("0.02", "0.05")
]


class _Stop(Exception):
    """Ends the command once its arguments are parsed (the replay itself is not under test here)."""


def _parsed(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[str, list[dict[str, str]]]:
    """(SOURCE, grid points) that `plantpulse replay ARGS` hands on, taken from `open_input` and `parse_grid`."""
    seen: dict[str, object] = {}
    real_parse_grid = models.spec.parse_grid

    def open_input(source: str, **_: object) -> object:
        seen["source"] = source
        return object()

    def parse_grid(items: list[str]) -> list[dict[str, str]]:
        seen["points"] = real_parse_grid(items)
        raise _Stop

    monkeypatch.setattr(connectors.replay_sources, "open_input", open_input)
    monkeypatch.setattr(models.spec, "parse_grid", parse_grid)
    result = CliRunner().invoke(app, ["replay", *args])
    assert isinstance(result.exception, _Stop), (result.exit_code, result.output)
    return seen["source"], seen["points"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    "args",
    [
        ["run.parquet", "--grid", *GRID, "--out", "report"],  # the README's form
        ["run.parquet", "--grid", GRID[0], "--grid", GRID[1], "--out", "report"],  # repeated
        ["--grid", *GRID, "run.parquet", "--out", "report"],  # SOURCE after the items
        ["run.parquet", "--out", "report", "--grid", " ".join(GRID)],  # one quoted value
        ["run.parquet", f"--grid={GRID[0]}", GRID[1]],
    ],
    ids=["one-flag", "repeated", "source-last", "quoted", "equals"],
)
def test_grid_forms_give_the_same_points(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    assert _parsed(monkeypatch, args) == ("run.parquet", POINTS)


def test_grid_without_items_and_stray_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parsed(monkeypatch, ["lake/dt=2026-11-26"]) == ("lake/dt=2026-11-26", [{}])  # a path with "=" is no item
    runner = CliRunner()
    for args, message in (
        (["run.parquet", "pump.alpha=0.02"], "grid items key=v1,v2 follow --grid"),
        (["--grid", *GRID], "give at least one SOURCE"),  # several SOURCEs are fine (below); none is not
    ):
        result = runner.invoke(app, ["replay", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_several_sources_with_a_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    floors = [{"default.threshold.floor": "6"}, {"default.threshold.floor": "8"}]
    assert _parsed(monkeypatch, ["a.csv", "--grid", GRID[0], "dir"]) == (["a.csv", "dir"], floors)


def test_readme_grid_syntax_replays_every_point(tmp_path: Path) -> None:
    """End to end, as a user types it: `plantpulse replay SOURCE --grid a=1,2 b=3,4 --out DIR`."""
    lines = ["machine_id,ts,temperature,vibration,rpm,power,machine_type"]
    lines += [f"M{m},{1_764_000_000_000 + s * 1000},{60 + m + s % 3},{2 + 0.01 * (s % 5)},2900,30,pump"
              for s in range(120) for m in range(2)]
    source = tmp_path / "small.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report"
    done = subprocess.run([*PLANTPULSE, "replay", str(source), "--grid", *GRID, "--out", str(out)],
                          env=flow_env(Settings(data_dir=tmp_path), tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.glob("run-*")) == ["run-01", "run-02", "run-03", "run-04"]
    for number, point in enumerate(POINTS, start=1):
        assert f"run {number}: {point}" in done.stdout, done.stdout
