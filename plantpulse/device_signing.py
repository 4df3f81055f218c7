"""Device signatures on the wire: how a device signs a reading, and how the flow finds the signature.

A device builds its reading as a JSON object, `body` (UTF-8 bytes that end with its closing `}` and hold at
least one member), computes `mac = HMAC-SHA256(secret, body)` over exactly those bytes, and sends as the
Kafka message value the same object with two members appended, last and in this order, with no whitespace:

    value = body[:-1] + b',"pp_kid":"' + key_id + b'","pp_sig":"' + hex(mac) + b'"}'

- `key_id`: the key id (ASCII, no quote), as `plantpulse keys create` printed it, e.g. `M00042.k1`;
- `hex(mac)`: 64 lower-case hex characters; `secret` is the key's 32 secret bytes (stored base64url-encoded
  in the registry; decode before use).

In C the device writes its body into a buffer, `HMAC(EVP_sha256(), secret, 32, body, body_len, mac, NULL)`,
then overwrites the closing `}` with the two members and a new `}`: nothing is copied or re-serialised. The
value stays one JSON object (any JSON reader reads the reading and two extra string members), and the signed
bytes are recovered exactly: everything before `,"pp_kid":"`, then `}`. So nothing is normalised: a value
re-serialised by a JSON library (other spacing, member order) no longer verifies.

The signature travels in the value, not in Kafka headers: a consumer that reads headers pays for a list and
two tuples per message (confluent-kafka's `Message.headers()` costs about ten times its `value()`:
`python -m bench.kafka_headers`), which the flow's verification cost would carry.

The signed bytes contain `machine_id`, `ts` and `seq`, so a signature cannot be moved to another machine's
reading, and a re-sent reading is a duplicate (same `seq`) or too old (`ts`). A key belongs to one machine:
a reading signed with machine A's key that names machine B is refused (`identity_mismatch`).

This module imports nothing of PlantPulse's.

>>> secret = bytes(range(32))  # the same as `printf %s BODY | openssl dgst -sha256 -mac HMAC -macopt hexkey:0001..1f`
>>> mac(secret, b'{"machine_id": "M1"}')
b'54e2f950928691f1c6ec13e7977ae21be6d3d3427aa2917f3ac1673c1119ec02'
>>> value = sign_reading("M1.k1", secret, b'{"machine_id": "M1"}')
>>> value
b'{"machine_id": "M1","pp_kid":"M1.k1","pp_sig":"54e2f950928691f1c6ec13e7977ae21be6d3d3427aa2917f3ac1673c1119ec02"}'
>>> split_signed(value) == (b'{"machine_id": "M1"}', b"M1.k1", mac(secret, b'{"machine_id": "M1"}'))
True
"""

from __future__ import annotations

import base64
import hmac

KEY_ID_MEMBER = b',"pp_kid":"'  # opens the key id member (after the body's last member)
SIGNATURE_MEMBER = b'","pp_sig":"'  # closes the key id, opens the signature
END = b'"}'  # closes the signature and the object
SIGNATURE_HEX = 64
SECRET_BYTES = 32


def mac(secret: bytes, body: bytes) -> bytes:
    """The `pp_sig` text for `body`: hex HMAC-SHA256, as ASCII bytes."""
    return hmac.digest(secret, body, "sha256").hex().encode()


def sign_reading(key_id: str | bytes, secret: bytes, body: bytes) -> bytes:
    """The message value a device sends for `body` (a JSON object ending with `}`), signed by `key_id`."""
    if not body.endswith(b"}"):
        raise ValueError(f"sign_reading: the body must be a JSON object ending with '}}', got ...{body[-20:]!r}")
    key_id = key_id.encode() if isinstance(key_id, str) else key_id
    return b"".join((body[:-1], KEY_ID_MEMBER, key_id, SIGNATURE_MEMBER, mac(secret, body), END))


def split_signed(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(body, key id, signature text) of a signed value, or None when it carries no signature members.

    The value must end with `"}`; the signature text runs from the last `","pp_sig":"` to there, the key id
    from the last `,"pp_kid":"` before that. The signature's length is the caller's check. The flow's C check
    (`flows/_hmac_batch.c`) reads the value the same way, without copying it.

    >>> split_signed(b'{"a":1,"pp_kid":"K","pp_sig":"ab"}')
    (b'{"a":1}', b'K', b'ab')
    >>> split_signed(b'{"a":1}') is None, split_signed(b'{"a":1,"pp_sig":"ab"}') is None
    (True, True)
    """
    n = len(value)
    if not value.endswith(END):
        return None
    signature_at = value.rfind(SIGNATURE_MEMBER, 0, n - len(END))
    if signature_at < 0:
        return None
    key_id_at = value.rfind(KEY_ID_MEMBER, 0, signature_at)
    if key_id_at < 0:
        return None
    key_id = value[key_id_at + len(KEY_ID_MEMBER):signature_at]
    return value[:key_id_at] + b"}", key_id, value[signature_at + len(SIGNATURE_MEMBER):n - len(END)]


def encode_secret(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).decode()


def decode_secret(text: str) -> bytes:
    """A registry secret back to bytes; ValueError names the problem."""
    try:
        secret = base64.urlsafe_b64decode(text.encode())
    except (ValueError, TypeError) as error:
        raise ValueError(f"device key secret is not base64url: {error}") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"device key secret has {len(secret)} bytes, expected {SECRET_BYTES}")
    return secret
