"""Transport imperfections: duplicates, reordering, late delivery, clock skew and malformed messages.

Rates are fractions of clean readings (`clock_skew`: fraction of machines). Each clean reading gets at
most one of `duplicates` (an extra copy sent 0-10 s of event time later), `out_of_order` (the reading
itself held back by up to 1 s of event time, so the machine's next reading overtakes it), `late` (held
back 30-45 s of event time) or `malformed` (an *extra*, corrupted message derived from it, sent right after
it — the clean reading still arrives, so the valid stream stays complete).

Every malformed message fails in exactly one way, named by its expected dead-letter reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
import numpy as np

from plantpulse.schema import SCHEMA_VERSION, SENSORS

IMPERFECTION_KINDS: tuple[str, ...] = ("duplicates", "out_of_order", "late", "clock_skew", "malformed")
DEFAULT_IMPERFECTION_RATE = 0.01  # for a bare name in a spec, e.g. "duplicates,late"
OUT_OF_ORDER_MAX_MS = 1_000  # never more than the flow's default allowed lateness of 1 s: never late
LATE_DELAY_MS = (30_000, 45_000)
DUPLICATE_DELAY_MS = 10_000
CLOCK_SKEW_MS = (1_000, 5_000)  # absolute offset of a skewed machine's clock, either sign
FUTURE_OFFSET_MS = 86_400_000  # ts_future: one day ahead
PAST_OFFSET_MS = 30 * 86_400_000  # ts_too_old: thirty days behind
OVERSIZED_PADDING = 5_000  # bytes of filler: well past the 4096-byte payload limit

# Malformed kind -> the dead-letter reason the flow must give it.
MALFORMED_KINDS: dict[str, str] = {
    "not_json": "not_json",
    "truncated": "not_json",
    "missing_field": "schema",
    "mistyped": "schema",
    "nan": "non_finite",
    "out_of_range": "out_of_range",
    "bad_machine_id": "bad_machine_id",
    "bad_status": "bad_status",
    "ts_future": "ts_future",
    "ts_too_old": "ts_too_old",
    "oversized": "oversized",
    "bad_version": "unsupported_version",
}
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(dict.fromkeys(MALFORMED_KINDS.values()))

# Per-message `imperfection` values, indexed by the code the simulator carries.
NONE, DUPLICATE, LATE, OUT_OF_ORDER = 0, 1, 2, 3
MALFORMED_BASE = 4
IMPERFECTION_LABELS: tuple[str, ...] = ("", "duplicate", "late", "out_of_order") + tuple(
    f"malformed:{kind}" for kind in MALFORMED_KINDS
)
EXPECTED_REASONS: tuple[str | None, ...] = (None,) * MALFORMED_BASE + tuple(MALFORMED_KINDS.values())
_MALFORMED_NAMES = tuple(MALFORMED_KINDS)
# `Imperfector._edges` bins, in order, and the "no imperfection" remainder.
_CATEGORY_OF_BIN = np.array([DUPLICATE, LATE, OUT_OF_ORDER, MALFORMED_BASE, NONE], dtype=np.int16)


def parse_imperfections(spec: str | None) -> dict[str, float]:
    """`"duplicates=0.01,late=0.001"` (a bare name means 0.01), `"none"` or `""` -> validated rates."""
    rates: dict[str, float] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part or part == "none":
            continue
        name, _, value = part.partition("=")
        try:
            rates[name.strip()] = float(value) if value else DEFAULT_IMPERFECTION_RATE
        except ValueError:
            raise ValueError(f"imperfection {part!r}: rate {value!r} is not a number") from None
    return validate_imperfections(rates)


def validate_imperfections(rates: Mapping[str, float] | None) -> dict[str, float]:
    """Check names and rates; returns a dict with every kind of IMPERFECTION_KINDS (missing -> 0)."""
    rates = dict(rates or {})
    unknown = sorted(set(rates) - set(IMPERFECTION_KINDS))
    if unknown:
        raise ValueError(f"unknown imperfection(s) {unknown}; expected some of {list(IMPERFECTION_KINDS)}")
    for name, rate in rates.items():
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"imperfection {name}: rate must be a number within [0, 1], got {rate!r}")
    full = {name: float(rates.get(name, 0.0)) for name in IMPERFECTION_KINDS}
    per_reading = full["duplicates"] + full["out_of_order"] + full["late"] + full["malformed"]
    if per_reading > 1.0:
        raise ValueError(f"duplicates + out_of_order + late + malformed rates add up to {per_reading} > 1")
    return full


class Imperfector:
    """Decides per clean reading which imperfection it gets, with which delay (in ticks)."""

    def __init__(
        self, rates: Mapping[str, float] | None, n_machines: int, rng: np.random.Generator, interval_ms: float
    ) -> None:
        self.rates = validate_imperfections(rates)
        self.rng = rng
        self.interval_ms = interval_ms
        self.ooo_max_ticks = int(OUT_OF_ORDER_MAX_MS // interval_ms)
        if self.rates["out_of_order"] > 0 and self.ooo_max_ticks < 1:
            raise ValueError(
                f"out_of_order needs interval_ms <= {OUT_OF_ORDER_MAX_MS} (one tick of delay must stay within "
                f"{OUT_OF_ORDER_MAX_MS} ms of event time), got interval_ms={interval_ms:g}"
            )
        # Skewed machines: a constant offset of 1-5 s either way (seq still increases, order is intact).
        skew_rng = np.random.default_rng(rng.integers(2**63))
        skewed = skew_rng.random(n_machines) < self.rates["clock_skew"]
        magnitude = skew_rng.integers(CLOCK_SKEW_MS[0], CLOCK_SKEW_MS[1] + 1, size=n_machines)
        sign = np.where(skew_rng.random(n_machines) < 0.5, -1, 1)
        self.skew_ms = np.where(skewed, sign * magnitude, 0).astype(np.int64)
        self._edges = np.cumsum([self.rates[k] for k in ("duplicates", "late", "out_of_order", "malformed")])

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For `n` readings: (category, delay in ticks, malformed kind index).

        Category: NONE, DUPLICATE, LATE, OUT_OF_ORDER, or MALFORMED_BASE for a malformed extra.
        The same numbers are drawn whatever the rates (even all 0), so the random stream never depends on them.
        """
        u, d, m = self.rng.random((3, n))
        category = _CATEGORY_OF_BIN[np.searchsorted(self._edges, u, side="right")]
        dt = self.interval_ms
        delay = np.select(
            [category == DUPLICATE, category == LATE, category == OUT_OF_ORDER],
            [
                np.floor(d * DUPLICATE_DELAY_MS / dt),
                np.ceil((LATE_DELAY_MS[0] + d * (LATE_DELAY_MS[1] - LATE_DELAY_MS[0])) / dt),
                1 + np.floor(d * max(self.ooo_max_ticks, 1)).clip(0, max(self.ooo_max_ticks, 1) - 1),
            ],
            0,
        ).astype(np.int64)
        kind = np.minimum((m * len(_MALFORMED_NAMES)).astype(np.int16), len(_MALFORMED_NAMES) - 1)
        return category, delay, kind


