"""Device identity (issue 16): signed readings, the key registry, rotation, revocation and reload.

Signed values are built here with the standard library's `hmac` from the documented wire format
(`plantpulse.device_signing`), not with the product's `sign_reading()`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from connectors.device_registry import KeyRegistry, RegistryWatcher
from flows.decode import BatchDecoder
from flows.device_auth import SignatureCheck
from plantpulse.cli import app
from plantpulse.device_signing import split_signed
from plantpulse.schema import RawBatch

NOW = 1_764_000_000_000


def reading(machine_id: str, seq: int) -> bytes:
    return json.dumps({"machine_id": machine_id, "ts": NOW - 1000, "seq": seq, "status": "running",
                       "temperature": 70.0}).encode()


def signed(key_id: str, secret: bytes, body: bytes, mac: str | None = None) -> bytes:
    """`body` as its device sends it: the two members appended; `mac` replaces the signature text."""
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest() if mac is None else mac
    return body[:-1] + b',"pp_kid":"' + key_id.encode() + b'","pp_sig":"' + mac.encode() + b'"}'


def test_registry_create_rotate_revoke_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    registry = KeyRegistry()
    first = registry.create("M1")
    with pytest.raises(ValueError, match="already has an active key"):
        registry.create("M1")
    second = registry.rotate("M1")
    with pytest.raises(ValueError, match="2 active keys"):
        registry.rotate("M1")
    assert [k.key_id for k in registry.active("M1")] == [first.key_id, second.key_id]
    assert registry.signing_key("M1") == second and first.secret != second.secret
    registry.revoke(first.key_id)
    registry.save(path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = KeyRegistry.load(path)
    assert {k: (v.machine_id, v.status, v.secret) for k, v in loaded.keys.items()} == {
        first.key_id: ("M1", "revoked", first.secret), second.key_id: ("M1", "active", second.secret)}
    assert loaded.rotate("M1").key_id == "M1.k3"  # one revoked, one active: a rotation is allowed again
    with pytest.raises(ValueError, match="does not match"):
        KeyRegistry().create("bad id!")
    path.write_text('{"version": 1, "keys": {"X.k1": {"machine_id": "X", "secret": "short", "status": "active"}}}')
    with pytest.raises(ValueError, match="X.k1"):
        KeyRegistry.load(path)


@pytest.mark.parametrize("compiled", [True, False], ids=["C", "python"])
def test_each_refusal_has_its_own_reason_and_valid_readings_pass(tmp_path: Path, compiled: bool) -> None:
    path = tmp_path / "keys.json"
    registry = KeyRegistry()
    old, m2 = registry.create("M1"), registry.create("M2")
    new = registry.rotate("M1")
    revoked = registry.create("M3")
    registry.revoke(revoked.key_id)
    registry.save(path)
    tampered = signed(m2.key_id, m2.secret, reading("M2", 2)).replace(b"70.0", b"99.0")
    cases = [  # (value, expected reason or None when accepted)
        (signed(old.key_id, old.secret, reading("M1", 1)), None),  # both keys verify during a rotation
        (signed(new.key_id, new.secret, reading("M1", 2)), None),
        (signed(m2.key_id, m2.secret, reading("M2", 1)), None),
        (reading("M1", 3), "unsigned"),
        (reading("M1", 4)[:-1] + b',"pp_kid":"' + old.key_id.encode() + b'"}', "unsigned"),
        (tampered, "bad_signature"),
        (signed(new.key_id, m2.secret, reading("M1", 5)), "bad_signature"),
        (signed("M9.k1", old.secret, reading("M9", 1)), "unknown_device"),
        (signed(revoked.key_id, revoked.secret, reading("M3", 1)), "revoked_key"),
        (signed(old.key_id, old.secret, reading("M2", 3)), "identity_mismatch"),
        (signed(old.key_id, old.secret, b"{not json}"), "not_json"),  # signed, then judged
        # An unclosed object whose last byte closes its channels: the members land inside the channels in the
        # value, but what is judged is the body the device signed (found by the fuzzer).
        (signed(old.key_id, old.secret, b'{"machine_id":"M1","channels":{"c0":1.0}'), "not_json"),
    ]
    batch = RawBatch("telemetry", 0, list(range(100, 100 + len(cases))), [c[0] for c in cases], [b"k"] * len(cases))
    decoder = BatchDecoder(signatures=SignatureCheck(RegistryWatcher(path, reload_s=60), compiled=compiled))
    out = decoder.decode(batch, now_ms=NOW)

    assert sorted((d.offset, d.reason) for d in out.dead_letters) == sorted(
        (100 + i, reason) for i, (_, reason) in enumerate(cases) if reason is not None)
    assert out.readings["kafka_offset"].to_pylist() == [100 + i for i, c in enumerate(cases) if c[1] is None]
    # What the flow keeps is the signed value as it came; what it read is the body the device signed.
    assert out.readings["raw"].to_pylist() == [c[0] for c in cases if c[1] is None]
    assert out.readings["seq"].to_pylist() == [1, 2, 1]
    assert all(d.detail and d.value == cases[d.offset - 100][0] for d in out.dead_letters)
    assert not any(old.secret.hex() in d.detail or new.secret.hex() in d.detail for d in out.dead_letters)


def test_rotation_and_revocation_reach_a_running_decoder_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    registry = KeyRegistry()
    key = registry.create("M1")
    registry.save(path)
    clock = [0.0]
    decoder = BatchDecoder(signatures=SignatureCheck(RegistryWatcher(path, reload_s=5, monotonic=lambda: clock[0])))

    def outcome(key_id: str, secret: bytes, seq: int) -> str:
        out = decoder.decode(RawBatch("t", 0, [seq], [signed(key_id, secret, reading("M1", seq))]), now_ms=NOW)
        return out.dead_letters[0].reason if out.dead_letters else "accepted"

    assert outcome(key.key_id, key.secret, 1) == "accepted"
    rotated = registry.rotate("M1")
    registry.revoke(key.key_id)
    registry.save(path)
    # Not yet looked at again (positive control for the interval): the old key still verifies, the new is unknown.
    assert (outcome(key.key_id, key.secret, 2), outcome(rotated.key_id, rotated.secret, 3)) == (
        "accepted", "unknown_device")
    clock[0] = 5.0
    assert (outcome(key.key_id, key.secret, 4), outcome(rotated.key_id, rotated.secret, 5)) == ("revoked_key", "accepted")
    path.write_text("{broken")  # a bad edit keeps the last good registry
    clock[0] = 10.0
    assert outcome(rotated.key_id, rotated.secret, 6) == "accepted"


def test_a_missing_registry_is_a_clear_start_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist.*plantpulse keys create.*DEVICE_AUTH=off"):
        RegistryWatcher(tmp_path / "none.json")


def test_keys_cli_never_prints_secrets_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    monkeypatch.setenv("DEVICE_KEYS_FILE", str(path))
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "M1", "M2"])
    assert created.exit_code == 0, created.output
    assert [line.split("\t")[:3] for line in created.output.splitlines()] == [
        ["M1.k1", "M1", "active"], ["M2.k1", "M2", "active"]]
    shown = runner.invoke(app, ["keys", "rotate", "M1", "--show-secret"])
    secrets_b64 = {k: base64.urlsafe_b64encode(v.secret).decode() for k, v in KeyRegistry.load(path).keys.items()}
    assert shown.exit_code == 0 and shown.output.split("\t")[3].strip() == secrets_b64["M1.k2"]
    assert runner.invoke(app, ["keys", "revoke", "M1.k1"]).exit_code == 0
    listed = runner.invoke(app, ["keys", "list"])
    assert [line.split("\t")[:3] for line in listed.output.splitlines()] == [
        ["M1.k1", "M1", "revoked"], ["M1.k2", "M1", "active"], ["M2.k1", "M2", "active"]]
    assert not any(secret in created.output + listed.output for secret in secrets_b64.values())
    failed = runner.invoke(app, ["keys", "rotate", "M1", "M1"])
    assert failed.exit_code == 2 and "revoke the old one" in failed.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_compiled_verifier_is_built() -> None:
    """CI builds flows._hmac_batch (a C compiler and libssl-dev); without it the flow verifies in Python."""
    try:
        from flows import _hmac_batch  # type: ignore[attr-defined]
    except ImportError:
        pytest.fail("flows._hmac_batch was not built: install a C compiler and OpenSSL's headers (Debian: gcc "
                    "libssl-dev), then `rm -rf .venv && make test`")
    assert _hmac_batch.check.__doc__


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=200), st.sampled_from(["good", "tampered", "other key",
                                                                                      "short", "upper hex"])),
                min_size=1, max_size=40),
       st.sampled_from([0, 54, 55, 62, 63, 118, 119, 127]))
def test_compiled_and_python_verifiers_agree_with_the_standard_library(
    tmp_path_factory: pytest.TempPathFactory, messages: list[tuple[int, bytes, str]], edge: int
) -> None:
    """Arbitrary bodies (any bytes before the closing brace, even the members' own text) around SHA-256's
    padding boundaries: both verifiers accept exactly the messages the standard library says are good, and
    hand back exactly their bodies."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    registry = KeyRegistry()
    keys = [registry.create(f"M{i}") for i in range(4)]
    registry.save(path)
    values, expected = [], []
    for position, (k, content, how) in enumerate(messages):
        body = (content if position else bytes(edge)) + b"}"  # the signed bytes are body + nothing else
        key = keys[k]
        mac = hmac.new(key.secret, body, hashlib.sha256).hexdigest()
        if how == "other key":
            mac = hmac.new(keys[(k + 1) % 4].secret, body, hashlib.sha256).hexdigest()
        elif how == "short":
            mac = mac[:63]
        elif how == "upper hex":
            mac = mac.upper() if any(c in "abcdef" for c in mac) else mac[:-1] + "G"
        value = signed(key.key_id, key.secret, body, mac)
        if how == "tampered":
            value = b"x" + value
        values.append(value)
        expected.append(how == "good")
    batch = RawBatch("t", 0, list(range(len(values))), values)
    good_bodies = [bytes(edge) + b"}" if i == 0 else messages[i][1] + b"}" for i, good in enumerate(expected) if good]
    for compiled in (True, False):
        verdicts = SignatureCheck(RegistryWatcher(path), compiled=compiled).check(batch, list(range(len(values))))
        assert verdicts.accepted().tolist() == [i for i, good in enumerate(expected) if good]
        assert sorted(i for i, reason, _ in verdicts.refused if reason == "bad_signature") == [
            i for i, good in enumerate(expected) if not good]
        assert verdicts.bodies == b"\n".join(good_bodies)


def test_the_signature_members_are_read_exactly_as_documented(tmp_path: Path) -> None:
    """The members must be the value's last two, in order, without whitespace; the last of each counts. What
    the C check finds must be what the documented Python reading (`split_signed`) finds."""
    path = tmp_path / "keys.json"
    registry = KeyRegistry()
    key = registry.create("M1")
    registry.save(path)
    body = reading("M1", 1)
    mac = hmac.new(key.secret, body, hashlib.sha256).hexdigest()
    kid = key.key_id
    shapes = {  # value -> expected verdict
        "documented": (signed(kid, key.secret, body), "ok"),
        "members swapped": (body[:-1] + f',"pp_sig":"{mac}","pp_kid":"{kid}"}}'.encode(), "unsigned"),
        "spaces": (body[:-1] + f', "pp_kid": "{kid}", "pp_sig": "{mac}"}}'.encode(), "unsigned"),
        "a newline after the object": (signed(kid, key.secret, body) + b"\n", "unsigned"),
        "only the signature member": (body[:-1] + f',"pp_sig":"{mac}"}}'.encode(), "unsigned"),
        "the body holds members of the same names": (
            signed(kid, key.secret, b'{"pp_kid":"M2.k1","pp_sig":"' + b"0" * 64 + b'",' + body[1:]), "ok"),
        "65 characters": (signed(kid, key.secret, body, mac + "0"), "bad_signature"),
        "empty signature": (signed(kid, key.secret, body, ""), "bad_signature"),
        "200 characters": (signed(kid, key.secret, body, mac * 3 + "a" * 8), "bad_signature"),
        "a quote in the key id": (signed(kid + '"', key.secret, body), "unknown_device"),
        "empty key id": (signed("", key.secret, body), "unknown_device"),
        "not bytes": (bytearray(signed(kid, key.secret, body)), "unsigned"),
    }
    values = [value for value, _ in shapes.values()]
    batch = RawBatch("t", 0, list(range(len(shapes))), values)  # type: ignore[arg-type]
    for compiled in (True, False):
        verdicts = SignatureCheck(RegistryWatcher(path), compiled=compiled).check(batch, list(range(len(shapes))))
        found = dict.fromkeys(shapes, "ok")
        for i, reason, _ in verdicts.refused:
            found[list(shapes)[i]] = reason
        assert found == {name: verdict for name, (_, verdict) in shapes.items()}, compiled
        accepted = [value for value, verdict in shapes.values() if verdict == "ok"]
        assert verdicts.bodies == b"\n".join(split_signed(v)[0] for v in accepted)  # type: ignore[index]
        assert verdicts.signers(verdicts.accepted().tolist()).to_pylist() == ["M1"] * len(accepted)
