"""Device signature checks for one poll, before any message is parsed (the wire format:
`plantpulse.device_signing`).

A message without the two signature members is `unsigned`; a key id the registry does not hold is `unknown_device`; a
revoked key is `revoked_key`; a signature that does not match the value is `bad_signature`. A message that
passes is remembered with its key's machine, and the decode step refuses it as `identity_mismatch` when the
reading names another machine.

A poll is checked in one call to `flows._hmac_batch.check` (C against OpenSSL, built at install): finding the
members, key lookup, revocation, signature shape and HMAC; it also hands back the verified bodies joined by
newlines, which is what the decoder parses. Without that extension (no compiler at install) the same checks
run in Python, several times slower, and the flow logs so once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from connectors.device_registry import REVOKED, KeyRegistry, RegistryWatcher
from plantpulse.device_signing import SIGNATURE_HEX, split_signed
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
_SHA256_BLOCK = 64


# Per message, what the check found (the codes of flows._hmac_batch.check; the Python check uses the same).
OK, NO_SIGNATURE, NO_SUCH_KEY, KEY_REVOKED, MALFORMED_SIGNATURE, MISMATCH, SKIPPED = range(7)


@dataclass
class Verdicts:
    """A poll's check: per message its key's row (-1 when refused or not checked), the refusals, and the signed
    bodies of the accepted messages (in `accepted()` order, joined by newlines)."""

    signer_rows: np.ndarray  # int32, one per message of the poll
    machines: pa.Array  # key row -> the machine that key belongs to
    refused: list[tuple[int, str, str]]  # (message index, reason, detail)
    bodies: bytes

    def accepted(self) -> np.ndarray:
        """Indices of the messages whose signature verified."""
        return np.flatnonzero(self.signer_rows >= 0)

    def signers(self, messages: Sequence[int]) -> pa.Array:
        """The machine each of `messages` (accepted message indices) was signed for."""
        return self.machines.take(pa.array(self.signer_rows[np.asarray(messages, dtype=np.int64)]))


class SignedBodies(Sequence[bytes]):
    """What is parsed of each message of a checked poll, by message index: its signed body (a message without
    the members, refused before any parsing, reads as its value). The members are appended after the body's
    last byte, so parsing the value would put them inside a body that is no closed object."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]  # by index only
        members = split_signed(self._values[i])
        return members[0] if members else self._values[i]


class _Keys:
    """One registry load, arranged for checking: key id -> row, and per row the machine, whether revoked,
    and the precomputed HMAC states."""

    def __init__(self, registry: KeyRegistry, compiled: bool) -> None:
        keys = sorted(registry.keys.values(), key=lambda k: k.key_id)
        self.row = {key.key_id.encode(): i for i, key in enumerate(keys)}
        self.key_id = [key.key_id for key in keys]
        self.machines = pa.array([key.machine_id for key in keys], pa.string())
        self.revoked = bytes(key.status == REVOKED for key in keys)
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
        """Checks the messages at `candidates` (indices into the poll); the others are neither checked nor
        refused here (the caller refused them already)."""
        keys = self._current_keys()
        values = batch.values if isinstance(batch.values, list) else list(batch.values)
        skip = None
        if len(candidates) != len(values):
            mask = np.ones(len(values), dtype=np.uint8)
            mask[np.asarray(candidates, dtype=np.int64)] = 0
            skip = mask.tobytes()
        if self.compiled:
            code_bytes, row_bytes, bodies = _hmac_batch.check(values, keys.row, keys.revoked, keys.states, skip)
        else:
            code_bytes, row_bytes, bodies = self._check_in_python(keys, values, skip)
        codes, rows = np.frombuffer(code_bytes, np.uint8), np.frombuffer(row_bytes, np.int32)
        signer_rows = np.where(codes == OK, rows, -1).astype(np.int32)
        refused = [(i, *self._reason(keys, int(codes[i]), int(rows[i]), values[i]))
                   for i in np.flatnonzero((codes != OK) & (codes != SKIPPED)).tolist()]
        return Verdicts(signer_rows, keys.machines, refused, bodies)

    @staticmethod
    def _reason(keys: _Keys, code: int, row: int, value: bytes) -> tuple[str, str]:
        if code == NO_SIGNATURE:
            return UNSIGNED, 'no "pp_kid" and "pp_sig" members at the end of the message'
        members = split_signed(value) if isinstance(value, bytes) else None
        key_id, signature = members[1:] if members else (b"", b"")
        if code == NO_SUCH_KEY:
            return UNKNOWN_DEVICE, f"key id {key_id.decode('utf-8', 'replace')[:80]!r} is not in the device key registry"
        if code == KEY_REVOKED:
            return REVOKED_KEY, f"key {keys.key_id[row]} of {keys.machines[row].as_py()} is revoked"
        if code == MALFORMED_SIGNATURE:
            return BAD_SIGNATURE, f"signature is {len(signature)} bytes, not {SIGNATURE_HEX} hex characters"
        return BAD_SIGNATURE, f"signature does not match the message under key {keys.key_id[row]}"

    @staticmethod
    def _check_in_python(keys: _Keys, values: list[bytes], skip: bytes | None) -> tuple[bytes, bytes, bytes]:
        """What `flows._hmac_batch.check` computes, with hashlib (when the extension was not built)."""
        codes = np.full(len(values), SKIPPED, dtype=np.uint8)
        rows = np.full(len(values), -1, dtype=np.int32)
        bodies = []
        for i, value in enumerate(values):
            if skip is not None and skip[i]:
                continue
            members = split_signed(value) if isinstance(value, bytes) else None
            if members is None:
                codes[i] = NO_SIGNATURE
                continue
            body, key_id, signature = members
            row = keys.row.get(key_id)
            if row is None:
                codes[i] = NO_SUCH_KEY
                continue
            rows[i] = row
            if keys.revoked[row]:
                codes[i] = KEY_REVOKED
            elif len(signature) != SIGNATURE_HEX:
                codes[i] = MALFORMED_SIGNATURE
            else:
                inner = keys.inner[row].copy()
                inner.update(body)
                outer = keys.outer[row].copy()
                outer.update(inner.digest())
                codes[i] = OK if hmac.compare_digest(outer.hexdigest().encode(), signature) else MISMATCH
                if codes[i] == OK:
                    bodies.append(body)
        return codes.tobytes(), rows.tobytes(), b"\n".join(bodies)
