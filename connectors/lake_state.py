"""A lake sink partition's snapshotted state and its roll-up thresholds (see `connectors.lake`).

Kept apart from the sink so the state's shape is easy to review: it holds counters, never rows.
`CarriedHour` stays importable from `connectors.lake` too, where snapshots of earlier releases name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plantpulse.settings import Settings


@dataclass(frozen=True)
class FileThresholds:
    """When a partition's small files of an hour are rolled up into one (checked at each snapshot)."""

    max_rows: int = 250_000
    max_bytes: int = 64 * 2**20
    max_age_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FileThresholds:
        return cls(settings.lake_file_max_rows, settings.lake_file_max_bytes, settings.lake_file_max_age_seconds)


@dataclass(frozen=True)
class PendingHour:
    """This partition's small files of one event hour that no roll-up merged yet (counters only)."""

    files: int = 0
    rows: int = 0
    nbytes: int = 0  # uncompressed Arrow size, compared with max_bytes
    since_s: float = 0.0  # wall-clock time the oldest of them was written


@dataclass
class CarriedHour:
    """Rows carried inside the snapshot by earlier releases; read once on resume, never written again."""

    chunks: list[bytes] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since_s: float = 0.0


@dataclass
class LakeState:
    """A lake partition's snapshot: the next sequence to write, and its small files waiting for a roll-up.

    `carried` is only ever non-empty in snapshots of earlier releases (rows kept in the state); a resume
    writes those rows at its first snapshot."""

    seq: int
    carried: dict[int, CarriedHour] = field(default_factory=dict)
    pending: dict[int, PendingHour] = field(default_factory=dict)  # event hour (ms // 3_600_000) -> files
