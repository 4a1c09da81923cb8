"""Hostile bytes: every decoder that reads what the storage host controls.

Each decoder gets Hypothesis inputs: random bytes, and valid encodings with
bit flips, truncations, insertions and spliced garbage.  Only the documented
error may come out (:class:`~persist.IntegrityError`; ``ValueError`` for the
key decoder and the journal parser, whose callers turn it into
IntegrityError); never another exception, a hang (Hypothesis deadline), a
huge allocation (tracemalloc peak), or a wrong value (where a decoder
accepts mutated bytes, they must be a canonical encoding of what it
returned).

The AEAD-sealed decoders (row envelope, node/row head, root record, journal)
are fuzzed twice: on the ciphertext the host can change (always refused),
and on the plaintext sealed correctly around fuzzed bytes (what a bug or a
compromised writer could produce): defense in depth.

atheris is not used: it has no wheel for this interpreter and builds against
a clang toolchain with libFuzzer, which the machine lacks (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist
from persist.btree.node import decode_node, encode_internal, encode_leaf
from persist.db.keys import decode_key, encode_key
from persist.db.rootlog import decode_segment, encode_segment
from persist.db.treestore import decode_count
from persist.ebs import KdfParams
from persist.ebs.journal import Journal
from persist.ebs.keys import KeyRing
from persist.ebs.keyslot import parse_keyslot, read_keyslots
from persist.ebs.layout import NO_TABLE, RowKind
from persist.ebs.root import open_root
from persist.ebs.rows import open_envelope, open_head, seal_envelope
from persist.errors import IntegrityError
from persist.kvs.memory import MemoryStore

from .conftest import record, scale

EXAMPLES = scale(400, 20_000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # a hang fails the test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
SEEN: dict[str, int] = {}


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings, damaged: flips, cuts, insertions, garbage; and raw bytes."""

    @st.composite
    def damage(draw: Any) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "splice", "byte"]))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte" and data:
                data[pos] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x1B, 0x5B, 0x9F, 0xBF]))
            elif op == "cut":
                del data[pos:]
            elif op == "insert":
                data[pos:pos] = draw(st.binary(max_size=16))
            else:
                data[pos : pos + draw(st.integers(0, 8))] = draw(st.binary(max_size=64))
        return bytes(data)

    return st.one_of(damage(), st.binary(max_size=4096))


def _fuzz(
    name: str,
    seeds: list[bytes],
    decode: Callable[[bytes], Any],
    errors: tuple[type[BaseException], ...] = (IntegrityError,),
    canonical: Callable[[Any], bytes] | None = None,
) -> None:
    for seed in seeds:  # the seeds themselves decode
        value = decode(seed)
        if canonical is not None:
            assert canonical(value) == seed
    count = [0]
    tracemalloc.start()

    @FUZZ
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        count[0] += 1
        try:
            value = decode(data)
        except errors:
            return
        if canonical is not None:
            assert canonical(value) == data, "accepted non-canonical bytes: a wrong value"

    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 * 1024, f"{name}: {peak} bytes allocated for one input"
    SEEN[name] = SEEN.get(name, 0) + count[0]
    record(f"fuzz.inputs.{name}", SEEN[name])
    record(f"fuzz.peak_traced_MiB.{name}", round(peak / 2**20, 1))


MASTER = os.urandom(32)
RING = KeyRing(MASTER)
TABLE = RING.table(b"fuzz-table")


def _seal(cipher: Any, kind: RowKind, table_id: bytes, key: bytes, plain: bytes) -> bytes:
    return seal_envelope(cipher, kind, table_id, key, plain, os.urandom)


def test_tree_nodes() -> None:
    leaf = encode_leaf([b"a", b"b" * 40], [b"1", b"x" * 200])
    internal = encode_internal(1, [b"a", b"m"], [b"\x01" * 32, b"\x02" * 32], [3, 4])
    _fuzz("tree_node", [leaf, internal], decode_node)


def test_count_tree_entries() -> None:
    _fuzz("count_tree_entry", [(2).to_bytes(8, "big"), (70000).to_bytes(8, "big")], decode_count)


def test_root_log_segments() -> None:
    seg = encode_segment({"t": {b"k": b"v" * 30, b"gone": None}, "u": {b"\x00": b""}})
    # names of many UTF-8 bytes, so that damage lands in a name (not only in values)
    names = encode_segment({"tablé ñame " * 8: {b"k": b"v"}, "€" * 30: {b"": None}})
    _fuzz("root_log_segment", [seg, names], decode_segment)


def test_key_encoding() -> None:
    seeds = [encode_key(k) for k in ["s", b"b\x00", -5, 2**70, ("a", 1, (b"", -(2**65)))]]
    _fuzz("key_encoding", seeds, decode_key, (ValueError,), canonical=encode_key)


