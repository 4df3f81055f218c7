"""Device signatures on the wire: what a device sends beside each reading, and how the signature is computed.

Each Kafka message on the `telemetry` topic carries two headers:

- `pp-kid`: the key id (ASCII), as `plantpulse keys create` printed it, e.g. `M00042.k1`;
- `pp-sig`: the signature, 64 lower-case hex characters (ASCII) of HMAC-SHA256(secret, value), where
  `secret` is the key's 32 secret bytes (stored base64url-encoded in the registry; decode before use) and
  `value` is the message value exactly as sent: the JSON bytes of the reading, byte for byte. Nothing is
  normalised, so a device implements it in C as one `HMAC(EVP_sha256(), secret, 32, value, len, mac, NULL)`
  over the buffer it hands to the Kafka producer, then hex-encodes `mac`.

The signed bytes contain `machine_id`, `ts` and `seq`, so a signature cannot be moved to another machine's
reading, and a re-sent reading is a duplicate (same `seq`) or too old (`ts`). A key belongs to one machine:
a reading signed with machine A's key that names machine B is refused (`identity_mismatch`).

This module imports nothing of PlantPulse's.

>>> secret = bytes(range(32))  # the same as `printf %s VALUE | openssl dgst -sha256 -mac HMAC -macopt hexkey:0001..1f`
>>> sign(secret, b'{"machine_id": "M1"}')
b'54e2f950928691f1c6ec13e7977ae21be6d3d3427aa2917f3ac1673c1119ec02'
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from operator import itemgetter

KEY_ID_HEADER = "pp-kid"
SIGNATURE_HEADER = "pp-sig"
SECRET_BYTES = 32


def sign(secret: bytes, value: bytes) -> bytes:
    """The `pp-sig` header value for `value`: hex HMAC-SHA256, as ASCII bytes."""
    return hmac.digest(secret, value, "sha256").hex().encode()


def signature_headers(key_id: str, secret: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """The two headers a device sends with `value`."""
    return [(KEY_ID_HEADER, key_id.encode()), (SIGNATURE_HEADER, sign(secret, value))]


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


Headers = Sequence[tuple[str, "bytes | None"]] | None


def signature_fields(headers: Sequence[Headers]) -> tuple[list[bytes | None], list[bytes | None]]:
    """Each message's `pp-kid` and `pp-sig` values (None where missing) from its Kafka headers, as two lists
    (the flow's C check reads the headers itself; this is the Python fallback's reading, and names refusals).
    Headers in the documented order are read without Python work per message; others are looked up by name.

    >>> signature_fields([[("pp-kid", b"M1.k1"), ("pp-sig", b"ab")], None, [("pp-sig", b"cd"), ("x", b"")]])
    ([b'M1.k1', None, None], [b'ab', None, b'cd'])
    """
    try:
        first, second = list(map(itemgetter(0), headers)), list(map(itemgetter(1), headers))  # type: ignore[arg-type]
        if list(map(itemgetter(0), first)).count(KEY_ID_HEADER) == len(first) and \
                list(map(itemgetter(0), second)).count(SIGNATURE_HEADER) == len(second):
            return list(map(itemgetter(1), first)), list(map(itemgetter(1), second))
    except (TypeError, IndexError):  # a message without headers, or with fewer than two
        pass
    key_ids: list[bytes | None] = []
    signatures: list[bytes | None] = []
    for fields in headers:
        named = dict(fields or ())
        key_ids.append(named.get(KEY_ID_HEADER))
        signatures.append(named.get(SIGNATURE_HEADER))
    return key_ids, signatures
