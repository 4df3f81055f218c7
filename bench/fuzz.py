"""`make fuzz`: hostile input through the decode step, with an exact account per reason.

    python -m bench.fuzz                      # 100,000 generated messages, unsigned and signed (under a minute)
    python -m bench.fuzz --inputs 1000000 --seed 7

Every generated message comes with the outcome it must get, decided by how it was made, not by asking the
decoder: a reading made valid must be accepted, one with a NaN sensor must be dead-lettered `non_finite`, and
so on (`CATEGORIES`; each message breaks exactly one rule, so no precedence between reasons is involved).
The messages are cut into polls of random size and mix (all valid, a few bad, mostly bad) so both of the
decoder's paths run: the batch reader and the per-message look that names culprits. Two passes: `unsigned`
(DEVICE_AUTH=off) and `signed` (DEVICE_AUTH=required: every message signed by its machine's key, a quarter
tampered with, `bench.fuzz_signatures`). The run stops at the first message whose outcome differs or at any
exception, and writes `bench/results/fuzz.json`: per pass received, accepted and dead-lettered per reason
(received = accepted + every dead letter; duplicates arise only in the window step, see
tests/test_hostile_input.py), crashes (0 in any written file: a crash stops the run), time and peak RSS; and
the inputs that still break the decoder (`KNOWN_DECODE_BUGS`, each run in a child process, since one of them
kills the process).

The same generators feed `tests/test_hostile_input.py` (a smaller sample in `make test`).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from bench.fuzz_known_bugs import DECODE_BUGS_FIXED, KNOWN_DECODE_BUGS, known_bug_outcomes
from bench.fuzz_signatures import DeviceKeys, signed
from bench.results_file import git_state, provenance
from connectors.device_registry import RegistryWatcher
from flows.decode import BatchDecoder, ValidationLimits
from flows.device_auth import SignatureCheck
from plantpulse.schema import CHANNEL_LIMIT, MAX_CHANNELS, MAX_SEQ, PHYSICAL_LIMITS, SENSORS, STATUSES, RawBatch

NOW_MS = 1_764_000_000_000  # the wall clock every poll is decoded at
LIMITS = ValidationLimits()  # the defaults the flow runs with: 4096-byte payloads, 5 min skew, 7 days age
ACCEPTED = "accepted"
RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"

# Strings an attacker would try in any text field: SQL, markup, shell, format strings, unicode tricks.
NASTY_TEXT = (
    "'; DROP TABLE readings; --", "\" OR 1=1 --", "M1' UNION SELECT * FROM system.users --", "<script>x</script>",
    "$(rm -rf /)", "%s%s%n", "{0}{1}", "\u202eM1", "M\u00e91", "\U0001f4a5", "M1\x00", "M1\n", "\t", " ", "",
    "\ud7ff", "\\", "\"", "M" * 65, "null", "NaN", "../../etc/passwd", "M1\u200b", "\x1b[31m",
)
_ID_FIRST = string.ascii_letters + string.digits
_ID_REST = _ID_FIRST + "_.:-"
# The fleet valid readings come from: ids of every length and character the pattern allows. A fixed fleet keeps
# the signed run's key registry at fleet size (tests/test_hostile_input.py throws arbitrary ids at decode).
_FLEET_RNG = random.Random(0)
MACHINES = tuple(_FLEET_RNG.choice(_ID_FIRST) + "".join(_FLEET_RNG.choices(_ID_REST, k=_FLEET_RNG.randint(0, 63)))
                 for _ in range(1000))


@dataclass(frozen=True)
class Case:
    """One generated message and the outcome it must get (`ACCEPTED` or a dead-letter reason)."""

    value: bytes
    expected: str
    category: str


def valid_reading(rng: random.Random) -> dict:
    """A reading every rule accepts, with the optional parts (sensors, v, channels, extra fields) varied."""
    age, skew = LIMITS.max_event_age_ms, LIMITS.max_future_skew_ms
    reading: dict = {
        "machine_id": rng.choice(MACHINES),
        "ts": rng.randint(NOW_MS - age + 60_000, NOW_MS + skew - 1000),
        "seq": rng.choice([0, 1, MAX_SEQ - 1, rng.randrange(MAX_SEQ)]),
        "status": rng.choice(STATUSES),
    }
    for sensor in SENSORS:
        low, high = PHYSICAL_LIMITS[sensor]
        roll = rng.random()
        if roll < 0.7:
            reading[sensor] = rng.choice([low, high, rng.uniform(low, high), round(rng.uniform(low, high))])
        elif roll < 0.85:
            reading[sensor] = None
    if rng.random() < 0.5:
        reading["v"] = 1
    if rng.random() < 0.2:
        reading["channels"] = {f"c{i}": rng.choice([None, rng.uniform(-CHANNEL_LIMIT, CHANNEL_LIMIT)])
                               for i in range(rng.randint(0, MAX_CHANNELS))}
    if rng.random() < 0.4:  # extra fields are ignored, whatever they hold: SQL, unicode, nesting
        reading[rng.choice(["note", "firmware", "x", "\u00fc", "machine id"])] = rng.choice(
            [rng.choice(NASTY_TEXT), nested(rng.randint(1, 60)), {"a": [1, {"b": None}]}, 10**30, -1e300, True])
    keys = list(reading)
    rng.shuffle(keys)
    return {key: reading[key] for key in keys}


def nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def dumps(rng: random.Random, reading: object) -> bytes:
    """JSON text as devices might write it: compact or indented, escaped or raw UTF-8."""
    indent = rng.choice([None, None, 2])
    return json.dumps(reading, indent=indent, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode()


def _fits(value: bytes) -> bool:
    return len(value) <= LIMITS.max_payload_bytes


def _valid(rng: random.Random) -> tuple[bytes, str]:
    return dumps(rng, valid_reading(rng)), ACCEPTED


def _with(rng: random.Random, field: str, value: object) -> bytes:
    reading = valid_reading(rng)
    reading.pop("channels", None)  # a bad channel would be a second fault
    reading[field] = value
    return dumps(rng, reading)


def _not_json(rng: random.Random) -> tuple[bytes, str]:
    whole = dumps(rng, valid_reading(rng))
    roll = rng.random()
    if roll < 0.4:  # cut short: a prefix of an object without its closing brace is never JSON
        return whole[: rng.randrange(whole.rindex(b"}"))], NOT_JSON
    if roll < 0.6:  # two documents, or one with trailing garbage
        return whole + rng.choice([b" ", b""]) + rng.choice([whole, b"x", b"}", b",", b"\x00"]), NOT_JSON
    # bytes that cannot start a JSON text (a control character), then anything
    garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    return rng.choice([b"\x00", b"\x01", b"\x7f", b"x", b"}", b"]"]) + garbage.replace(b"\n", b" "), NOT_JSON


def _schema(rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.3:  # a required field missing, or null
        reading = valid_reading(rng)
        field = rng.choice(["machine_id", "ts", "seq", "status"])
        if rng.random() < 0.5:
            del reading[field]
        else:
            reading[field] = None
        return dumps(rng, reading), SCHEMA
    if roll < 0.7:  # a field of the wrong type
        field = rng.choice(["machine_id", "ts", "seq", "status", "v", *SENSORS])
        text = field in ("machine_id", "status")
        wrong = rng.choice([[1], {"a": 1}, True, False] + ([12, 1.5] if text else ["1", "x", 1.5 if field in (
            "ts", "seq", "v") else "NaN"]))
        return _with(rng, field, wrong), SCHEMA
    # valid JSON that is not an object: numbers, strings, arrays (deeply nested within the size limit), booleans
    # (`null` is left out: KNOWN_DECODE_BUGS)
    depth = rng.randint(1, 2000)
    other = rng.choice([b"1", b"-0.5e3", b'"M1"', b"true", b"false", b"[]", b"[" * depth + b"]" * depth,
                        b'[{"machine_id": "M1"}]', json.dumps(rng.choice(NASTY_TEXT)).encode()])
    return other, SCHEMA


def _non_finite(rng: random.Random) -> tuple[bytes, str]:
    literal = rng.choice(["NaN", "Infinity", "-Infinity"])
    sensor = rng.choice(SENSORS)
    reading = valid_reading(rng)
    reading.pop("channels", None)
    reading[sensor] = 0.0
    return json.dumps(reading).replace(f'"{sensor}": 0.0', f'"{sensor}": {literal}').encode(), NON_FINITE


def _out_of_range(rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.2:
        return _with(rng, "seq", rng.choice([-1, -(2**63), MAX_SEQ, 2**63 - 1])), OUT_OF_RANGE
    sensor = rng.choice(SENSORS)
    low, high = PHYSICAL_LIMITS[sensor]
    value = rng.choice([low - 1e-6 * max(1.0, abs(low)), high * (1 + 1e-9) + 1e-9, -1e300, 1e300, high * 10 + 1])
    return _with(rng, sensor, value), OUT_OF_RANGE


def _bad_machine_id(rng: random.Random) -> tuple[bytes, str]:
    bad = rng.choice([*[t for t in NASTY_TEXT if t not in ("null", "NaN")], "_M1", "-M1", ".M1", ":M1",
                      "M1 M2", "M/1", "M" + "1" * 64, "Ｍ1", "M1;"])
    return _with(rng, "machine_id", bad), BAD_MACHINE_ID


def _bad_status(rng: random.Random) -> tuple[bytes, str]:
    bad = rng.choice([*NASTY_TEXT, "Running", "RUNNING", "running ", "exploded", "runn\u0131ng", "ok"])
    return _with(rng, "status", bad), BAD_STATUS


def _ts_future(rng: random.Random) -> tuple[bytes, str]:
    ts = rng.choice([NOW_MS + LIMITS.max_future_skew_ms + 1, 2**63 - 1, rng.randint(NOW_MS + 10**9, 2**62)])
    return _with(rng, "ts", ts), TS_FUTURE


def _ts_too_old(rng: random.Random) -> tuple[bytes, str]:
    ts = rng.choice([NOW_MS - LIMITS.max_event_age_ms - 1, 0, -1, -(2**63), rng.randint(-(2**62), 10**12)])
    return _with(rng, "ts", ts), TS_TOO_OLD


def _unsupported_version(rng: random.Random) -> tuple[bytes, str]:
    return _with(rng, "v", rng.choice([0, 2, -1, 2**63 - 1, -(2**63), rng.randint(3, 10**6)])), UNSUPPORTED_VERSION


def _bad_channels(rng: random.Random) -> tuple[bytes, str]:
    reading = valid_reading(rng)
    roll = rng.random()
    if roll < 0.3:
        channels: object = {rng.choice(["Flow", "flow rate", "1flow", "a" * 41, "temperature", "rpm", "",
                                        "x'; DROP TABLE t;--", "fl\u00f6w"]): 1.0}
    elif roll < 0.5:
        channels = {"flow": rng.choice([CHANNEL_LIMIT * 1.001, -1e300, float("nan"), float("inf")])}
    elif roll < 0.7:
        channels = {f"c{i}": 1.0 for i in range(MAX_CHANNELS + 1 + rng.randrange(20))}
    else:
        channels = rng.choice([[1, 2], "flow", 5, {"flow": "high"}, {"flow": [1]}, {"flow": True}])
    reading["channels"] = channels
    return dumps(rng, reading), BAD_CHANNELS


def _oversized(rng: random.Random) -> tuple[bytes, str]:
    """Over the size limit, whatever it holds: a padded reading, garbage, or nesting no parser could take."""
    size = rng.choice([LIMITS.max_payload_bytes + 1, rng.randint(LIMITS.max_payload_bytes + 1, 65_536)])
    kind = rng.random()
    if kind < 0.4:
        reading = valid_reading(rng)
        reading["pad"] = ""
        body = dumps(rng, reading)
        return body.replace(b'"pad": ""', b'"pad": "' + b"x" * max(0, size - len(body)) + b'"'), OVERSIZED
    if kind < 0.7:
        return b"[" * size, OVERSIZED
    return bytes(rng.getrandbits(8) for _ in range(size)), OVERSIZED


def _duplicate_keys(rng: random.Random) -> tuple[bytes, str]:
    """A key given twice: the last one counts (as for JSON parsers generally, and for the signature, which
    covers the bytes as sent)."""
    good = valid_reading(rng)
    good.pop("channels", None)
    body = json.dumps(good)
    bad = json.dumps(rng.choice(["bad id!", "", "M1'; --"]))
    first, last = (bad, json.dumps(good["machine_id"])) if rng.random() < 0.5 else (json.dumps(good["machine_id"]), bad)
    twice = '{"machine_id": ' + first + ", " + body[1:-1].replace('"machine_id": ' + json.dumps(good["machine_id"]),
                                                                  '"machine_id": ' + last) + "}"
    return twice.encode(), ACCEPTED if last != bad else BAD_MACHINE_ID


# Decode's reasons, spelled here rather than imported: the expectations do not come from the code under test.
NOT_JSON, SCHEMA, NON_FINITE, OUT_OF_RANGE = "not_json", "schema", "non_finite", "out_of_range"
BAD_MACHINE_ID, BAD_STATUS, TS_FUTURE, TS_TOO_OLD = "bad_machine_id", "bad_status", "ts_future", "ts_too_old"
OVERSIZED, UNSUPPORTED_VERSION, BAD_CHANNELS = "oversized", "unsupported_version", "bad_channels"

CATEGORIES: dict[str, Callable[[random.Random], tuple[bytes, str]]] = {
    "valid": _valid, "duplicate_keys": _duplicate_keys, "not_json": _not_json, "schema": _schema,
    "non_finite": _non_finite, "out_of_range": _out_of_range, "bad_machine_id": _bad_machine_id,
    "bad_status": _bad_status, "ts_future": _ts_future, "ts_too_old": _ts_too_old,
    "unsupported_version": _unsupported_version, "bad_channels": _bad_channels, "oversized": _oversized,
}
HOSTILE = [name for name in CATEGORIES if name != "valid"]


def _former_decode_bug(rng: random.Random) -> tuple[bytes, str]:
    value, expected, _ = KNOWN_DECODE_BUGS[rng.choice(sorted(KNOWN_DECODE_BUGS))]
    return value, expected


if DECODE_BUGS_FIXED:
    CATEGORIES["former_decode_bugs"] = _former_decode_bug
    HOSTILE.append("former_decode_bugs")


def generate(rng: random.Random, n: int, hostile_share: float) -> list[Case]:
    cases = []
    for _ in range(n):
        category = rng.choice(HOSTILE) if rng.random() < hostile_share else "valid"
        value, expected = CATEGORIES[category](rng)
        if expected != OVERSIZED and not _fits(value):  # a valid-looking message that grew too big
            expected = OVERSIZED
        cases.append(Case(value, expected, category))
    return cases


def sign_cases(cases: list[Case], rng: random.Random, keys: DeviceKeys | None, tamper_share: float = 0.25) -> list[Case]:
    """The cases as devices send them, signed (`bench.fuzz_signatures`), a share tampered with; unchanged when
    the run checks no signatures (`keys` None)."""
    if keys is None:
        return cases
    return [signed(case, rng, keys, tamper_share, LIMITS.max_payload_bytes) for case in cases]


def signing_decoder(keys: DeviceKeys) -> BatchDecoder:
    """The decoder as the flow builds it with DEVICE_AUTH=required, over the fuzz run's key registry."""
    return BatchDecoder(LIMITS, SignatureCheck(cast(RegistryWatcher, keys)))


