"""Device signatures for `bench.fuzz`: every generated message signed as its device would sign it, and a share
of them tampered with, each tampering with the reason it must get (`plantpulse.device_signing`'s wire format).

The signature is checked before any parsing, so a tampered message gets its signature reason whatever its
body holds (only the size limit comes first: a message that is oversized once signed is `oversized`). An
untampered message keeps the outcome its body earns, signed by its own machine's key, so `identity_mismatch`
arises only where made on purpose: a valid reading signed with another machine's key. A body that is no JSON
object closed by its last byte (`[[[`, `null`, a truncated object) cannot carry the signature members, so its
device sends it as it is: `unsigned`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from connectors.device_registry import DeviceKey, KeyRegistry
from plantpulse.device_signing import END, KEY_ID_MEMBER, SIGNATURE_MEMBER, mac, sign_reading

if TYPE_CHECKING:
    from bench.fuzz import Case

ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
OTHER = "fuzz-device"  # signs what names no machine (its body fails before the identity check)
BAD_SIGNATURE, UNSIGNED, UNKNOWN_DEVICE, OVERSIZED = "bad_signature", "unsigned", "unknown_device", "oversized"
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
    """`case` as its device sends it, signed, or tampered with (`tamper_share`)."""
    if len(case.value) > limit:
        return case  # refused by size before anything else, signed or not
    if not case.value.endswith(b"}"):
        return _sent(replace(case, category=f"{case.category}+unsignable"), case.value, UNSIGNED, limit)
    machine = machine_of(case.value)
    key = keys.key_of(machine or OTHER)
    body = case.value
    if rng.random() >= tamper_share:
        return _sent(case, sign_reading(key.key_id, key.secret, body), case.expected, limit)
    how = rng.choice(TAMPERINGS if case.expected == "accepted" and machine else TAMPERINGS[:-1])
    case = replace(case, category=f"{case.category}+{how}")
    kid = key.key_id.encode()
    if how == "body_changed" and len(body) > 1:  # one bit of the body flipped after signing
        at = rng.randrange(len(body) - 1)  # the closing brace is not sent: the members replace it
        value = sign_reading(key.key_id, key.secret, body)
        return _sent(case, value[:at] + bytes([value[at] ^ (1 << rng.randrange(8))]) + value[at + 1:], BAD_SIGNATURE,
                     limit)
    if how in ("body_changed", "signature_changed"):
        digest = bytearray(mac(key.secret, body))
        digest[rng.randrange(len(digest))] ^= 0x01
        forged = rng.choice([bytes(digest), b"", b"00" * 32, b"\xff" * 64, mac(key.secret, body)[:-1],
                             mac(key.secret, body).upper()])
        if forged == mac(key.secret, body):  # upper case of a digest without letters
            forged = forged[:-1] + b"G"
        return _sent(case, _members(body, kid, forged), BAD_SIGNATURE, limit)
    if how == "unsigned":
        signature = mac(key.secret, body)
        value = rng.choice([
            body,  # no members at all
            body[:-1] + KEY_ID_MEMBER + kid + b'"}',  # only the key id
            body[:-1] + b',"pp_sig":"' + signature + END,  # only the signature
            body[:-1] + b',"pp_sig":"' + signature + b'","pp_kid":"' + kid + END,  # the members swapped
            body[:-1] + b', "pp_kid": "' + kid + b'", "pp_sig": "' + signature + END,  # spaces
            _members(body, kid, signature) + b"\n",  # something after the object
        ])
        return _sent(case, value, UNSIGNED, limit)
    if how == "unknown_device":
        unknown = rng.choice([b"nobody.k1", b"", b"\xff\xfe", kid + b" ", b"' OR 1=1 --"])
        return _sent(case, _members(body, unknown, mac(key.secret, body)), UNKNOWN_DEVICE, limit)
    if how == "revoked_key":
        old = keys.revoked_of(machine or OTHER)
        return _sent(case, sign_reading(old.key_id, old.secret, body), REVOKED_KEY, limit)
    other = keys.key_of(f"X{(machine or '')[:50]}-other")  # a valid key of another machine
    return _sent(case, sign_reading(other.key_id, other.secret, body), IDENTITY_MISMATCH, limit)


def _members(body: bytes, key_id: bytes, signature: bytes) -> bytes:
    """`body` with the two members appended in the documented form, whatever they hold."""
    return body[:-1] + KEY_ID_MEMBER + key_id + SIGNATURE_MEMBER + signature + END


def _sent(case: Case, value: bytes, expected: str, limit: int) -> Case:
    """`case` as sent: `value`, which must get `expected` unless signing made it too big."""
    return replace(case, value=value, expected=OVERSIZED if len(value) > limit else expected)
