"""Device signatures for `bench.fuzz`: every generated message signed as its device would sign it, and a share
of them tampered with, each tampering with the reason it must get (`plantpulse.device_signing`'s wire format).

The signature is checked before any parsing, so a tampered message gets its signature reason whatever its
body holds (only the size limit comes first: an oversized message stays `oversized`). An untampered message
keeps the outcome its body earns, signed by its own machine's key, so `identity_mismatch` arises only where
made on purpose: a valid reading signed with another machine's key.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from connectors.device_registry import DeviceKey, KeyRegistry
from plantpulse.device_signing import KEY_ID_HEADER, SIGNATURE_HEADER, sign, signature_headers

if TYPE_CHECKING:
    from bench.fuzz import Case

ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
OTHER = "fuzz-device"  # signs what names no machine (its body fails before the identity check)
BAD_SIGNATURE, UNSIGNED, UNKNOWN_DEVICE = "bad_signature", "unsigned", "unknown_device"
REVOKED_KEY, IDENTITY_MISMATCH = "revoked_key", "identity_mismatch"
TAMPERINGS = ("body_changed", "signature_changed", "unsigned", "unknown_device", "revoked_key", "identity_mismatch")


class DeviceKeys:
    """The key registry of the fuzz run, in memory: a key per machine met, issued on first use.

    It stands where the flow has a `RegistryWatcher` (its `current()`); loading and reloading the registry
    file is tested with the registry itself (tests/test_device_auth*.py). A new `KeyRegistry` object is
    handed out after each change, as a reload would, since the signature check caches per registry object.
    """

    def __init__(self) -> None:
        self._registry = KeyRegistry()
        self._changed = False
        self._revoked: dict[str, DeviceKey] = {}

    def current(self) -> KeyRegistry:
        if self._changed:
            self._registry, self._changed = KeyRegistry(self._registry.keys), False
        return self._registry

    def key_of(self, machine_id: str) -> DeviceKey:
        key = self._registry.signing_key(machine_id)
        if key is None:
            key = self._registry.create(machine_id)
            self._changed = True
        return key

    def revoked_of(self, machine_id: str) -> DeviceKey:
        """A revoked key of the machine: a second key, issued and revoked at once, so the key the machine
        signs with (and messages already signed with it) stay valid."""
        if machine_id not in self._revoked:
            self.key_of(machine_id)
            second = self._registry.rotate(machine_id)
            self._revoked[machine_id] = self._registry.revoke(second.key_id)
            self._changed = True
        return self._revoked[machine_id]


def machine_of(value: bytes) -> str | None:
    """The machine a message names, read by Python's parser (last of duplicate keys wins, as in decode)."""
    try:
        body = json.loads(value.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    machine = body.get("machine_id") if isinstance(body, dict) else None
    return machine if isinstance(machine, str) and ID_RULE.fullmatch(machine) else None


def signed(case: Case, rng: random.Random, keys: DeviceKeys, tamper_share: float, limit: int) -> Case:
    """`case` with the headers its device sends, or tampered with (`tamper_share`)."""
    machine = machine_of(case.value)
    key = keys.key_of(machine or OTHER)
    headers = signature_headers(key.key_id, key.secret, case.value)
    if len(case.value) > limit or rng.random() >= tamper_share:
        return replace(case, headers=headers)
    how = rng.choice(TAMPERINGS if case.expected == "accepted" and machine else TAMPERINGS[:-1])
    if how == "body_changed":  # one bit of the body flipped after signing
        at = rng.randrange(len(case.value)) if case.value else 0
        body = case.value[:at] + bytes([case.value[at] ^ (1 << rng.randrange(8))]) + case.value[at + 1:] if case.value \
            else b" "
        return replace(case, value=body, headers=headers, expected=BAD_SIGNATURE, category=f"{case.category}+{how}")
    if how == "signature_changed":
        digest = bytearray(sign(key.secret, case.value))
        digest[rng.randrange(len(digest))] ^= 0x01
        forged = rng.choice([bytes(digest), b"", b"00" * 32, b"\xff" * 64, sign(key.secret, case.value)[:-1]])
        tampered: list[tuple[str, bytes]] = [(KEY_ID_HEADER, key.key_id.encode()), (SIGNATURE_HEADER, forged)]
        return replace(case, headers=tampered, expected=BAD_SIGNATURE, category=f"{case.category}+{how}")
    if how == "unsigned":
        missing = rng.choice([None, [], headers[:1], headers[1:], [(KEY_ID_HEADER, key.key_id.encode()),
                                                                  (SIGNATURE_HEADER, None)]])
        return replace(case, headers=missing, expected=UNSIGNED, category=f"{case.category}+{how}")
    if how == "unknown_device":
        unknown = rng.choice([b"nobody.k1", b"", b"\xff\xfe", key.key_id.encode() + b" ", b"' OR 1=1 --"])
        return replace(case, headers=[(KEY_ID_HEADER, unknown), (SIGNATURE_HEADER, sign(key.secret, case.value))],
                       expected=UNKNOWN_DEVICE, category=f"{case.category}+{how}")
    if how == "revoked_key":
        old = keys.revoked_of(machine or OTHER)
        return replace(case, headers=signature_headers(old.key_id, old.secret, case.value), expected=REVOKED_KEY,
                       category=f"{case.category}+{how}")
    other = keys.key_of(f"X{(machine or '')[:50]}-other")  # a valid key of another machine
    return replace(case, headers=signature_headers(other.key_id, other.secret, case.value),
                   expected=IDENTITY_MISMATCH, category=f"{case.category}+{how}")
