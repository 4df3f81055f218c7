"""Device signature checks for one poll, before any message is parsed (the wire format:
`plantpulse.device_signing`).

A message without both headers is `unsigned`; a key id the registry does not hold is `unknown_device`; a
revoked key is `revoked_key`; a signature that does not match the value is `bad_signature`. A message that
passes is remembered with its key's machine, and the decode step refuses it as `identity_mismatch` when the
reading names another machine.

The HMACs of a poll are computed in one call to `flows._hmac_batch` (C against OpenSSL, built at install;
about 3 µs less per message than hashlib). Without that extension (no compiler at install) the same checks
run in Python, and the flow logs so once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from connectors.device_registry import REVOKED, KeyRegistry, RegistryWatcher
from plantpulse.device_signing import KEY_ID_HEADER, SIGNATURE_HEADER, signature_fields
from plantpulse.schema import RawBatch

try:
    from flows import _hmac_batch  # type: ignore[attr-defined]
except ImportError:  # built at install when a C compiler and OpenSSL's headers are there
    _hmac_batch = None

log = logging.getLogger(__name__)

UNSIGNED = "unsigned"
UNKNOWN_DEVICE = "unknown_device"
REVOKED_KEY = "revoked_key"
BAD_SIGNATURE = "bad_signature"
IDENTITY_MISMATCH = "identity_mismatch"
_HEX_SIGNATURE_BYTES = 64
_SHA256_BLOCK = 64


@dataclass
class Verdicts:
    signed_by: dict[int, str]  # message index -> the machine its key belongs to
    refused: list[tuple[int, str, str]]  # (message index, reason, detail)


class _Keys:
    """One registry load, arranged for checking: key id -> row, and per row the machine, whether revoked,
    and the precomputed HMAC states."""

    def __init__(self, registry: KeyRegistry, compiled: bool) -> None:
        keys = sorted(registry.keys.values(), key=lambda k: k.key_id)
        self.row = {key.key_id.encode(): i for i, key in enumerate(keys)}
        self.key_id = [key.key_id for key in keys]
        self.machine = [key.machine_id for key in keys]
        self.revoked = [key.status == REVOKED for key in keys]
        if compiled:
            self.states = b"".join(_hmac_batch.key_states(key.secret) for key in keys)
        else:
            blocks = [key.secret.ljust(_SHA256_BLOCK, b"\0") for key in keys]
            self.inner = [hashlib.sha256(bytes(b ^ 0x36 for b in block)) for block in blocks]
            self.outer = [hashlib.sha256(bytes(b ^ 0x5C for b in block)) for block in blocks]


class SignatureCheck:
    """Checks the signatures of a poll's messages against the current key registry."""

    def __init__(self, watcher: RegistryWatcher, compiled: bool | None = None) -> None:
        self.watcher = watcher
        self.compiled = _hmac_batch is not None if compiled is None else compiled
        if self.compiled and _hmac_batch is None:
            raise RuntimeError("device_auth: flows._hmac_batch was not built (a C compiler and libssl-dev at install)")
        if not self.compiled:
            log.warning("device signatures are verified in Python (flows._hmac_batch was not built at install): "
                        "several times slower per message")
        self._registry: KeyRegistry | None = None
        self._keys: _Keys | None = None

    def _current_keys(self) -> _Keys:
        registry = self.watcher.current()
        if registry is not self._registry or self._keys is None:
            self._keys = _Keys(registry, self.compiled)
            self._registry = registry
        return self._keys

    def check(self, batch: RawBatch, candidates: list[int]) -> Verdicts:
        keys = self._current_keys()
        if batch.key_ids is not None and batch.signatures is not None:
            key_ids, signatures = batch.key_ids, batch.signatures
        elif batch.headers is not None:
            key_ids, signatures = signature_fields(batch.headers)
        else:
            key_ids = signatures = [None] * len(batch.values)
        fast = self._check_all_well_formed(keys, batch.values, candidates, key_ids, signatures)
        return fast if fast is not None else self._check_one_by_one(keys, batch.values, candidates, key_ids, signatures)

    def _check_all_well_formed(
        self, keys: _Keys, values: Sequence[bytes], candidates: list[int], key_ids: list[bytes | None],
        signatures: list[bytes | None],
    ) -> Verdicts | None:
        """The common poll, where every message names a known, active key and carries a 64-character signature
        that verifies, checked without Python work per message (None otherwise: the slow path names each)."""
        if len(candidates) != len(values) or not candidates or None in signatures:
            return None
        if None in key_ids:
            return None
        found = list(map(keys.row.get, cast("list[bytes]", key_ids)))
        if None in found:
            return None
        rows = cast("list[int]", found)
        signed = cast("list[bytes]", signatures)
        if any(keys.revoked[row] for row in set(rows)) or \
                not (np.fromiter(map(len, signed), np.int64, len(signed)) == _HEX_SIGNATURE_BYTES).all():
            return None
        valid = self._verify(keys, values if isinstance(values, list) else list(values), rows, signed)
        if not valid.all():
            return None
        return Verdicts(dict(zip(candidates, map(keys.machine.__getitem__, rows))), [])

    def _check_one_by_one(
        self, keys: _Keys, values: Sequence[bytes], candidates: list[int], key_ids: list[bytes | None],
        all_signatures: list[bytes | None],
    ) -> Verdicts:
        refused: list[tuple[int, str, str]] = []
        pending: list[int] = []  # messages whose HMAC decides
        rows: list[int] = []
        signatures: list[bytes] = []
        for i in candidates:
            key_id, signature = key_ids[i], all_signatures[i]
            if key_id is None or signature is None:
                refused.append((i, UNSIGNED, f"no {KEY_ID_HEADER} and {SIGNATURE_HEADER} headers"))
                continue
            row = keys.row.get(key_id)
            if row is None:
                name = key_id.decode("utf-8", "replace")[:80]
                refused.append((i, UNKNOWN_DEVICE, f"key id {name!r} is not in the device key registry"))
            elif keys.revoked[row]:
                refused.append((i, REVOKED_KEY, f"key {keys.key_id[row]} of {keys.machine[row]} is revoked"))
            elif len(signature) != _HEX_SIGNATURE_BYTES:
                refused.append((i, BAD_SIGNATURE, f"signature is {len(signature)} bytes, not 64 hex characters"))
            else:
                pending.append(i)
                rows.append(row)
                signatures.append(signature)
        valid = self._verify(keys, [values[i] for i in pending], rows, signatures)
        signed_by: dict[int, str] = {}
        for i, row, good in zip(pending, rows, valid.tolist()):
            if good:
                signed_by[i] = keys.machine[row]
            else:
                refused.append((i, BAD_SIGNATURE, f"signature does not match the message under key {keys.key_id[row]}"))
        return Verdicts(signed_by, refused)

    def _verify(self, keys: _Keys, messages: list[bytes], rows: list[int], signatures: list[bytes]) -> np.ndarray:
        """Whether each message's HMAC under its key row equals its hex signature."""
        if not messages:
            return np.zeros(0, dtype=bool)
        if self.compiled:
            offsets = np.zeros(len(messages) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, messages), dtype=np.int64, count=len(messages)), out=offsets[1:])
            valid = _hmac_batch.verify(b"".join(messages), offsets.tobytes(), np.asarray(rows, np.int32).tobytes(),
                                       keys.states, b"".join(signatures))
            return np.frombuffer(valid, dtype=np.bool_)
        out = np.zeros(len(messages), dtype=bool)
        for j, (message, row, signature) in enumerate(zip(messages, rows, signatures)):
            inner = keys.inner[row].copy()
            inner.update(message)
            outer = keys.outer[row].copy()
            outer.update(inner.digest())
            out[j] = hmac.compare_digest(outer.hexdigest().encode(), signature)
        return out
