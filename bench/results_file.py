"""`bench/results/latest.json`: every section says which run measured it, and a partial run keeps older
sections only under `previous`.

Layout (format 2)::

    {
      "format": 2,
      "run": {<provenance of the run that wrote the file>, "sections": [the sections it measured]},
      "engine": {"provenance": {...}, ...figures...},        # sections measured by that run
      "previous": {                                          # sections it did not measure, kept from
        "end_to_end": {"provenance": {...}, ...figures...}   # earlier runs, each with its own provenance
      }
    }

A section's `provenance`:

- `date`: UTC ISO time at which its measurement ended;
- `commit`: the full hash of HEAD, or null when unknown; `dirty`: whether tracked or untracked files
  differed from HEAD (results files excluded; null when unknown), with `dirty_paths` (the first 20);
- `command`: the command line of the run; `reproduce`: the command that measures this section alone with
  the same parameters;
- `machine`: the CPU count it ran on.

Sections migrated from the format-1 file (2026-11-23) carry what could be established from the run files
and git history instead (`note`, `results_committed_in`), with null where it could not.

The timestamped `run-<UTC time>.json` written beside it holds only what that run measured.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

FORMAT = 2
SECTIONS = ("engine", "recovery_cost", "replay", "model_quality", "tuning", "end_to_end", "soak", "incident_noise",
            "incident_latency", "dashboard_queries", "real_data", "sim_realism", "device_auth",
            "live_scaling")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LATEST = RESULTS / "latest.json"
_RESULTS_PREFIX = "bench/results/"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def git_state(root: Path = ROOT) -> dict:
    """HEAD and whether the work tree differs from it (bench/results/ excluded: results do not change what
    is measured). Nulls when git or the repository is unavailable."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:]]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "dirty_paths": []}
    changed = [path for path in changed if not path.strip('"').startswith(_RESULTS_PREFIX)]
    return {"commit": commit, "dirty": bool(changed), "dirty_paths": changed[:20]}


def command_line() -> str:
    """This run's command, as one would type it again."""
    return shlex.join(["python", "-m", "bench.run", *sys.argv[1:]])


def provenance(git: dict, reproduce: str) -> dict:
    """Provenance of a section whose measurement ends now (see the module docstring)."""
    return {
        "date": utc_now(),
        **git,
        "command": command_line(),
        "reproduce": reproduce,
        "machine": {"cores": os.cpu_count()},
    }


def load(path: Path = LATEST) -> dict:
    """The results file, or an empty format-2 file when there is none yet."""
    if not path.exists():
        return {"format": FORMAT, "previous": {}}
    results = json.loads(path.read_text())
    if results.get("format") != FORMAT:
        raise ValueError(f"{path}: format {results.get('format')!r}, expected {FORMAT} (see bench/results_file.py)")
    return results


def sections(results: dict) -> dict[str, dict]:
    """Every section of a results file, measured by its last run or kept under `previous`."""
    found = {name: results[name] for name in SECTIONS if name in results}
    for name, section in results.get("previous", {}).items():
        if name in found:
            raise ValueError(f"section {name!r} is both measured by the last run and under 'previous'")
        found[name] = section
    return found


def merge(old: dict, measured: dict[str, dict], run: dict) -> dict:
    """The new latest.json: `measured` at the top level, every other known section under `previous` with
    the provenance it already had. A section without provenance is refused rather than kept anonymous."""
    unknown = set(measured) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown result sections {sorted(unknown)}; known: {SECTIONS}")
    previous = {}
    for name, section in sections(old).items():
        if name in measured:
            continue
        if "provenance" not in section:
            raise ValueError(f"section {name!r} of the old results has no provenance; refusing to carry it")
        previous[name] = section
    return {"format": FORMAT, "run": {**run, "sections": list(measured)}, **measured,
            "previous": {name: previous[name] for name in SECTIONS if name in previous}}


def write(measured: dict[str, dict], run: dict, stamp: str, results_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Writes latest.json (merged) and run-`stamp`.json (only this run's sections); returns both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    latest = results_dir / "latest.json"
    merged = merge(load(latest), measured, run)
    run_file = results_dir / f"run-{stamp}.json"
    run_file.write_text(json.dumps({"format": FORMAT, "run": merged["run"], **measured}, indent=2) + "\n")
    latest.write_text(json.dumps(merged, indent=2) + "\n")
    return latest, run_file
