"""Fleet metadata the flow needs: each machine's type, which selects its rules, and site (for incidents)."""

from __future__ import annotations

import csv
from pathlib import Path


class FleetFileError(ValueError):
    """The machines CSV is unreadable or lacks the expected columns."""


def load_machine_types(path: Path) -> dict[str, str]:
    """machine_id -> machine_type from a CSV with at least those two columns; {} when the file is absent."""
    return _column(path, "machine_type", required=True)


def load_machine_sites(path: Path) -> dict[str, str]:
    """machine_id -> site from the same CSV (incidents carry it for routing); {} without a `site` column."""
    return _column(path, "site", required=False)


def _column(path: Path, column: str, required: bool) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"machine_id", column} - set(reader.fieldnames or [])
            if missing and required:
                raise FleetFileError(f"machines file {path}: missing column(s) {sorted(missing)}")
            if missing:
                return {}
            return {row["machine_id"]: row[column] or "" for row in reader}
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise FleetFileError(f"machines file {path}: {error}") from error
