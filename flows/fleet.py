"""Fleet metadata the flow needs: each machine's type, which selects its rules."""

from __future__ import annotations

import csv
from pathlib import Path


class FleetFileError(ValueError):
    """The machines CSV is unreadable or lacks the expected columns."""


def load_machine_types(path: Path) -> dict[str, str]:
    """machine_id -> machine_type from a CSV with at least those two columns; {} when the file is absent."""
    if not path.exists():
        return {}
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"machine_id", "machine_type"} - set(reader.fieldnames or [])
            if missing:
                raise FleetFileError(f"machines file {path}: missing column(s) {sorted(missing)}")
            return {row["machine_id"]: row["machine_type"] for row in reader}
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise FleetFileError(f"machines file {path}: {error}") from error