def test_value_codec(tmp_path: Any) -> None:
    db = persist.open(
        f"memory:fuzz-{os.getpid()}",
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
    )
    try:
        codec = db._codec
        import datetime
        import decimal
        import fractions
        import uuid

        values = [
            {"a": [1, 2.5, None], "b": (b"x", frozenset({1}))},
            decimal.Decimal("1.10"),
            fractions.Fraction(1, 3),
            uuid.uuid4(),
            datetime.datetime.now(datetime.UTC),
            "text" * 50,
            2**100,
            {1, 2, 3},
        ]
        seeds = [codec.encode(v) for v in values]
        # an object reference the store does not hold is a documented NotFound-like
        # failure of the read; anything the codec raises must be a PersistError
        _fuzz("value_codec", seeds, codec.decode, (persist.PersistError,))
    finally:
        db.close()


def test_keyslots() -> None:
    store = MemoryStore()
    persist.ebs.EncryptedStore.create(
        store, "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
    )
    slots = read_keyslots(store.get)
    seeds = list(slots.values())
    index = next(iter(slots))
    _fuzz("keyslot", seeds, lambda data: parse_keyslot(index, data))


def test_row_envelope_ciphertext() -> None:
    key = os.urandom(32)
    seeds = [_seal(TABLE.cipher, RowKind.ROW, TABLE.id, key, os.urandom(n)) for n in (0, 64, 1000)]
    _fuzz_refused(
        "row_envelope", seeds, lambda d: open_envelope(TABLE.cipher, RowKind.ROW, TABLE.id, key, d)
    )


def _fuzz_refused(name: str, seeds: list[bytes], decode: Callable[[bytes], Any]) -> None:
    """Ciphertext: every change at all must be refused (no seed decodes when damaged)."""
    originals = {s: decode(s) for s in seeds}

    def strict(data: bytes) -> Any:
        value = decode(data)
        assert data in originals and value == originals[data], "a changed row was accepted"
        return value

    _fuzz(name, seeds, strict)


def test_root_record_plaintext_and_ciphertext() -> None:
    slot_key = RING.root_slot_key(1)
    plain_seeds = [struct.pack(">Q", 1) + os.urandom(60), bytes(120)]

    def sealed_plain(plain: bytes) -> Any:
        return open_root(RING, 1, _seal(RING.root_cipher, RowKind.ROOT, NO_TABLE, slot_key, plain))

    with pytest.raises(IntegrityError):
        sealed_plain(plain_seeds[0])
    count = [0]

    @FUZZ
    @given(st.one_of(st.binary(max_size=2048), mutated(plain_seeds)))
    def run(plain: bytes) -> None:
        count[0] += 1
        with contextlib.suppress(IntegrityError):
            sealed_plain(plain)

    run()
    record("fuzz.inputs.root_record_plaintext", count[0])

    real = _seal(RING.root_cipher, RowKind.ROOT, NO_TABLE, slot_key, bytes(64))
    with pytest.raises(IntegrityError):
        open_root(RING, 1, real[:-1])
    _fuzz_refused(
        "root_record_ciphertext",
        [real],
        lambda d: open_envelope(RING.root_cipher, RowKind.ROOT, NO_TABLE, slot_key, d),
    )


def test_row_head_plaintext() -> None:
    key = os.urandom(32)
    count = [0]

    @FUZZ
    @given(st.binary(max_size=1024))
    def run(plain: bytes) -> None:
        count[0] += 1
        row = _seal(TABLE.cipher, RowKind.NODE, TABLE.id, key, plain)
        with contextlib.suppress(IntegrityError):
            open_head(TABLE, RowKind.NODE, key, row)

    run()
    record("fuzz.inputs.row_head_plaintext", count[0])


def test_rekey_journal_plaintext() -> None:
    count = [0]

    @FUZZ
    @given(st.binary(max_size=512))
    def run(plain: bytes) -> None:
        count[0] += 1
        # read_journal turns these into IntegrityError
        with contextlib.suppress(ValueError, struct.error):
            Journal.decode(plain)

    run()
    record("fuzz.inputs.rekey_journal_plaintext", count[0])


def test_replica_lease_records() -> None:
    """The lease row a replica's host stores (persist/remote/leaserecord.py)."""
    from persist.remote.leaserecord import LeaseRecord

    held = LeaseRecord.first(None, "host-a", 30_000, 1_700_000_000_000, b"\x07" * 16)
    seeds = [held.encode(), held.renewed(30_000, 1_700_000_010_000).released(1).encode()]
    _fuzz("replica_lease_record", seeds, LeaseRecord.parse)


def test_replica_dir_state_files() -> None:
    """The state-log files of a dir replica (persist/remote/dirstate.py)."""
    from persist.remote.dirstate import DirState

    genesis = DirState(0, bytes(32), bytes(32), None, {})
    one, state = genesis.successor(b"lease bytes", {b"\x00root": b"r" * 40, b"\x00gone": None})
    two, _ = state.successor(None, {b"\x00k": b""})
    _fuzz("replica_dir_state", [one], lambda data: DirState.parse(data, 1))
    _fuzz("replica_dir_state_2", [two], lambda data: DirState.parse(data, 2))
