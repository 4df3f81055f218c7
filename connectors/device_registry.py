"""The device key registry: one JSON file (a local file or a mounted Kubernetes Secret), mode 0600.

    {"version": 1, "keys": {"M00042.k1": {"machine_id": "M00042", "secret": "<base64url, 32 bytes>",
                                          "status": "active", "created_at": "2026-11-26T22:00:00Z"}}}

A key belongs to one machine. A machine has at most two active keys (rotation: the new key is issued while
the device still signs with the old one; revoke the old key once the device has switched). Revoked keys stay
in the file, so readings signed with them are refused as `revoked_key` rather than `unknown_device`.

`KeyRegistry` is the file's content; `create_key`/`rotate_key`/`revoke_key` change the file atomically
(write a temporary file with mode 0600, then rename). `RegistryWatcher` gives the flow the current registry
and reloads it when the file changes, without a restart; a file that cannot be read keeps the last good
registry (and says so in the log) instead of stopping the flow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from plantpulse.device_signing import SECRET_BYTES, decode_secret, encode_secret
from plantpulse.schema import MACHINE_ID_PATTERN

log = logging.getLogger(__name__)

ACTIVE, REVOKED = "active", "revoked"
MAX_ACTIVE_KEYS = 2
_MACHINE_ID = re.compile(MACHINE_ID_PATTERN)


@dataclass(frozen=True)
class DeviceKey:
    key_id: str
    machine_id: str
    secret: bytes
    status: str
    created_at: str


class KeyRegistry:
    """The keys by id. `KeyRegistry.load(path)` reads a file; a missing file is an empty registry."""

    def __init__(self, keys: dict[str, DeviceKey] | None = None) -> None:
        self.keys: dict[str, DeviceKey] = dict(keys or {})
        self._by_machine: dict[str, list[DeviceKey]] | None = None  # built on first use; a fleet has many keys

    @classmethod
    def load(cls, path: Path) -> KeyRegistry:
        """Read and check the file; ValueError names the file and the problem."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return cls()
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"device key registry {path}: not JSON ({error})") from None
        if not isinstance(document, dict) or document.get("version") != 1 or not isinstance(document.get("keys"), dict):
            raise ValueError(f"device key registry {path}: expected {{'version': 1, 'keys': {{...}}}}")
        keys = {}
        for key_id, entry in document["keys"].items():
            try:
                keys[key_id] = DeviceKey(key_id, str(entry["machine_id"]), decode_secret(str(entry["secret"])),
                                         str(entry["status"]), str(entry.get("created_at", "")))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"device key registry {path}: key {key_id!r}: {error}") from None
            if keys[key_id].status not in (ACTIVE, REVOKED):
                raise ValueError(f"device key registry {path}: key {key_id!r}: status {keys[key_id].status!r}")
        return cls(keys)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (the secrets must not be readable by other users)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"version": 1, "keys": {
            k.key_id: {"machine_id": k.machine_id, "secret": encode_secret(k.secret), "status": k.status,
                       "created_at": k.created_at}
            for k in sorted(self.keys.values(), key=lambda k: k.key_id)
        }}
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created with mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=1)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def of_machine(self, machine_id: str) -> list[DeviceKey]:
        """The machine's keys, oldest first."""
        if self._by_machine is None:
            self._by_machine = {}
            for key in sorted(self.keys.values(), key=lambda k: (k.created_at, k.key_id)):
                self._by_machine.setdefault(key.machine_id, []).append(key)
        return list(self._by_machine.get(machine_id, ()))

    def active(self, machine_id: str) -> list[DeviceKey]:
        """The machine's active keys, oldest first."""
        return [k for k in self.of_machine(machine_id) if k.status == ACTIVE]

    def signing_key(self, machine_id: str) -> DeviceKey | None:
        """The key a device signs with: its newest active key."""
        active = self.active(machine_id)
        return active[-1] if active else None

    def _new_key(self, machine_id: str) -> DeviceKey:
        if not _MACHINE_ID.fullmatch(machine_id):
            raise ValueError(f"keys: machine_id {machine_id!r} does not match {MACHINE_ID_PATTERN}")
        number = 1 + max((int(k.key_id.rsplit(".k", 1)[1]) for k in self.of_machine(machine_id)), default=0)
        key = DeviceKey(f"{machine_id}.k{number}", machine_id, secrets.token_bytes(SECRET_BYTES), ACTIVE,
                        datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        self.keys[key.key_id] = key
        if self._by_machine is not None:  # kept up to date: issuing keys for a whole fleet stays linear
            self._by_machine.setdefault(machine_id, []).append(key)
        return key

    def create(self, machine_id: str) -> DeviceKey:
        """A machine's first key; ValueError if it has an active one (use `rotate`)."""
        if self.active(machine_id):
            raise ValueError(f"keys: {machine_id} already has an active key; rotate it instead")
        return self._new_key(machine_id)

    def ensure(self, machine_ids: list[str]) -> int:
        """A first key for each machine without an active one; returns how many were issued."""
        missing = [m for m in machine_ids if not self.active(m)]
        for machine_id in missing:
            self.create(machine_id)
        return len(missing)

    def rotate(self, machine_id: str) -> DeviceKey:
        """Issue a new key beside the current one; ValueError when two are active already (revoke one first)."""
        active = self.active(machine_id)
        if not active:
            raise ValueError(f"keys: {machine_id} has no active key to rotate; create one")
        if len(active) >= MAX_ACTIVE_KEYS:
            raise ValueError(f"keys: {machine_id} has {len(active)} active keys ({', '.join(k.key_id for k in active)}); "
                             "revoke the old one before rotating again")
        return self._new_key(machine_id)

    def revoke(self, key_id: str) -> DeviceKey:
        key = self.keys.get(key_id)
        if key is None:
            raise ValueError(f"keys: no key {key_id!r}")
        revoked = DeviceKey(key.key_id, key.machine_id, key.secret, REVOKED, key.created_at)
        self.keys[key_id] = revoked
        self._by_machine = None
        return revoked


class RegistryWatcher:
    """The current registry for the flow, reloaded when the file changes (checked every `reload_s`).

    A Kubernetes Secret volume swaps a symlink when the Secret changes; `stat` follows it, so the change
    shows as a new inode/mtime/size of the file's target.
    """

    def __init__(self, path: Path, reload_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.reload_s = reload_s
        self._monotonic = monotonic
        self._signature: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.registry = KeyRegistry()
        self.reloads = 0
        self._refresh(first=True)

    def current(self) -> KeyRegistry:
        now = self._monotonic()
        if now - self._checked >= self.reload_s:
            self._refresh(first=False)
        return self.registry

    def _refresh(self, first: bool) -> None:
        self._checked = self._monotonic()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            if first:
                raise ValueError(f"device key registry {self.path} does not exist: create keys with "
                                 "`plantpulse keys create MACHINE_ID`, or set DEVICE_AUTH=off") from None
            log.error("device key registry %s disappeared; keeping the %d keys loaded", self.path, len(self.registry.keys))
            return
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return
        try:
            registry = KeyRegistry.load(self.path)
        except (OSError, ValueError) as error:
            if first:
                raise ValueError(str(error)) from None
            log.error("%s; keeping the %d keys loaded before", error, len(self.registry.keys))
            return
        self.registry, self._signature = registry, signature
        self.reloads += 0 if first else 1
        if not first:
            log.info("device key registry %s reloaded: %d keys", self.path, len(registry.keys))

    def __getstate__(self) -> dict:
        raise TypeError("RegistryWatcher holds secrets and is rebuilt from the file at every start; never snapshot it")