@dataclass
class Account:
    """What the decoder did with every message, per outcome; `received` = accepted + dead-lettered."""

    received: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        self.received += 1
        self.outcomes[outcome] += 1

    def as_dict(self) -> dict:
        outcomes = self.outcomes
        dead = {reason: n for reason, n in sorted(outcomes.items()) if reason != ACCEPTED}
        return {"received": self.received, "accepted": outcomes[ACCEPTED], "dead_lettered": sum(dead.values()),
                "dead_letters_by_reason": dead}


def decode_and_check(decoder: BatchDecoder, cases: list[Case], first_offset: int, account: Account) -> None:
    """Decode one poll of `cases`; raises AssertionError naming the first message whose outcome is wrong."""
    offsets = list(range(first_offset, first_offset + len(cases)))
    batch = RawBatch("telemetry", 0, offsets, [c.value for c in cases])
    out = decoder.decode(batch, now_ms=NOW_MS)
    got: dict[int, str] = {}
    for letter in out.dead_letters:
        if letter.offset in got:
            raise AssertionError(f"offset {letter.offset} dead-lettered twice")
        got[letter.offset] = letter.reason
    accepted = out.readings["kafka_offset"].to_pylist()
    raws = out.readings["raw"].to_pylist()
    for offset, raw in zip(accepted, raws):
        if offset in got:
            raise AssertionError(f"offset {offset} both accepted and dead-lettered ({got[offset]})")
        if raw != cases[offset - first_offset].value:
            raise AssertionError(f"offset {offset}: the accepted reading's raw bytes differ from what was sent")
        got[offset] = ACCEPTED
    if out.received != len(cases) or sorted(got) != offsets:
        raise AssertionError(f"received {out.received}, accounted {len(got)} of {len(cases)} messages")
    for offset, case in zip(offsets, cases):
        if got[offset] != case.expected:
            raise AssertionError(f"{case.category} message {case.value[:200]!r}: expected {case.expected}, "
                                 f"got {got[offset]}")
        account.add(got[offset])


