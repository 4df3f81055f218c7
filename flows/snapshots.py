"""Stateful steps' snapshots as compressed pickles.

Every snapshot interval Bytewax stores the state of each key that changed, so its size is paid again and
again (recovery-store writes, and the time the worker stands still while it is taken). The window state is
mostly integer arrays (each machine's remembered sequence numbers, per-window columns) that zstd at its
fastest level shrinks several-fold for a few milliseconds per megabyte. Snapshots of earlier releases were
plain pickles; `unpack` still reads them.

>>> unpack(pack({"seq": list(range(1000))})) == {"seq": list(range(1000))}
True
>>> import pickle
>>> unpack(pickle.dumps([1, 2]))  # an earlier release's plain pickle
[1, 2]
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import pyarrow as pa

_MAGIC = b"PPZ1"
_HEADER = struct.Struct("<4sQ")  # magic, uncompressed size
_CODEC = pa.Codec("zstd", compression_level=1)


def pack(state: Any) -> bytes:
    """`state` pickled and zstd-compressed, with a header that `unpack` recognises."""
    raw = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(_MAGIC, len(raw)) + _CODEC.compress(raw, asbytes=True)


def unpack(snapshot: bytes) -> Any:
    """The state in a snapshot written by `pack`, or by an earlier release as a plain pickle."""
    if snapshot[:4] != _MAGIC:
        return pickle.loads(snapshot)
    _, size = _HEADER.unpack_from(snapshot)
    return pickle.loads(_CODEC.decompress(snapshot[_HEADER.size :], decompressed_size=size, asbytes=True))
