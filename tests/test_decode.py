"""Batch decode + validation: every bad-input category is dead-lettered with its reason, good records pass."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.decode import BatchDecoder, ValidationLimits
from plantpulse.schema import BinaryValues, RawBatch

NOW = 1_764_000_000_000


def good(i: int, **changes: object) -> dict:
    reading = {
        "v": 1, "machine_id": f"M{i:05d}", "ts": NOW - 1000, "seq": i, "status": "running",
        "temperature": 70.5, "pressure": 5.0, "vibration": 2.0, "rpm": 1500, "power": 30.0,
    }
    reading.update(changes)
    return reading


def dumps(reading: dict) -> bytes:
    return json.dumps(reading).encode()


BAD = {
    "not_json": [b"{not json", b"", b'{"machine_id": "M1", "ts": 1'],
    "schema": [
        dumps({k: v for k, v in good(1).items() if k != "ts"}),
        dumps(good(1, temperature="hot")),
        dumps(good(1, seq=1.5)),
        b"[1, 2, 3]",
        dumps(good(1, rpm=True)),
    ],
    "non_finite": [dumps(good(1, temperature=float("nan"))), dumps(good(1, power=float("inf")))],
    "out_of_range": [dumps(good(1, rpm=-5)), dumps(good(1, temperature=5000)), dumps(good(1, seq=-1))],
    "bad_machine_id": [dumps(good(1, machine_id="bad id!")), dumps(good(1, machine_id=""))],
    "bad_status": [dumps(good(1, status="exploded"))],
    "ts_future": [dumps(good(1, ts=NOW + 86_400_000))],
    "ts_too_old": [dumps(good(1, ts=NOW - 30 * 86_400_000))],
    "oversized": [dumps(good(1, note="x" * 5000))],
    "unsupported_version": [dumps(good(1, v=2))],
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_bad_category_is_dead_lettered_with_reason(reason: str) -> None:
    messages, expected_bad = [], {}
    for i, bad in enumerate(BAD[reason]):
        messages.append(dumps(good(100 + i)))
        expected_bad[len(messages)] = bad
        messages.append(bad)
    messages.append(dumps(good(999)))
    batch = RawBatch("telemetry", 3, [1000 + i for i in range(len(messages))], messages)

    out = BatchDecoder(ValidationLimits()).decode(batch, now_ms=NOW)

    assert sorted((d.offset, d.reason) for d in out.dead_letters) == sorted(
        (1000 + position, reason) for position in expected_bad
    )
    for letter in out.dead_letters:
        assert letter.value == expected_bad[letter.offset - 1000]
        assert letter.partition == 3 and letter.topic == "telemetry" and letter.detail
    good_offsets = [1000 + i for i in range(len(messages)) if i not in expected_bad]
    assert out.readings["kafka_offset"].to_pylist() == good_offsets
    assert out.readings["raw"].to_pylist() == [messages[o - 1000] for o in good_offsets]


def test_extra_fields_multiline_json_and_nulls_are_accepted() -> None:
    pretty = json.dumps(good(2, extra={"nested": [1, 2]}), indent=2).encode()
    dropout = dumps(good(3, temperature=None, pressure=None))
    batch = RawBatch("t", 0, [0, 1, 2], [dumps(good(1, firmware="1.2.3")), pretty, dropout])
    out = BatchDecoder().decode(batch, now_ms=NOW)
    assert out.dead_letters == []
    assert out.readings["machine_id"].to_pylist() == ["M00001", "M00002", "M00003"]
    assert out.readings["temperature"].to_pylist() == [70.5, 70.5, None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)), max_size=20))
def test_arbitrary_bytes_never_crash_and_nothing_is_lost(garbage: list[bytes]) -> None:
    messages = [dumps(good(1))] + garbage + [dumps(good(2))]
    batch = RawBatch("t", 0, list(range(len(messages))), messages)
    out = BatchDecoder().decode(batch, now_ms=NOW)
    accounted = sorted(out.readings["kafka_offset"].to_pylist() + [d.offset for d in out.dead_letters])
    assert accounted == list(range(len(messages)))
    assert {0, len(messages) - 1} <= set(out.readings["kafka_offset"].to_pylist())


def _as_arrow(batch: RawBatch, pad: int = 0) -> RawBatch:
    """The same poll with its bodies and keys in Arrow, as a recording's polls carry them (`pad` leading
    messages are sliced off, so the arrays start at an offset into their buffers)."""
    values = pa.array([b"pad"] * pad + list(batch.values), pa.binary()).slice(pad)
    keys = pa.array([b"pad"] * pad + list(batch.keys or []), pa.binary()).slice(pad)
    return RawBatch(batch.topic, batch.partition, batch.offsets, BinaryValues(values), BinaryValues(keys))


def _outcome(batch: RawBatch) -> tuple[list, list]:
    out = BatchDecoder().decode(batch, now_ms=NOW)
    letters = [(d.offset, d.reason, d.detail, d.value, d.key) for d in out.dead_letters]
    return out.readings.to_pylist(), letters


def test_arrow_bodies_decode_exactly_as_python_bytes() -> None:
    messages = [dumps(good(0))] + [bad for bads in BAD.values() for bad in bads]
    messages += [json.dumps(good(5), indent=2).encode(), b"\r\n" + dumps(good(6)), dumps(good(7, channels={"flow": 2.5}))]
    batch = RawBatch("t", 1, list(range(50, 50 + len(messages))), messages, [f"k{i}".encode() for i in range(len(messages))])
    readings, letters = _outcome(batch)
    assert len(readings) == 4 and len(readings) + len(letters) == len(messages)  # the fixture covers both sides
    assert _outcome(_as_arrow(batch, pad=3)) == (readings, letters)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)), max_size=20),
       st.integers(0, 4))
def test_arrow_bodies_match_python_bytes_on_arbitrary_input(garbage: list[bytes], pad: int) -> None:
    messages = [dumps(good(1))] + garbage + [dumps(good(2))]
    batch = RawBatch("t", 0, list(range(len(messages))), messages, [b"key"] * len(messages))
    assert _outcome(_as_arrow(batch, pad)) == _outcome(batch)