def run_fuzz(inputs: int, seed: int, signatures: bool, max_poll: int = 500) -> dict:
    """`inputs` generated messages through decode; `signatures`: signed, a share tampered with, and checked."""
    rng = random.Random(seed)
    keys = DeviceKeys() if signatures else None
    decoder = signing_decoder(keys) if keys is not None else BatchDecoder(LIMITS)
    account = Account()
    started = time.perf_counter()
    offset = polls = 0
    while account.received < inputs:
        size = min(inputs - account.received, rng.choice([1, 2, rng.randint(1, max_poll), max_poll]))
        hostile_share = rng.choice([0.0, 0.01, 0.3, 0.9, 1.0])
        cases = sign_cases(generate(rng, size, hostile_share), rng, keys)
        decode_and_check(decoder, cases, offset, account)
        offset += size
        polls += 1
    # The 10 MB payloads the issue names, a few polls of them: refused by size before any parsing.
    for _ in range(3):
        big = sign_cases([Case(b"[" * 10_000_000, OVERSIZED, "oversized_10mb")] + generate(rng, 100, 0.3), rng, keys)
        decode_and_check(decoder, big, offset, account)
        offset += len(big)
        polls += 1
    seconds = time.perf_counter() - started
    return {**account.as_dict(), "polls": polls, "crashes": 0, "seconds": round(seconds, 1),
            "messages_per_s": round(account.received / seconds), "seed": seed, "signatures": signatures,
            "limits": {"max_payload_bytes": LIMITS.max_payload_bytes},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(inputs: int = 100_000, seed: int = 16) -> dict:
    """Both passes and the known-bug check: the account `make fuzz` writes (without provenance)."""
    return {"unsigned": run_fuzz(inputs, seed, signatures=False),  # DEVICE_AUTH=off
            "signed": run_fuzz(inputs, seed, signatures=True),  # DEVICE_AUTH=required, the default
            "known_decode_bugs": known_bug_outcomes(NOW_MS)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="generated messages (default 100,000)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the account goes (JSON)")
    args = parser.parse_args(argv)
    git = git_state()
    result = measure(args.inputs, args.seed)
    result["provenance"] = provenance(git, f"python -m bench.fuzz --inputs {args.inputs} --seed {args.seed}")
    result["provenance"]["command"] = " ".join(["python -m bench.fuzz", *(argv or sys.argv[1:])])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
