"""Inputs that `flows/decode.py` does not yet survive, or names wrongly (issue 16), with the outcome each should
get: reported to the decoder's owner, checked one by one in child processes (`known_bug_outcomes`; one of them
is a segfault), and kept out of `bench.fuzz`'s in-process runs until `DECODE_BUGS_FIXED` is set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NOT_JSON, SCHEMA, NON_FINITE, ACCEPTED = "not_json", "schema", "non_finite", "accepted"

_READING = b'{"machine_id": "M1", "ts": 1763999999000, "seq": 1, "status": "running"'
KNOWN_DECODE_BUGS: dict[str, tuple[bytes, str, str]] = {
    "json_null_first": (b"null", SCHEMA, "segfault in pyarrow.json.read_json when a poll starts with `null`"),
    "seq_over_int64": (_READING.replace(b'"seq": 1', b'"seq": ' + b"9" * 20) + b"}", SCHEMA,
                       "OverflowError from pa.Table.from_pylist (msgspec accepts the big int)"),
    "ts_10e400": (_READING.replace(b'"ts": 1763999999000', b'"ts": 1' + b"0" * 400) + b"}", SCHEMA,
                  "OverflowError from pa.Table.from_pylist"),
    "invalid_utf8_in_id": (_READING.replace(b'"M1"', b'"M\xff1"') + b"}", NOT_JSON,
                           "UnicodeDecodeError in _validate's to_pylist (pyarrow does not check UTF-8)"),
    "invalid_utf8_in_extra_field": (_READING + b', "note": "\xff"}', NOT_JSON,
                                    "accepted: neither pyarrow nor msgspec checks the UTF-8 of an ignored field"),
    "channels_invalid_utf8": (_READING + b', "channels": {"fl\xffow": 1}}', NOT_JSON,
                              "UnicodeDecodeError from msgspec in _read_channels, on either path"),
    "channels_with_deep_extra_field": (_READING + b', "channels": {"flow": 1}, "x": ' + b"[" * 1500 + b"]" * 1500
                                       + b"}", SCHEMA, "RecursionError from msgspec in _read_channels, on either path; "
                                       "expected: refused by a nesting limit"),
    "deep_extra_field": (_READING + b', "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", SCHEMA,
                         "RecursionError from msgspec when the poll takes the per-message path; expected: refused by "
                         "a nesting limit on every path (msgspec's own limit depends on the caller's stack depth)"),
    "float_1e400": (_READING + b', "rpm": 1e400}', NON_FINITE, "named `schema` (pyarrow and msgspec refuse it)"),
    "int_10e400_sensor": (_READING + b', "rpm": 1' + b"0" * 400 + b"}", NON_FINITE,
                          "`non_finite` when its poll parses in one go (pyarrow reads inf), `schema` when the poll "
                          "takes the per-message path (msgspec: number out of range)"),
    "utf16_guess": (b"\x000", NOT_JSON, "`schema`: json.loads(bytes) guesses UTF-16 from the NUL and reads `0`"),
    "utf8_bom": (b"\xef\xbb\xbf" + _READING + b"}", NOT_JSON,
                 "accepted when first in its poll, `schema` elsewhere"),
}
# A poll that forces the per-message path (its second message is not JSON) around each known bug.
_KNOWN_BUG_NEIGHBOURS = [b"{oops"]
# Set to True once flows/decode.py handles every input above: they then join the generated inputs (category
# `former_decode_bugs`) and tests/test_hostile_input.py expects `test_known_decode_bugs_are_fixed` to pass.
DECODE_BUGS_FIXED = True


def known_bug_outcomes(now_ms: int, timeout_s: float = 60.0) -> dict[str, dict]:
    """Each `KNOWN_DECODE_BUGS` input decoded in a child process, first in its poll and amid others."""
    report = {}
    for name, (value, expected, what) in KNOWN_DECODE_BUGS.items():
        script = (
            "import sys, json\nfrom flows.decode import BatchDecoder\nfrom plantpulse.schema import RawBatch\n"
            f"values = [{value!r}] + {_KNOWN_BUG_NEIGHBOURS!r}\n"
            "for vs in (values[:1], values, values[1:] + values[:1]):\n"
            f"    out = BatchDecoder().decode(RawBatch('t', 0, list(range(len(vs))), vs), {now_ms})\n"
            "    got = {d.offset: d.reason for d in out.dead_letters}\n"
            "    got.update({o: 'accepted' for o in out.readings['kafka_offset'].to_pylist()})\n"
            "    print(got[vs.index(values[0])])\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s,
                             cwd=Path(__file__).resolve().parent.parent)
        outcomes = run.stdout.split()
        if run.returncode:
            last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
            outcome = f"crash ({last[:160]})" if run.returncode > 0 else f"killed by signal {-run.returncode}"
        else:
            outcome = ", ".join(outcomes)
        fixed = run.returncode == 0 and set(outcomes) == {expected}
        report[name] = {"expected": expected, "outcome": outcome, "fixed": fixed, "bug": what}
    return report
