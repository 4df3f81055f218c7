"""Bounds on a message's bytes that hold before any parser sees them (issue 16: hostile input).

Size is bounded by `ValidationLimits.max_payload_bytes` in `flows.decode`; here: nesting depth, UTF-8 validity
and what may open a poll handed to pyarrow's JSON reader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# What the batch reader may be given first: an object. pyarrow 26 segfaults on a poll whose first line is `null`
# (apache/arrow#47409) and skips a byte-order mark only at the start of its input.
OBJECT_FIRST = re.compile(rb"[ \t\r\n]*\{")
BOM = b"\xef\xbb\xbf"
INT64 = (-(2**63), 2**63)


MAX_NESTING = 64  # levels of arrays/objects a message may nest: deeper is refused before any parser sees it


def too_deep(values: Sequence[bytes], joined: bytes, candidates: list[int]) -> list[int]:
    """The candidates (`joined`: them joined by newlines) nested deeper than MAX_NESTING. Parsers recurse per
    level (msgspec fails at a depth that depends on the caller's stack), so depth is bounded up front, like
    size. Only a message with more than MAX_NESTING opening brackets can be that deep: two C-speed passes
    (`bytes.translate`, then NumPy on what is left) find those, and only they are scanned exactly."""
    brackets = joined.translate(None, _NOT_BRACKET_OR_NEWLINE)
    breaks = np.flatnonzero(np.frombuffer(brackets, dtype=np.uint8) == ord("\n"))
    if len(breaks) == len(candidates) - 1:  # one line per message
        counts = np.diff(np.concatenate([[-1], breaks, [len(brackets)]])) - 1
    else:  # raw line breaks inside messages (pretty-printed JSON): count per message
        counts = np.array([len(values[i].translate(None, _NOT_BRACKET)) for i in candidates])
    many = np.flatnonzero(counts > MAX_NESTING)
    return [candidates[k] for k in many.tolist() if depth_over(values[candidates[k]], MAX_NESTING)]


_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[{")
_NOT_BRACKET_OR_NEWLINE = bytes(b for b in range(256) if b not in b"[{\n")


def depth_over(value: bytes, limit: int) -> bool:
    depth, in_string, escaped = 0, False, False
    for byte in value:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def is_utf8(data: bytes) -> bool:
    """Whether `data` is valid UTF-8, checked by Arrow in place (no copy); pyarrow's JSON reader does not check
    the strings it returns, and msgspec checks only the fields it decodes."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True
