"""The kvs conformance suite: every backend, ours or a third party's, must pass it.

Use it by subclassing :class:`StoreConformance` in a pytest module and giving
the class a ``store_factory`` fixture that returns a :class:`StoreFactory`
for a fresh, empty location::

    class TestMyBackend(StoreConformance):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return SimpleFactory(lambda **kw: MyStore(tmp_path / "db", **kw))

:func:`oracle_state_machine` builds a Hypothesis state machine that drives a
backend and the memory oracle with the same operations and compares them.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..errors import ClosedError, ReadOnlyError, StoreLocked
from ..kvs.base import MAX_KEY_SIZE, Store
from ..kvs.memory import MemoryStore
from .faults import FaultyStore, InjectedFault

__all__ = ["SimpleFactory", "StoreConformance", "StoreFactory", "oracle_state_machine"]

#: Keys that probe unsigned byte order: empty, NULs, prefixes, the sign bit, 0xff runs.
ORDER_PROBES = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"\x7f",
    b"\x7f\xff",
    b"\x80",
    b"\x80\x00",
    b"a",
    b"a\x00",
    b"ab",
    b"b",
    b"\xfe",
    b"\xff",
    b"\xff\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
]


@dataclass
class StoreFactory:
    """Opens the one location a test works on, as often as the test asks.

    ``persistent``: the contents survive close and reopen.
    ``reader_with_writer``: a read-only handle may be open while a writer is.
    """

    open: Callable[..., Store]
    persistent: bool = True
    reader_with_writer: bool = True


SimpleFactory = StoreFactory


class StoreConformance:
    """The contract of :mod:`persist.kvs.base`, as tests.  Needs a ``store_factory`` fixture."""

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Iterator[Store]:
        with store_factory.open() as s:
            yield s

    # -- ordering and scans ------------------------------------------------------

    def test_empty_store(self, store: Store) -> None:
        assert store.get(b"missing") is None
        assert list(store.scan()) == []

    def test_unsigned_byte_order(self, store: Store) -> None:
        keys = ORDER_PROBES[:]
        random.Random(1).shuffle(keys)
        store.write({k: b"v" + k for k in keys})
        assert [k for k, _ in store.scan()] == sorted(ORDER_PROBES)
        for k in ORDER_PROBES:
            assert store.get(k) == b"v" + k

    def test_bounded_scans(self, store: Store) -> None:
        store.write((k, k) for k in ORDER_PROBES)
        ordered = sorted(ORDER_PROBES)
        bounds = [*ORDER_PROBES, b"\x00\x00\x00", b"c", b"\xff\xff\xff\xff"]
        for start in bounds:
            for stop in [None, *bounds]:
                want = [k for k in ordered if k >= start and (stop is None or k < stop)]
                got = [k for k, _ in store.scan(start, stop)]
                assert got == want, (start, stop)

    def test_scan_is_a_snapshot(self, store: Store) -> None:
        store.write({b"k%03d" % i: b"old" for i in range(100)})
        it = store.scan()
        first = next(it)
        store.write({b"k%03d" % i: b"new" for i in range(100) if i != 50}, deletes=[b"k050"])
        rest = list(it)
        assert first == (b"k000", b"old")
        assert len(rest) == 99 and all(v == b"old" for _, v in rest)
        assert store.get(b"k050") is None

    # -- batches -----------------------------------------------------------------

    def test_overwrite_and_delete(self, store: Store) -> None:
        store.write({b"a": b"1", b"b": b"2"})
        store.write({b"a": b"3"}, deletes=[b"b", b"never-existed"])
        assert list(store.scan()) == [(b"a", b"3")]
        store.write(deletes=[b"a"])
        assert list(store.scan()) == []

    def test_puts_as_pairs_last_wins_and_empty_values(self, store: Store) -> None:
        store.write([(b"k", b"first"), (b"e", b""), (b"k", b"last")])
        assert store.get(b"k") == b"last"
        assert store.get(b"e") == b""
        store.write()  # an empty batch is allowed and changes nothing
        assert len(list(store.scan())) == 2

    def test_put_and_delete_of_one_key_is_refused(self, store: Store) -> None:
        store.write({b"k": b"old"})
        with pytest.raises(ValueError):
            store.write({b"x": b"1", b"k": b"new"}, deletes=[b"k"])
        assert list(store.scan()) == [(b"k", b"old")]

    @pytest.mark.parametrize(
        "puts, deletes",
        [
            ({"str-key": b"v"}, ()),
            ({b"k": "str-value"}, ()),
            ({b"k": bytearray(b"v")}, ()),
            ([(b"a", b"1"), (memoryview(b"b"), b"2")], ()),
            ([(b"a", b"1"), (b"b", None)], ()),
            ([(b"a", b"1"), (b"b",)], ()),
            ({b"a": b"1"}, ["not-bytes"]),
        ],
    )
    def test_wrong_types_raise_and_write_nothing(
        self, store: Store, puts: object, deletes: object
    ) -> None:
        store.write({b"keep": b"1"})
        with pytest.raises(TypeError):
            store.write(puts, deletes)  # type: ignore[arg-type]
        assert list(store.scan()) == [(b"keep", b"1")]
        with pytest.raises(TypeError):
            store.get("keep")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.scan(1)  # type: ignore[arg-type]

    def test_overlong_key_is_refused(self, store: Store) -> None:
        store.write({b"k" * MAX_KEY_SIZE: b"max is fine"})
        with pytest.raises(ValueError):
            store.write({b"k" * (MAX_KEY_SIZE + 1): b"v"})
        assert store.get(b"k" * MAX_KEY_SIZE) == b"max is fine"

    @pytest.mark.parametrize("k", [0, 1, 500, 999])
    def test_failure_mid_batch_leaves_no_trace(self, store_factory: StoreFactory, k: int) -> None:
        with store_factory.open() as inner:
            inner.write({b"a": b"old", b"z": b"old"})
            faulty = FaultyStore(inner)
            faulty.fail_next_write(mid_batch=k)
            puts = [(b"a", b"new"), *((b"n%04d" % i, b"new") for i in range(1000))]
            with pytest.raises(InjectedFault):
                faulty.write(puts, deletes=[b"z"])
            assert list(inner.scan()) == [(b"a", b"old"), (b"z", b"old")]
            faulty.write({b"after": b"ok"})  # the store is still usable
            assert inner.get(b"after") == b"ok"
        if store_factory.persistent:
            with store_factory.open() as again:
                assert list(again.scan()) == [(b"a", b"old"), (b"after", b"ok"), (b"z", b"old")]

    # -- persistence and size ----------------------------------------------------

    def test_persists_across_reopen(self, store_factory: StoreFactory) -> None:
        with store_factory.open() as s:
            s.write({b"a": b"1", b"b": b"2"})
            s.write({b"c": b"3"}, deletes=[b"a"])
        with store_factory.open() as s:
            got = list(s.scan())
        assert got == ([(b"b", b"2"), (b"c", b"3")] if store_factory.persistent else [])

    def test_16_mib_value(self, store_factory: StoreFactory) -> None:
        big = random.Random(16).randbytes(16 * 1024 * 1024)
        with store_factory.open() as s:
            s.write({b"big": big, b"small": b"s"})
            assert s.get(b"big") == big
        if store_factory.persistent:
            with store_factory.open() as s:
                assert s.get(b"big") == big

    def test_100k_keys(self, store_factory: StoreFactory) -> None:
        rng = random.Random(100)
        keys = [rng.randbytes(rng.randint(1, 24)) for _ in range(100_000)]
        model = {k: k[::-1] for k in keys}
        with store_factory.open(durable=False) as s:
            items = list(model.items())
            for i in range(0, len(items), 20_000):
                s.write(items[i : i + 20_000])
            assert [k for k, _ in s.scan()] == sorted(model)
            for k in rng.sample(keys, 1000):
                assert s.get(k) == model[k]

    # -- lifecycle and sharing ---------------------------------------------------

    def test_use_after_close(self, store_factory: StoreFactory) -> None:
        s = store_factory.open()
        s.write({b"k": b"v"})
        with s:
            pass
        assert s.closed
        s.close()  # idempotent
        with pytest.raises(ClosedError):
            s.get(b"k")
        with pytest.raises(ClosedError):
            s.scan()
        with pytest.raises(ClosedError):
            s.write({b"k": b"v2"})
        assert "closed" in repr(s)

    def test_second_writer_is_locked_out(self, store_factory: StoreFactory) -> None:
        with store_factory.open() as first:
            first.write({b"k": b"v"})
            with pytest.raises(StoreLocked):
                store_factory.open()
            assert first.get(b"k") == b"v"
        with store_factory.open() as again:  # the lock is released by close
            assert again.get(b"k") == (b"v" if store_factory.persistent else None)

    def test_read_only_handle(self, store_factory: StoreFactory) -> None:
        if not store_factory.persistent:
            pytest.fail("set persistent=True or override this test for your backend")
        with store_factory.open() as s:
            s.write({b"k": b"v"})
        with store_factory.open(read_only=True) as r:
            assert r.get(b"k") == b"v"
            with pytest.raises(ReadOnlyError):
                r.write({b"k": b"x"})
            if store_factory.reader_with_writer:
                with store_factory.open() as w:
                    w.write({b"k": b"w"})
                    assert r.get(b"k") == b"w"
            else:
                with pytest.raises(StoreLocked):
                    store_factory.open()

    # -- pinned snapshots (contract rule 9) ---------------------------------------

    def test_snapshot_is_pinned_across_writes(self, store: Store) -> None:
        store.write({b"k%03d" % i: b"old" for i in range(600)})
        with store.snapshot() as snap:
            store.write({b"k%03d" % i: b"new" for i in range(300)}, deletes=[b"k500"])
            store.write({b"added": b"x"})
            assert snap.get(b"k000") == b"old"
            assert snap.get(b"k500") == b"old"
            assert snap.get(b"added") is None
            got = list(snap.scan())
            assert len(got) == 600 and all(v == b"old" for _, v in got)
            assert [k for k, _ in snap.scan(b"k100", b"k103")] == [b"k100", b"k101", b"k102"]
            assert list(snap.scan(b"k5", b"k4")) == []
        assert store.get(b"k000") == b"new" and store.get(b"k500") is None
        assert snap.closed
        with pytest.raises(ClosedError):
            snap.get(b"k000")

    def test_snapshot_sees_what_was_written_before_it(self, store: Store) -> None:
        store.write({b"a": b"1"})
        first = store.snapshot()
        store.write({b"a": b"2"})
        second = store.snapshot()
        try:
            assert first.get(b"a") == b"1" and second.get(b"a") == b"2"
        finally:
            first.close()
            second.close()

    def test_snapshots_read_from_many_threads(self, store: Store) -> None:
        store.write({b"%04d" % i: b"%d" % i for i in range(1000)})
        errors: list[BaseException] = []
        with store.snapshot() as snap:

            def reader(seed: int) -> None:
                rng = random.Random(seed)
                try:
                    for _ in range(200):
                        i = rng.randrange(1000)
                        assert snap.get(b"%04d" % i) == b"%d" % i
                    assert len(list(snap.scan())) == 1000
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            store.write(deletes=[b"%04d" % i for i in range(1000)])
            for t in threads:
                t.join()
        assert not errors

    def test_closing_the_store_closes_its_snapshots(self, store_factory: StoreFactory) -> None:
        s = store_factory.open()
        s.write({b"k": b"v"})
        snap = s.snapshot()
        s.close()
        with pytest.raises(ClosedError):
            snap.get(b"k")
        snap.close()  # still fine
        with pytest.raises(ClosedError):
            s.snapshot()

    # -- compare-and-set (contract rule 10) -------------------------------------

    def test_compare_and_set(self, store: Store) -> None:
        assert store.compare_and_set(b"lease", None, b"g1")  # create if absent
        assert not store.compare_and_set(b"lease", None, b"g2")
        assert not store.compare_and_set(b"lease", b"g0", b"g2")
        assert store.get(b"lease") == b"g1"
        assert store.compare_and_set(b"lease", b"g1", b"g2")
        assert store.get(b"lease") == b"g2"
        assert store.compare_and_set(b"lease", b"g2", None)  # delete
        assert store.get(b"lease") is None
        assert not store.compare_and_set(b"lease", b"g2", b"g3")
        with pytest.raises(TypeError):
            store.compare_and_set(b"lease", None, "text")  # type: ignore[arg-type]

    def test_compare_and_set_has_one_winner_among_threads(self, store: Store) -> None:
        def contend(n: int, key: bytes, barrier: threading.Barrier, winners: list[int]) -> None:
            barrier.wait()
            if store.compare_and_set(key, None, b"%d" % n):
                winners.append(n)

        for round_ in range(20):
            key = b"race%d" % round_
            winners: list[int] = []
            barrier = threading.Barrier(6)
            threads = [
                threading.Thread(target=contend, args=(n, key, barrier, winners)) for n in range(6)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(winners) == 1
            assert store.get(key) == b"%d" % winners[0]

    def test_compare_and_set_persists(self, store_factory: StoreFactory) -> None:
        with store_factory.open() as s:
            assert s.compare_and_set(b"k", None, b"v")
        if store_factory.persistent:
            with store_factory.open() as s:
                assert s.get(b"k") == b"v"
        with store_factory.open(read_only=True) if store_factory.persistent else nullcontext() as r:
            if r is not None:
                with pytest.raises(ReadOnlyError):
                    r.compare_and_set(b"k", b"v", b"w")

    # -- the conditional batch (contract rule 11) ------------------------------

    def test_write_if(self, store: Store) -> None:
        assert store.write_if(b"lease", None, {b"a": b"1", b"lease": b"g1"})
        assert not store.write_if(b"lease", None, {b"b": b"2"})
        assert not store.write_if(b"lease", b"g0", {b"b": b"2"}, deletes=[b"a"])
        assert store.get(b"b") is None and store.get(b"a") == b"1"
        assert store.write_if(b"lease", b"g1", {b"b": b"2"}, deletes=[b"a"])
        assert dict(store.scan()) == {b"b": b"2", b"lease": b"g1"}
        with pytest.raises(TypeError):
            store.write_if(b"lease", b"g1", {b"c": "text"})  # type: ignore[arg-type]
        assert store.get(b"c") is None

    def test_write_if_has_one_winner_among_threads(self, store: Store) -> None:
        store.write({b"gen": b"0"})
        wins: list[int] = []
        barrier = threading.Barrier(6)

        def contend(n: int) -> None:
            barrier.wait()
            if store.write_if(b"gen", b"0", {b"gen": b"%d" % (n + 1), b"w%d" % n: b"x"}):
                wins.append(n)

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        rows = dict(store.scan())
        assert rows[b"gen"] == b"%d" % (wins[0] + 1) and [k for k in rows if k[:1] == b"w"] == [
            b"w%d" % wins[0]
        ]

    def test_readers_see_whole_batches_during_writes(self, store: Store) -> None:
        """Readers in other threads never see half a batch and are never blocked."""
        store.write({b"x": b"0", b"y": b"0"})
        stop = threading.Event()
        torn: list[object] = []

        def reader() -> None:
            while not stop.is_set():
                snap = dict(store.scan())
                if snap[b"x"] != snap[b"y"]:
                    torn.append(snap)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(1, 200):
                v = b"%d" % i
                store.write({b"x": v, b"y": v})
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not torn


def oracle_state_machine(open_fresh: Callable[[], StoreFactory]) -> type[RuleBasedStateMachine]:
    """A state machine running the same operations on a backend and on the oracle.

    ``open_fresh`` returns a factory for a new empty location; it is called
    once per Hypothesis example.
    """
    keys = st.binary(min_size=0, max_size=3).map(lambda b: b.replace(b"\x02", b"\xff"))
    values = st.binary(max_size=40)

    class OracleComparison(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.factory = open_fresh()
            self.store: Store = self.factory.open(durable=False)
            self.oracle: Store = MemoryStore()
            self.model: dict[bytes, bytes] = {}

        @rule(puts=st.dictionaries(keys, values, max_size=8), dels=st.lists(keys, max_size=4))
        def write(self, puts: dict[bytes, bytes], dels: list[bytes]) -> None:
            dels = [k for k in dels if k not in puts]
            self.store.write(puts, dels)
            self.oracle.write(puts, dels)

        @rule(puts=st.dictionaries(keys, values, min_size=1, max_size=8), k=st.integers(0, 7))
        def failed_write(self, puts: dict[bytes, bytes], k: int) -> None:
            faulty = FaultyStore(self.store)
            faulty.fail_next_write(mid_batch=min(k, len(puts) - 1))
            with contextlib.suppress(InjectedFault):
                faulty.write(puts)

        @rule(key=keys)
        def get(self, key: bytes) -> None:
            assert self.store.get(key) == self.oracle.get(key)

        @rule(start=keys, stop=st.none() | keys)
        def scan(self, start: bytes, stop: bytes | None) -> None:
            assert list(self.store.scan(start, stop)) == list(self.oracle.scan(start, stop))

        @precondition(lambda self: self.factory.persistent)
        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = self.factory.open(durable=False)

        @invariant()
        def same_contents(self) -> None:
            assert list(self.store.scan()) == list(self.oracle.scan())

        def teardown(self) -> None:
            self.store.close()

    return OracleComparison