def _encode(document: dict) -> bytes:
    return msgspec.json.encode(document)


def corrupt(kind: str, reading: dict, rng: np.random.Generator) -> bytes:
    """The malformed message of `kind` derived from a clean `reading` (wire field order, None for null)."""
    doc = dict(reading)
    pick = int(rng.integers(1 << 30))
    if kind == "not_json":
        if pick % 2:
            return f"{doc['machine_id']};{doc['ts']};{doc['temperature']};{doc['status']}".encode()
        return b"\x00\x9c\xffPP\x01\x02" + doc["machine_id"].encode() + b"\xfe\x00"  # a binary frame
    if kind == "truncated":
        full = _encode(doc)
        return full[: 1 + pick % (len(full) - 1)]  # any proper prefix of an object is invalid JSON
    if kind == "missing_field":
        del doc[("machine_id", "ts", "seq", "status")[pick % 4]]
    elif kind == "mistyped":
        field, value = (("temperature", "hot"), ("seq", str(doc["seq"])), ("ts", "2025-11-24T16:00:00Z"))[pick % 3]
        doc[field] = value
    elif kind == "nan":
        sensor = SENSORS[pick % len(SENSORS)]
        literal = ("NaN", "Infinity", "-Infinity")[(pick // len(SENSORS)) % 3]
        doc[sensor] = 0.5  # placeholder replaced by a literal JSON does not allow
        return _encode(doc).replace(f'"{sensor}":0.5'.encode(), f'"{sensor}":{literal}'.encode())
    elif kind == "out_of_range":
        field, value = (("rpm", -5.0), ("temperature", 5000.0), ("pressure", -1.0), ("vibration", 999.0))[pick % 4]
        doc[field] = value
    elif kind == "bad_machine_id":
        doc["machine_id"] = ("bad id!", f"{doc['machine_id']}/../x", "M" * 80)[pick % 3]
    elif kind == "bad_status":
        doc["status"] = ("exploded", "on fire", "unknown")[pick % 3]
    elif kind == "ts_future":
        doc["ts"] = doc["ts"] + FUTURE_OFFSET_MS
    elif kind == "ts_too_old":
        doc["ts"] = doc["ts"] - PAST_OFFSET_MS
    elif kind == "oversized":
        doc["firmware_dump"] = "A" * (OVERSIZED_PADDING + pick % 1000)
    elif kind == "bad_version":
        doc["v"] = SCHEMA_VERSION + 1
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {list(MALFORMED_KINDS)}")
    return _encode(doc)


def malformed_name(index: int) -> str:
    """Malformed kind name for the index `Imperfector.draw` returned."""
    return _MALFORMED_NAMES[index]
