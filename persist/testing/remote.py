"""The target conformance suite: every kind of remote target must pass it.

Use it like :mod:`persist.testing.kvs`: subclass :class:`TargetConformance` in
a pytest module and give the class a ``target_factory`` fixture returning a
:class:`TargetFactory` for a fresh location::

    class TestMyTarget(TargetConformance):
        @pytest.fixture
        def target_factory(self, tmp_path):
            return TargetFactory(lambda **kw: open_target("dir://" + str(tmp_path), **kw))

The suite checks the contract of :mod:`persist.remote.target` on the
container ``TargetFactory.container`` ("" for the default one), and the
container operations of the target around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ..errors import (
    ClosedError,
    ContainerExists,
    ContainerNotFound,
    LeaseHeld,
    ReadOnlyError,
)
from ..remote.leaserecord import LeaseRecord
from ..remote.target import (
    MAX_CONDITIONAL_SIZE,
    MAX_LEASE_RECORD_SIZE,
    MAX_ROW_KEY_SIZE,
    Container,
    Target,
)

__all__ = ["TargetConformance", "TargetFactory", "held_record", "race_threads"]

#: Keys that probe unsigned byte order and the dir fan-out (1-byte keys, shared
#: first bytes, 0x00 and 0xff runs, the sign bit).
KEY_PROBES = [
    b"\x00",
    b"\x00\x00",
    b"\x00\x01",
    b"\x01",
    b"\x01\x00",
    b"\x01\x00\x00",
    b"\x01\xff",
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
    bytes(range(32)),
    b"\x42" * MAX_ROW_KEY_SIZE,
]


@dataclass
class TargetFactory:
    """Opens the one target location a test works on, as often as it asks.

    ``open(create=..., read_only=...)`` returns a :class:`Target`;
    ``container`` is the container the tests use; ``atomic_batches``: whether
    a batch is atomic on this kind (kvs: yes, dir: no); ``snapshot_scans``:
    whether a scan is a snapshot.
    """

    open: Callable[..., Target]
    container: str = ""
    atomic_batches: bool = True
    snapshot_scans: bool = True


def held_record(holder: str = "tester", generation: int = 1, serial: int = 1) -> bytes:
    """A well-formed lease record saying ``holder`` holds the lease."""
    return LeaseRecord(holder, generation, serial, True, 60_000, 1_000, 61_000, bytes(16)).encode()


class TargetConformance:
    """The contract of :mod:`persist.remote.target`, as tests.  Needs ``target_factory``."""

    @pytest.fixture
    def target(self, target_factory: TargetFactory) -> Iterator[Target]:
        with target_factory.open(create=True) as t:
            yield t

    @pytest.fixture
    def container(self, target: Target, target_factory: TargetFactory) -> Container:
        return target.create_container(target_factory.container)

    # -- rows ----------------------------------------------------------------------

    def test_empty_container(self, container: Container) -> None:
        assert container.exists()
        assert container.get(b"missing") is None
        assert list(container.scan()) == []
        assert not container.holds_rows()
        assert container.read_lease() is None

    def test_rows_in_unsigned_byte_order(self, container: Container) -> None:
        keys = KEY_PROBES[:]
        random.Random(1).shuffle(keys)
        container.write({k: b"v" + k for k in keys})
        assert [k for k, _ in container.scan()] == sorted(KEY_PROBES)
        for k in KEY_PROBES:
            assert container.get(k) == b"v" + k
        assert container.holds_rows()

    def test_bounded_scans(self, container: Container) -> None:
        container.write((k, k) for k in KEY_PROBES)
        ordered = sorted(KEY_PROBES)
        bounds = [b"", *KEY_PROBES, b"\x00\x00\x00", b"c", b"\xff\xff\xff\xff"]
        for start in bounds:
            for stop in [None, *bounds]:
                want = [k for k in ordered if k >= start and (stop is None or k < stop)]
                assert [k for k, _ in container.scan(start, stop)] == want, (start, stop)

    def test_overwrite_and_delete(self, container: Container) -> None:
        container.write({b"a": b"1", b"b": b"2"})
        container.write({b"a": b"3"}, deletes=[b"b", b"never-existed"])
        assert list(container.scan()) == [(b"a", b"3")]
        container.delete([b"a"])
        assert list(container.scan()) == []
        assert container.get(b"a") is None

    def test_last_put_wins_and_empty_values(self, container: Container) -> None:
        container.write([(b"k", b"first"), (b"e", b""), (b"k", b"last")])
        assert container.get(b"k") == b"last"
        assert container.get(b"e") == b""
        container.write()  # an empty batch changes nothing
        assert list(container.scan()) == [(b"e", b""), (b"k", b"last")]

    def test_put_and_delete_of_one_key_is_refused(self, container: Container) -> None:
        container.write({b"k": b"old"})
        with pytest.raises(ValueError):
            container.write({b"x": b"1", b"k": b"new"}, deletes=[b"k"])
        assert list(container.scan()) == [(b"k", b"old")]

    @pytest.mark.parametrize(
        "puts, deletes, error",
        [
            ({"str-key": b"v"}, (), TypeError),
            ({b"k": "str-value"}, (), TypeError),
            ({b"k": bytearray(b"v")}, (), TypeError),
            ([(b"a", b"1"), (memoryview(b"b"), b"2")], (), TypeError),
            ([(b"a", b"1"), (b"b", None)], (), TypeError),
            ([(b"a", b"1"), (b"b",)], (), TypeError),
            ({b"a": b"1"}, ["not-bytes"], TypeError),
            ({b"a": b"1", b"": b"empty key"}, (), ValueError),
            ({b"a": b"1", b"k" * (MAX_ROW_KEY_SIZE + 1): b"long key"}, (), ValueError),
            ({b"a": b"1"}, [b""], ValueError),
        ],
    )
    def test_bad_batches_raise_and_write_nothing(
        self, container: Container, puts: object, deletes: object, error: type[Exception]
    ) -> None:
        container.write({b"keep": b"1"})
        with pytest.raises(error):
            container.write(puts, deletes)  # type: ignore[arg-type]
        assert list(container.scan()) == [(b"keep", b"1")]
        with pytest.raises(TypeError):
            container.get("keep")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            container.scan(1)  # type: ignore[arg-type]

    def test_16_mib_row(self, target_factory: TargetFactory, container: Container) -> None:
        big = random.Random(16).randbytes(16 * 1024 * 1024)
        container.write({b"big": big, b"small": b"s"})
        assert container.get(b"big") == big
        with target_factory.open() as again:
            assert again.container(target_factory.container).get(b"big") == big

    def test_10k_rows_across_the_fan_out(self, container: Container) -> None:
        rng = random.Random(10)
        model = {rng.randbytes(32): rng.randbytes(rng.randint(0, 100)) for _ in range(10_000)}
        items = list(model.items())
        for i in range(0, len(items), 2500):
            container.write(items[i : i + 2500])
        assert list(container.scan()) == sorted(model.items())
        for k in rng.sample(list(model), 300):
            assert container.get(k) == model[k]
        lo, hi = sorted(model)[1000], sorted(model)[1100]
        assert [k for k, _ in container.scan(lo, hi)] == sorted(model)[1000:1100]

    def test_rows_persist_across_reopen(self, target_factory: TargetFactory) -> None:
        with target_factory.open(create=True) as t:
            c = t.create_container(target_factory.container)
            c.write({b"a": b"1", b"b": b"2"})
            c.write({b"c": b"3"}, deletes=[b"a"])
            assert c.swap_lease(None, held_record())
        with target_factory.open() as t:
            c = t.container(target_factory.container)
            assert list(c.scan()) == [(b"b", b"2"), (b"c", b"3")]
            assert c.read_lease() == held_record()

    def test_scan_sees_unchanged_rows_exactly_once(self, container: Container) -> None:
        container.write({b"k%03d" % i: b"old" for i in range(300)})
        rows = container.scan()
        first = next(rows)
        container.write({b"k%03d" % i: b"new" for i in range(0, 300, 2)})
        container.write({b"added": b"x"}, deletes=[b"k299"])
        rest = list(rows)
        seen = [first[0]] + [k for k, _ in rest]
        unchanged = [b"k%03d" % i for i in range(1, 299, 2)]
        assert all(seen.count(k) == 1 for k in unchanged)
        assert len(seen) == len(set(seen))
        assert seen == sorted(seen)
        if self._current.snapshot_scans:
            assert all(v == b"old" for _, v in [first, *rest]) and len(rest) == 299

    def test_closing_a_scan_early(self, container: Container) -> None:
        container.write({b"k%03d" % i: b"v" for i in range(100)})
        with contextlib.closing(container.scan()) as rows:
            assert next(rows) == (b"k000", b"v")
        container.write({b"after": b"ok"})
        assert container.get(b"after") == b"ok"

    # -- conditional operations (contract rule 4) -----------------------------------

    def test_compare_and_set(self, container: Container) -> None:
        assert container.compare_and_set(b"root", None, b"r1")
        assert not container.compare_and_set(b"root", None, b"r2")
        assert not container.compare_and_set(b"root", b"r0", b"r2")
        assert container.get(b"root") == b"r1"
        assert container.compare_and_set(b"root", b"r1", b"r2")
        assert list(container.scan()) == [(b"root", b"r2")]
        assert container.compare_and_set(b"root", b"r2", None)
        assert container.get(b"root") is None and list(container.scan()) == []
        assert not container.compare_and_set(b"root", b"r2", b"r3")
        with pytest.raises(TypeError):
            container.compare_and_set(b"root", None, "text")  # type: ignore[arg-type]

    def test_compare_and_set_of_a_written_row(self, container: Container) -> None:
        container.write({b"root": b"plain", b"node": b"n"})
        assert not container.compare_and_set(b"root", b"other", b"x")
        assert container.compare_and_set(b"root", b"plain", b"cas")
        assert list(container.scan()) == [(b"node", b"n"), (b"root", b"cas")]
        container.write({b"root": b"written again"})  # a plain write after a CAS
        assert container.get(b"root") == b"written again"
        assert container.compare_and_set(b"root", b"written again", b"cas 2")
        container.delete([b"root"])
        assert container.get(b"root") is None
        assert list(container.scan()) == [(b"node", b"n")]
        assert container.compare_and_set(b"root", None, b"back")
        assert list(container.scan()) == [(b"node", b"n"), (b"root", b"back")]

    def test_compare_and_set_has_one_winner_among_threads(self, container: Container) -> None:
        for round_ in range(10):
            key = b"race%d" % round_

            def claim(n: int, key: bytes = key) -> bool:
                return container.compare_and_set(key, None, b"%d" % n)

            winners = race_threads(6, claim)
            assert len(winners) == 1
            assert container.get(key) == b"%d" % winners[0]

    def test_lease_record_is_metadata(self, target: Target, container: Container) -> None:
        record = held_record()
        assert container.swap_lease(None, record)
        assert not container.swap_lease(None, held_record("other"))
        assert container.read_lease() == record
        assert list(container.scan()) == [] and not container.holds_rows()
        renewed = held_record(serial=2)
        assert not container.swap_lease(held_record(serial=3), renewed)
        assert container.swap_lease(record, renewed)
        assert container.read_lease() == renewed
        with pytest.raises(TypeError):
            container.swap_lease(None, "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            container.swap_lease(renewed, b"x" * (MAX_LEASE_RECORD_SIZE + 1))
        assert container.swap_lease(renewed, None)
        assert container.read_lease() is None

    def test_write_if_lease(self, container: Container) -> None:
        mine, theirs = held_record("me"), held_record("them", generation=2, serial=2)
        assert not container.write_if_lease(mine, {b"root": b"r0"})  # no lease at all
        assert container.get(b"root") is None
        assert container.swap_lease(None, mine)
        container.write({b"node": b"n1"})
        assert container.write_if_lease(mine, {b"root": b"r1"}, deletes=[b"node"])
        assert list(container.scan()) == [(b"root", b"r1")]
        assert container.swap_lease(mine, theirs)  # taken over
        assert not container.write_if_lease(mine, {b"root": b"stale", b"more": b"x"})
        assert list(container.scan()) == [(b"root", b"r1")]
        assert container.write_if_lease(theirs, {b"root": b"r2"})
        assert container.get(b"root") == b"r2"
        with pytest.raises(ValueError):
            container.write_if_lease(theirs, {b"big": b"x" * (MAX_CONDITIONAL_SIZE + 1)})
        assert container.get(b"big") is None

    def test_write_if_lease_races_a_takeover(self, container: Container) -> None:
        """Writers fenced by one record race a swap to another: a write lands
        whole exactly when it reports success, and none lands after the swap."""
        for round_ in range(5):
            old, new = held_record(serial=2 * round_ + 1), held_record(serial=2 * round_ + 2)
            assert container.swap_lease(container.read_lease(), old)
            at_swap: set[bytes] = set()

            def keys(n: int, round_: int = round_) -> dict[bytes, bytes]:
                return {b"r%d-%d-%d" % (round_, n, j): b"v" for j in range(3)}

            def attempt(
                n: int, old: bytes = old, new: bytes = new, seen: set[bytes] = at_swap
            ) -> bool:
                if n == 6:  # the contender taking over
                    assert container.swap_lease(old, new)
                    seen.update(k for k, _ in container.scan())
                    return False
                return container.write_if_lease(old, keys(n))

            applied = race_threads(7, attempt)
            for n in range(6):
                present = [container.get(k) for k in keys(n)]
                assert present == ([b"v"] * 3 if n in applied else [None] * 3), (n, present)
            assert {k for k, _ in container.scan()} == at_swap  # nothing landed later
            assert container.read_lease() == new
            assert not container.write_if_lease(old, {b"late": b"x"})
            assert container.get(b"late") is None

    # -- containers (contract rule 6) -----------------------------------------------

    def test_create_is_idempotent_and_never_overwrites(
        self, target: Target, container: Container
    ) -> None:
        target.create_container(container.name)  # exists, empty: nothing changes
        container.write({b"row": b"ciphertext"})
        with pytest.raises(ContainerExists):
            target.create_container(container.name)
        assert container.get(b"row") == b"ciphertext"

    def test_list_containers(self, target: Target, container: Container) -> None:
        names = {container.name} - {""}
        assert set(target.list_containers()) == names
        target.create_container("zeta")
        target.create_container("alpha-1.b_c")
        assert target.list_containers() == sorted(names | {"zeta", "alpha-1.b_c"})
        target.delete_container("zeta")
        assert target.list_containers() == sorted(names | {"alpha-1.b_c"})

    def test_invalid_container_names(self, target: Target) -> None:
        for bad in ["Upper", "-lead", "trail-", ".hidden", "a/b", "a b", "é", "x" * 65, "a#b"]:
            with pytest.raises(ValueError):
                target.create_container(bad)
        with pytest.raises(TypeError):
            target.container(3)  # type: ignore[arg-type]
        assert target.list_containers() == []

    def test_delete_container(self, target: Target, container: Container) -> None:
        container.write({b"a": b"1", b"b": b"2"})
        assert container.swap_lease(None, held_record())
        with pytest.raises(LeaseHeld):
            target.delete_container(container.name)
        assert container.get(b"a") == b"1"
        target.delete_container(container.name, force=True)
        assert list(container.scan()) == [] and container.read_lease() is None
        # a holder's fenced write after the delete writes nothing
        if container.name:
            assert not container.exists()
            assert container.name not in target.list_containers()
            with pytest.raises(ContainerNotFound):
                container.write_if_lease(held_record(), {b"root": b"r"})
            with pytest.raises(ContainerNotFound):
                container.write({b"a": b"1"})
            with pytest.raises(ContainerNotFound):
                target.delete_container(container.name)
        else:
            assert container.exists()  # the default container is emptied, not removed
            assert not container.write_if_lease(held_record(), {b"root": b"r"})
            target.delete_container("")  # deleting it again is fine
        assert container.get(b"root") is None

    def test_delete_a_released_lease_needs_no_force(
        self, target: Target, container: Container
    ) -> None:
        released = LeaseRecord.parse(held_record()).released(2_000).encode()
        assert container.swap_lease(None, released)
        container.write({b"a": b"1"})
        target.delete_container(container.name)
        assert list(container.scan()) == []

    def test_copy_container_within_the_target(self, target: Target, container: Container) -> None:
        rows = {bytes([i]) * 32: b"row %d" % i for i in range(50)}
        container.write(rows)
        assert container.compare_and_set(b"root", None, b"the root")
        assert container.swap_lease(None, held_record())
        assert target.copy_container(container.name, target, "copy") == 51
        copy = target.container("copy")
        assert dict(copy.scan()) == {**rows, b"root": b"the root"}
        assert copy.read_lease() is None  # the lease stays behind
        assert "copy" in target.list_containers()
        with pytest.raises(ContainerExists):  # never onto a live database
            target.copy_container(container.name, target, "copy")
        with pytest.raises(ValueError):
            target.copy_container(container.name, target, container.name)
        with pytest.raises(ContainerNotFound):
            target.copy_container("nope", target, "other")
        assert "other" not in target.list_containers()
        target.create_container("leased")
        assert target.container("leased").swap_lease(None, held_record())
        with pytest.raises(LeaseHeld):
            target.copy_container(container.name, target, "leased")
        assert list(target.container("leased").scan()) == []
        target.create_container("empty")
        assert target.copy_container(container.name, target, "empty") == 51
        assert dict(target.container("empty").scan()) == dict(copy.scan())

    def test_copy_back_into_the_default_container(
        self, target: Target, container: Container
    ) -> None:
        if not container.name:
            container.write({b"a": b"1"})
            target.copy_container("", target, "side")
            target.delete_container("")
            assert target.copy_container("side", target, "") == 1
        else:
            container.write({b"a": b"1"})
            assert target.copy_container(container.name, target, "") == 1
        assert target.container("").get(b"a") == b"1"

    def test_writes_to_a_missing_container(self, target: Target, container: Container) -> None:
        ghost = target.container("ghost")
        assert not ghost.exists()
        assert ghost.get(b"k") is None and list(ghost.scan()) == []
        assert ghost.read_lease() is None
        for write in (
            lambda: ghost.write({b"k": b"v"}),
            lambda: ghost.compare_and_set(b"k", None, b"v"),
            lambda: ghost.swap_lease(None, held_record()),
        ):
            with pytest.raises(ContainerNotFound):
                write()
        assert "ghost" not in target.list_containers()

    # -- lifecycle ------------------------------------------------------------------

    def test_read_only_target(self, target_factory: TargetFactory, container: Container) -> None:
        container.write({b"k": b"v"})
        with target_factory.open(read_only=True) as ro:
            c = ro.container(target_factory.container)
            assert c.get(b"k") == b"v"
            for write in (
                lambda: c.write({b"k": b"x"}),
                lambda: c.compare_and_set(b"k", b"v", b"x"),
                lambda: c.swap_lease(None, held_record()),
                lambda: c.write_if_lease(held_record(), {b"k": b"x"}),
                lambda: ro.create_container("new"),
                lambda: ro.delete_container(target_factory.container, force=True),
            ):
                with pytest.raises(ReadOnlyError):
                    write()
        assert container.get(b"k") == b"v"

    def test_use_after_close(self, target_factory: TargetFactory) -> None:
        t = target_factory.open(create=True)
        c = t.create_container(target_factory.container)
        c.write({b"k": b"v"})
        with t:
            pass
        assert t.closed and "closed" in repr(t)
        t.close()  # idempotent
        for call in (
            lambda: c.get(b"k"),
            lambda: c.scan(),
            lambda: c.write({b"k": b"x"}),
            lambda: c.read_lease(),
            lambda: t.list_containers(),
            lambda: t.container(""),
        ):
            with pytest.raises(ClosedError):
                call()

    def test_async_twins(self, target: Target, container: Container) -> None:
        async def run() -> None:
            await container.awrite({b"a": b"1", b"b": b"2"})
            assert await container.aget(b"a") == b"1"
            assert [k async for k, _ in container.ascan(batch=1)] == [b"a", b"b"]
            assert await container.acompare_and_set(b"a", b"1", b"3")
            assert await container.aswap_lease(None, held_record())
            assert await container.awrite_if_lease(held_record(), {b"c": b"4"})
            assert await container.aread_lease() == held_record()
            await container.adelete([b"b"])
            assert await container.aholds_rows() and await container.aexists()
            await target.acreate_container("x")
            assert "x" in await target.alist_containers()
            assert await target.acopy_container(container.name, target, "y") == 2
            await target.adelete_container("x")
            assert "x" not in await target.alist_containers()

        asyncio.run(run())
        assert dict(container.scan()) == {b"a": b"3", b"c": b"4"}

    @pytest.fixture(autouse=True)
    def _remember_factory(self, target_factory: TargetFactory) -> None:
        self._current = target_factory


def race_threads(n: int, attempt: Callable[[int], bool]) -> list[int]:
    """Run ``attempt(0..n-1)`` in ``n`` threads released at once by a barrier;
    return the numbers of those that returned True."""
    barrier = threading.Barrier(n)
    won: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            if attempt(i):
                won.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sorted(won)
