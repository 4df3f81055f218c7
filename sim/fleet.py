"""Fleet metadata: which machines exist, where they stand and what they are.

The fleet is a pure function of `(n_machines, seed)` so a recording, the machines CSV handed to the flow
and a later re-run all agree on every machine's type without sharing any state.
"""

from __future__ import annotations

import csv
import io
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plantpulse.schema import MACHINE_ID_PATTERN

MACHINE_TYPES: tuple[str, ...] = ("pump", "compressor", "cnc", "conveyor")
# Rough mix of a discrete-manufacturing plant: many pumps and CNCs, fewer compressors.
_TYPE_WEIGHTS = np.array([0.35, 0.15, 0.30, 0.20])
FLEET_CSV_COLUMNS: tuple[str, ...] = ("machine_id", "site", "line", "machine_type")
_MACHINES_PER_SITE = 2_000  # a site beyond this gets split so line numbers stay readable
_MAX_SITES = 26  # plant-a .. plant-z; bigger fleets just get bigger sites
_LINE_SIZE = (12, 40)  # machines per production line, inclusive
_ID_RE = re.compile(MACHINE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Machine:
    """One machine of the fleet as listed in the machines CSV."""

    machine_id: str
    site: str
    line: str
    machine_type: str

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.machine_id):
            raise ValueError(f"machine_id {self.machine_id!r} does not match {MACHINE_ID_PATTERN}")
        if self.machine_type not in MACHINE_TYPES:
            raise ValueError(f"machine {self.machine_id}: unknown machine_type {self.machine_type!r}")


def machine_id_for(index: int) -> str:
    """The id of the `index`-th machine (1-based): `M00001`, ..., `M123456` (zero-padded to 5+ digits)."""
    if index < 0:
        raise ValueError(f"machine index must be >= 0, got {index}")
    return f"M{index:05d}"


def build_fleet(n_machines: int, seed: int = 0) -> list[Machine]:
    """A deterministic fleet of `n_machines`: same `(n_machines, seed)` -> same machines, types and lines.

    Machines are spread over sites `plant-a`, `plant-b`, ... (about 2,000 machines each, at most 26 sites)
    and production lines `line-01`, ... of 12-40 machines within each site.
    """
    if n_machines < 1:
        raise ValueError(f"n_machines must be >= 1, got {n_machines}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1EE7]))
    n_sites = min(_MAX_SITES, -(-n_machines // _MACHINES_PER_SITE))
    types = rng.choice(len(MACHINE_TYPES), size=n_machines, p=_TYPE_WEIGHTS)
    # Contiguous id ranges per site and per line mirror how plants number their assets.
    site_sizes = np.full(n_sites, n_machines // n_sites)
    site_sizes[: n_machines % n_sites] += 1
    fleet: list[Machine] = []
    index = 0
    for site_number, site_size in enumerate(site_sizes.tolist()):
        site = f"plant-{chr(ord('a') + site_number)}"
        line_number, left = 0, site_size
        while left > 0:
            line_number += 1
            line_size = min(left, int(rng.integers(_LINE_SIZE[0], _LINE_SIZE[1] + 1)))
            line = f"line-{line_number:02d}"
            for _ in range(line_size):
                fleet.append(Machine(machine_id_for(index + 1), site, line, MACHINE_TYPES[types[index]]))
                index += 1
            left -= line_size
    return fleet


def write_fleet_csv(path: Path, fleet: list[Machine]) -> Path:
    """Write the machines CSV (`machine_id,site,line,machine_type`) the flow reads; returns `path`.

    Atomic (a temporary file in the same directory, then a rename): a flow starting meanwhile reads the old
    fleet or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(FLEET_CSV_COLUMNS)
    writer.writerows((m.machine_id, m.site, m.line, m.machine_type) for m in fleet)
    # Not mkstemp: its 0600 mode would survive the rename, and the flow may run as another user.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("x", newline="") as out:
            out.write(text.getvalue())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def sync_fleet_csv(path: Path, fleet: list[Machine]) -> str | None:
    """Make the machines CSV at `path` list exactly `fleet` (rewritten atomically only when it differs).

    Machine types depend on the simulator's seed and fleet size, so a file left by an earlier run with
    other ones would give the flow wrong types. Returns None when the file was missing or already listed
    this fleet (in any order), else a description of the different fleet it replaced.
    """
    path = Path(path)
    if not path.exists():
        write_fleet_csv(path, fleet)
        return None
    wanted = {m.machine_id: m for m in fleet}
    try:
        listed = {m.machine_id: m for m in read_fleet_csv(path)}
    except (OSError, ValueError, TypeError, csv.Error, UnicodeDecodeError) as error:
        # TypeError: a row short of a column (None where a string belongs). An unreadable file is as wrong
        # for the flow as a different fleet.
        write_fleet_csv(path, fleet)
        return f"a file that is not a readable fleet ({error})"
    if listed == wanted:
        return None
    differing = sum(listed.get(machine_id) != wanted.get(machine_id) for machine_id in listed.keys() | wanted.keys())
    write_fleet_csv(path, fleet)
    return f"a different fleet of {len(listed)} machines ({differing} machine ids missing, extra or of another type/place)"


def read_fleet_csv(path: Path) -> list[Machine]:
    """Read a machines CSV written by `write_fleet_csv` (or by hand with the same columns)."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(FLEET_CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"machines file {path}: missing column(s) {sorted(missing)}")
        return [Machine(row["machine_id"], row["site"], row["line"], row["machine_type"]) for row in reader]
