"""The lease record's byte format: round trips, and nothing malformed gets through.

The checksum is unkeyed, so a host can recompute it: every field check must
hold on its own, which the tests below make sure of by re-sealing each
mangled record with a valid checksum.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persist.errors import IntegrityError
from persist.remote.leaserecord import _FIXED, LeaseRecord, _checksum, check_holder

RECORD = LeaseRecord(
    "host-a:123:beef", 7, 12, True, 30_000, 1_700_000_000_000, 1_700_000_030_000, b"N" * 16
)


def _seal(body: bytes) -> bytes:
    return body + _checksum(body)


def _fields(record: LeaseRecord = RECORD) -> list[object]:
    return list(_FIXED.unpack_from(record.encode()))


def _with(index: int, value: object, holder: bytes = RECORD.holder.encode()) -> bytes:
    fields = _fields()
    fields[index] = value
    return _seal(_FIXED.pack(*fields) + holder)


def test_round_trip_and_transitions() -> None:
    assert LeaseRecord.parse(RECORD.encode()) == RECORD
    assert len(RECORD.encode()) == 61 + len(RECORD.holder) + 16
    renewed = RECORD.renewed(10_000, 1_700_000_005_000)
    assert (renewed.generation, renewed.serial, renewed.held) == (7, 13, True)
    assert renewed.expires_ms == 1_700_000_015_000 and renewed.same_acquisition(RECORD)
    released = renewed.released(1_700_000_006_000)
    assert (released.generation, released.serial, released.held) == (7, 14, False)
    assert released.expires_ms == released.written_ms
    after = LeaseRecord.first(released, "b", 5_000, 1, b"M" * 16)
    assert (after.generation, after.serial, after.holder) == (8, 15, "b")
    assert not after.same_acquisition(released)
    first = LeaseRecord.first(None, "b", 5_000, 1, b"M" * 16)
    assert (first.generation, first.serial) == (1, 1)
    for record in (renewed, released, after, first):
        assert LeaseRecord.parse(record.encode()) == record


@pytest.mark.parametrize("position", range(61 + 15 + 16))
def test_every_flipped_bit_is_refused(position: int) -> None:
    data = bytearray(RECORD.encode())
    data[position] ^= 0x10
    with pytest.raises(IntegrityError):
        LeaseRecord.parse(bytes(data))


@pytest.mark.parametrize(
    "index, value",
    [
        (0, b"PSLX"),  # magic
        (1, 2),  # version
        (2, 0),  # state
        (2, 3),
        (3, 1),  # reserved
        (4, 0),  # generation 0
        (5, 6),  # serial below generation
        (6, 0),  # lease time 0
        (6, 86_400_001),  # more than a day
        (8, 1_700_000_030_001),  # expiry inconsistent with written + lease
        (10, 14),  # holder length disagrees with the bytes that follow
        (10, 16),
    ],
)
def test_each_field_is_checked_on_its_own(index: int, value: object) -> None:
    with pytest.raises(IntegrityError):
        LeaseRecord.parse(_with(index, value))


@pytest.mark.parametrize("holder", [b"has space", b"tab\there", b"\x1b[31mred", "é".encode(), b""])
def test_holder_ids_are_printable_ascii(holder: bytes) -> None:
    with pytest.raises(IntegrityError):
        LeaseRecord.parse(_with(10, len(holder), holder))
    with pytest.raises((ValueError, UnicodeDecodeError)):
        check_holder(holder.decode())


def test_released_records_expire_when_written() -> None:
    released = RECORD.released(RECORD.written_ms)
    fields = _fields(released)
    fields[8] = released.written_ms + released.lease_ms  # claims to run on
    with pytest.raises(IntegrityError):
        LeaseRecord.parse(_seal(_FIXED.pack(*fields) + released.holder.encode()))


def test_truncated_and_extended_records_are_refused() -> None:
    data = RECORD.encode()
    for cut in range(len(data)):
        with pytest.raises(IntegrityError):
            LeaseRecord.parse(data[:cut])
    with pytest.raises(IntegrityError):
        LeaseRecord.parse(_seal(data[:-16] + b"x"))


@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_integrity_error(data: bytes) -> None:
    try:
        record = LeaseRecord.parse(data)
    except IntegrityError:
        return
    assert record.encode() == data


@given(
    holder=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
    ),
    generation=st.integers(1, 2**40),
    extra=st.integers(0, 2**40),
    lease_ms=st.integers(1, 86_400_000),
    written=st.integers(0, 2**62),
    held=st.booleans(),
    nonce=st.binary(min_size=16, max_size=16),
)
def test_every_valid_record_round_trips(
    holder: str, generation: int, extra: int, lease_ms: int, written: int, held: bool, nonce: bytes
) -> None:
    expires = written + lease_ms if held else written
    record = LeaseRecord(
        holder, generation, generation + extra, held, lease_ms, written, expires, nonce
    )
    assert LeaseRecord.parse(record.encode()) == record
    assert struct.unpack_from(">I", record.encode(), 24)[0] == lease_ms
