"""Device signature checks for one poll, before any message is parsed (the wire format:
`plantpulse.device_signing`).

A message without both headers is `unsigned`; a key id the registry does not hold is `unknown_device`; a
revoked key is `revoked_key`; a signature that does not match the value is `bad_signature`. A message that
passes is remembered with its key's machine, and the decode step refuses it as `identity_mismatch` when the
reading names another machine.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from connectors.device_registry import REVOKED, DeviceKey, KeyRegistry, RegistryWatcher
from plantpulse.device_signing import KEY_ID_HEADER, SIGNATURE_HEADER
from plantpulse.schema import RawBatch

UNSIGNED = "unsigned"
UNKNOWN_DEVICE = "unknown_device"
REVOKED_KEY = "revoked_key"
BAD_SIGNATURE = "bad_signature"
IDENTITY_MISMATCH = "identity_mismatch"


@dataclass
class Verdicts:
    signed_by: dict[int, str]  # message index -> the machine its key belongs to
    refused: list[tuple[int, str, str]]  # (message index, reason, detail)


class SignatureCheck:
    """Checks the signatures of a poll's messages against the current key registry.

    HMAC-SHA256 is computed from each key's precomputed inner and outer SHA-256 states (RFC 2104: the key
    padded and XORed with 0x36 / 0x5c, hashed once per registry load) and copied per message: half the cost
    of a fresh `hmac.digest`, whose OpenSSL set-up repeats the key schedule for every message.
    """

    def __init__(self, watcher: RegistryWatcher) -> None:
        self.watcher = watcher
        self._registry: KeyRegistry | None = None
        self._keys: dict[bytes, _Key] = {}

    def _current_keys(self) -> dict[bytes, _Key]:
        registry = self.watcher.current()
        if registry is not self._registry:
            self._keys = {key_id.encode(): _Key.of(key) for key_id, key in registry.keys.items()}
            self._registry = registry
        return self._keys

    def check(self, batch: RawBatch, candidates: list[int]) -> Verdicts:
        keys = self._current_keys()
        values, headers = batch.values, batch.headers
        signed_by: dict[int, str] = {}
        refused: list[tuple[int, str, str]] = []
        compare = hmac.compare_digest
        for i in candidates:
            fields = dict(headers[i] or ()) if headers is not None else {}
            key_id, signature = fields.get(KEY_ID_HEADER), fields.get(SIGNATURE_HEADER)
            if key_id is None or signature is None:
                refused.append((i, UNSIGNED, f"no {KEY_ID_HEADER} and {SIGNATURE_HEADER} headers"))
                continue
            key = keys.get(key_id)
            if key is None:
                name = key_id.decode("utf-8", "replace")[:80]
                refused.append((i, UNKNOWN_DEVICE, f"key id {name!r} is not in the device key registry"))
                continue
            if key.revoked:
                refused.append((i, REVOKED_KEY, f"key {key.key_id} of {key.machine_id} is revoked"))
                continue
            inner = key.inner.copy()
            inner.update(values[i])
            outer = key.outer.copy()
            outer.update(inner.digest())
            if compare(outer.hexdigest().encode(), signature):
                signed_by[i] = key.machine_id
            else:
                refused.append((i, BAD_SIGNATURE, f"signature does not match the message under key {key.key_id}"))
        return Verdicts(signed_by, refused)


@dataclass(frozen=True)
class _Key:
    key_id: str
    machine_id: str
    revoked: bool
    inner: Any  # hashlib.sha256 state after the key XOR ipad block
    outer: Any  # ... after the key XOR opad block

    @classmethod
    def of(cls, key: DeviceKey) -> _Key:
        block = key.secret.ljust(_SHA256_BLOCK, b"\0")  # secrets are 32 bytes: never longer than a block
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        return cls(key.key_id, key.machine_id, key.status == REVOKED, inner, outer)


_SHA256_BLOCK = 64
