"""Imports run one way, like floors of a house: ground (settings, reading schema, models) <- connectors
<- flows, sim <- CLI/demo (the roof, imported by nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUND = {"plantpulse.settings", "plantpulse.schema", "plantpulse.output", "plantpulse.stopping",
          "plantpulse.device_signing"}
ALLOWED: dict[str, set[str]] = {
    "models": GROUND | {"models"},
    "connectors": GROUND | {"connectors"},
    "flows": GROUND | {"models", "connectors", "flows"},
    "sim": GROUND | {"connectors", "sim"},
    "notify": GROUND | {"connectors", "notify"},
    "grafana": GROUND | {"connectors", "grafana"},
}
ROOF = {"plantpulse.cli", "plantpulse.demo"}


def _our_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    ours = {"plantpulse", "models", "connectors", "flows", "sim", "notify", "grafana", "bench"}
    return {n for n in names if n.split(".")[0] in ours}


def _allowed(imported: str, allowed: set[str]) -> bool:
    return any(imported == a or imported.startswith(a + ".") for a in allowed)


def test_imports_run_one_way() -> None:
    violations = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            for imported in _our_imports(path):
                if not _allowed(imported, allowed):
                    violations.append(f"{path.relative_to(ROOT)} imports {imported}")
    for module in ("settings", "schema", "stopping", "device_signing"):
        for imported in _our_imports(ROOT / "plantpulse" / f"{module}.py"):
            violations.append(f"plantpulse/{module}.py imports {imported}")
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or path.parent.name == "tests" or path.stem in {"cli", "demo"}:
            continue
        for imported in _our_imports(path):
            if imported in ROOF:
                violations.append(f"{path.relative_to(ROOT)} imports the roof module {imported}")
    assert violations == []
