"""The lease protocol: the clock rules (with injected clocks), races among threads,
renewal and release, fencing, and one run in real time.

Each party has its own clock: a holder's clock and a contender's clock are
separate FakeClocks, advanced only by the party's own ``sleep`` or by the test,
so the tests say exactly which clock a rule reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from persist.errors import IntegrityError, LeaseHeld, LeaseLost
from persist.kvs.memory import drop_named_store
from persist.remote import (
    Container,
    Contender,
    Lease,
    Target,
    acquire,
    open_target,
    read_lease,
    release_lease,
    renew_lease,
)
from persist.remote.leaserecord import LeaseRecord
from persist.remote.target import Rows
from persist.testing.remote import race_threads

from .conftest import KINDS, target_location_for

D = 30.0  # the lease time of most tests
M = 3.0  # its default margin


class FakeClock:
    """A monotonic clock that moves only when told; ``sleep`` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.on_sleep: Callable[[float], None] | None = None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


class Swaps(Container):
    """A container that records, for each swap of the lease record, the reading
    of a given clock when it reached the target (and can make swaps take time)."""

    def __init__(self, inner: Container, clock: FakeClock, delay: float = 0.0) -> None:
        super().__init__(inner.target, inner.name)
        self.inner, self.clock, self.delay = inner, clock, delay
        self.times: list[float] = []

    def _swap_lease(self, expected: bytes | None, new: bytes | None) -> bool:
        self.clock.now += self.delay  # the swap takes this long on the caller's clock
        self.times.append(self.clock.now)
        return self.inner.swap_lease(expected, new)

    def _get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Rows:
        return self.inner.scan(start, stop)

    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        self.inner.write(puts, deletes)

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        return self.inner.compare_and_set(key, expected, new)

    def _read_lease(self) -> bytes | None:
        return self.inner.read_lease()

    def _write_if_lease(
        self, expected: bytes, puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> bool:
        return self.inner.write_if_lease(expected, puts, deletes)

    def _exists(self) -> bool:
        return self.inner.exists()


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    location = target_location_for(request.param, tmp_path)
    with open_target(location, create=True) as t:
        yield t
    if location.startswith("memory:"):
        drop_named_store(location[len("memory:") :])


@pytest.fixture
def container(target: Target) -> Container:
    return target.create_container("db")


# -- acquiring and holding ------------------------------------------------------------


def test_an_absent_lease_is_taken_at_once(container: Container) -> None:
    clock = FakeClock()
    lease = acquire(container, holder="h", lease_time=D, clock=clock, sleep=clock.sleep)
    assert (lease.holder, lease.generation, lease.record.serial) == ("h", 1, 1)
    assert read_lease(container) == lease.record
    assert lease.remaining() == D - M and lease.held


def test_validity_counts_from_before_the_swap_was_sent(container: Container) -> None:
    clock = FakeClock(1000.0)
    slow = Swaps(container, clock, delay=10.0)  # the swap takes 10 s to arrive
    lease = acquire(slow, holder="h", lease_time=D, clock=clock, sleep=clock.sleep)
    assert slow.times == [1010.0]
    assert lease.valid_until == 1000.0 + D - M  # not 1010 + D - M
    clock.now = 1000.0 + D - M
    with pytest.raises(LeaseLost, match="deadline"):
        lease.fenced_write({b"root": b"r"})
    assert container.get(b"root") is None


def test_a_contender_waits_a_full_lease_of_its_own_clock(container: Container) -> None:
    holder_clock, contender_clock = FakeClock(5.0), FakeClock(70_000.0)
    acquire(container, holder="h", lease_time=D, clock=holder_clock)
    watched = Swaps(container, contender_clock)
    lease = acquire(
        watched, holder="c", lease_time=D, timeout=1e6, clock=contender_clock,
        sleep=contender_clock.sleep,
    )  # fmt: skip
    assert watched.times == [70_000.0 + D]  # one swap, exactly a lease time after it looked
    assert (lease.holder, lease.generation) == ("c", 2)


@pytest.mark.parametrize("wall", [0.0, 1e12], ids=["expired-looking", "far-future"])
def test_the_records_wall_clock_expiry_is_never_trusted(container: Container, wall: float) -> None:
    acquire(container, holder="h", lease_time=D, wall=lambda: wall)
    clock = FakeClock()
    watched = Swaps(container, clock)
    acquire(watched, holder="c", lease_time=D, timeout=1e6, clock=clock, sleep=clock.sleep)
    assert watched.times == [1000.0 + D]


@pytest.mark.parametrize("theirs, ours", [(60.0, 10.0), (10.0, 60.0)])
def test_the_wait_is_the_longer_of_both_lease_times(
    container: Container, theirs: float, ours: float
) -> None:
    acquire(container, holder="h", lease_time=theirs)
    clock = FakeClock()
    watched = Swaps(container, clock)
    acquire(watched, holder="c", lease_time=ours, timeout=1e6, clock=clock, sleep=clock.sleep)
    assert watched.times == [1000.0 + max(theirs, ours)]


def test_a_renewal_restarts_the_wait(container: Container) -> None:
    held = acquire(container, holder="h", lease_time=D, clock=FakeClock())
    clock = FakeClock(0.0)
    pending = [10.0, 35.0]  # the holder renews at these times of the contender's clock

    def renew_on_schedule(now: float) -> None:
        while pending and now >= pending[0]:
            pending.pop(0)
            held.renew()

    clock.on_sleep = renew_on_schedule
    watched = Swaps(container, clock)
    lease = acquire(
        watched, holder="c", lease_time=D, timeout=1e6, poll=1.0, clock=clock, sleep=clock.sleep
    )
    # The last renewal was seen at 35 (the first look at or after it): a full
    # lease time of unchanged record from there, and no swap before.
    assert watched.times == [35.0 + D]
    assert lease.generation == 2
    with pytest.raises(LeaseLost):
        held.renew()


def test_a_renewing_holder_keeps_its_lease(container: Container) -> None:
    holder_clock = FakeClock()
    held = acquire(container, holder="h", lease_time=D, clock=holder_clock)
    clock = FakeClock(0.0)

    def renew_every_ten(now: float) -> None:
        if now % 10 < 1.0:
            held.renew()

    clock.on_sleep = renew_every_ten
    with pytest.raises(LeaseHeld) as refused:
        acquire(
            container,
            holder="c",
            lease_time=D,
            timeout=200,
            poll=1.0,
            clock=clock,
            sleep=clock.sleep,
        )
    assert isinstance(refused.value.record, LeaseRecord) and refused.value.record.holder == "h"
    assert clock.now >= 200
    held.fenced_write({b"root": b"still mine"})
    assert container.get(b"root") == b"still mine"


def test_a_released_lease_is_taken_at_once(container: Container) -> None:
    held = acquire(container, holder="h", lease_time=D)
    held.release()
    assert not read_lease(container).held  # type: ignore[union-attr]
    clock = FakeClock()
    watched = Swaps(container, clock)
    lease = acquire(watched, holder="c", lease_time=D, clock=clock, sleep=clock.sleep)
    assert watched.times == [1000.0] and lease.generation == 2
    assert lease.record.serial == 3  # acquire, release, acquire


def test_without_a_timeout_a_held_lease_is_refused_at_once(container: Container) -> None:
    acquire(container, holder="h", lease_time=D)
    clock = FakeClock()
    with pytest.raises(LeaseHeld, match="held by h"):
        acquire(container, holder="c", clock=clock, sleep=clock.sleep)
    assert clock.now == 1000.0


# -- stepping down and fencing --------------------------------------------------------------


def test_the_holder_steps_down_on_its_own_clock(container: Container) -> None:
    clock = FakeClock()
    lease = acquire(container, holder="h", lease_time=D, clock=clock)
    lease.fenced_write({b"root": b"r1"})
    clock.now += D - M - 0.001
    lease.fenced_write({b"root": b"r2"})
    clock.now += 0.001  # the deadline: the lease can still be valid elsewhere, but not here
    assert lease.remaining() == 0 and not lease.held
    with pytest.raises(LeaseLost, match="deadline"):
        lease.fenced_write({b"root": b"r3"})
    assert container.get(b"root") == b"r2"
    lease.renew()  # nobody took over: the swap proves it, and validity restarts
    assert lease.remaining() == D - M
    lease.fenced_write({b"root": b"r4"})
    assert container.get(b"root") == b"r4"


def test_a_superseded_holder_writes_nothing(container: Container) -> None:
    paused = FakeClock()  # the holder's clock does not move: it is paused
    holder = acquire(container, holder="h", lease_time=D, clock=paused)
    clock = FakeClock()
    taker = acquire(
        container, holder="c", lease_time=D, timeout=1e6, clock=clock, sleep=clock.sleep
    )
    assert holder.remaining() == D - M  # it believes itself valid
    with pytest.raises(LeaseLost, match="no longer"):
        holder.fenced_write({b"root": b"stale"}, deletes=[b"node"])
    assert container.get(b"root") is None
    for call in (holder.fenced_write, holder.renew, holder.release):
        with pytest.raises(LeaseLost):
            call()
    assert read_lease(container) == taker.record
    taker.fenced_write({b"root": b"fresh"})
    assert container.get(b"root") == b"fresh"


def test_release_steps_down_first(container: Container) -> None:
    with acquire(container, holder="h", lease_time=D) as lease:
        lease.fenced_write({b"root": b"r"})
    assert not lease.held and not read_lease(container).held  # type: ignore[union-attr]
    with pytest.raises(LeaseLost, match="released"):
        lease.fenced_write({b"root": b"after"})
    lease.release()  # idempotent
    assert container.get(b"root") == b"r"


# -- the lease as others see it ----------------------------------------------------------------


def test_release_by_a_non_holder_is_refused(container: Container) -> None:
    lease = acquire(container, holder="h", lease_time=D)
    with pytest.raises(LeaseHeld, match="held by h"):
        release_lease(container, "intruder")
    with pytest.raises(LeaseHeld):
        renew_lease(container, "intruder")
    with pytest.raises(LeaseLost, match="generation"):
        release_lease(container, "h", generation=5)
    assert read_lease(container) == lease.record
    lease.fenced_write({b"root": b"r"})


def test_renew_and_release_on_behalf_of_a_holder(container: Container) -> None:
    with pytest.raises(LeaseLost, match="no lease"):
        renew_lease(container, "h")
    lease = acquire(container, holder="h", lease_time=D)
    renewed = renew_lease(container, "h", generation=1, lease_time=60)
    assert renewed.serial == 2 and renewed.lease_ms == 60_000
    lease.fenced_write({b"root": b"r"})  # the holder adopts a renewal made for it
    lease.renew()
    released = release_lease(container, "h", generation=1)
    assert not released.held and released.generation == 1
    assert release_lease(container, "h") == released  # idempotent
    with pytest.raises(LeaseLost):
        renew_lease(container, "h")
    lease.release()  # already released on its behalf: fine
    with pytest.raises(LeaseLost):
        lease.fenced_write({b"root": b"x"})


def test_a_malformed_lease_record_is_never_acted_on(container: Container) -> None:
    assert container.swap_lease(None, b"not a lease record")
    for call in (
        lambda: acquire(container, holder="c", timeout=0),
        lambda: read_lease(container),
        lambda: release_lease(container, "c"),
        lambda: renew_lease(container, "c"),
    ):
        with pytest.raises(IntegrityError):
            call()
    assert container.read_lease() == b"not a lease record"


def test_parameters_are_checked(container: Container) -> None:
    for kw in (
        {"lease_time": 0},
        {"lease_time": 86_401},
        {"lease_time": 10, "margin": 10},
        {"lease_time": 10, "margin": 0},
        {"timeout": -1},
        {"holder": "has space"},
    ):
        with pytest.raises(ValueError):
            acquire(container, **kw)  # type: ignore[arg-type]
    assert container.read_lease() is None


def test_the_contender_rule_alone() -> None:
    rule = Contender(10.0)
    held = LeaseRecord("h", 1, 1, True, 20_000, 0, 20_000, bytes(16))
    a, b = held.encode(), held.renewed(20_000, 5).encode()
    assert rule.takeover_at(None, None, 3.0) == 3.0
    assert rule.takeover_at(a, held, 100.0) == 120.0
    assert rule.takeover_at(a, held, 119.0) == 120.0  # the same record: the wait runs on
    assert rule.takeover_at(b, LeaseRecord.parse(b), 119.5) == 139.5  # changed: starts again
    released = held.released(6)
    assert rule.takeover_at(released.encode(), released, 140.0) == 140.0


# -- races ---------------------------------------------------------------------------------------


def test_threads_race_and_exactly_one_wins_every_round(target: Target) -> None:
    for round_ in range(15):
        container = target.create_container(f"r{round_}")

        def contend(n: int, c: Container = container) -> bool:
            try:
                acquire(c, holder=f"t{n}", lease_time=D)
            except LeaseHeld:
                return False
            return True

        won = race_threads(6, contend)
        assert len(won) == 1, won
        assert read_lease(container).holder == f"t{won[0]}"  # type: ignore[union-attr]


def test_threads_race_for_a_released_lease(container: Container) -> None:
    for generation in range(1, 11):
        leases: dict[int, Lease] = {}

        def contend(n: int, leases: dict[int, Lease] = leases) -> bool:
            try:
                leases[n] = acquire(container, holder=f"t{n}", lease_time=D)
            except LeaseHeld:
                return False
            return True

        won = race_threads(5, contend)
        assert len(won) == 1
        lease = leases[won[0]]
        assert lease.generation == generation
        lease.fenced_write({b"root": lease.holder.encode()})
        lease.release()
    assert read_lease(container).generation == 10  # type: ignore[union-attr]


# -- in real time ---------------------------------------------------------------------


def test_in_real_time_a_lapsed_lease_is_taken_after_a_lease_time(container: Container) -> None:
    lease_time = 0.3
    holder = acquire(container, holder="h", lease_time=lease_time)
    started = time.monotonic()
    taker = acquire(container, holder="c", lease_time=lease_time, timeout=5)
    waited = time.monotonic() - started
    assert lease_time <= waited < 5
    assert holder.remaining() == 0  # by its own clock it stepped down before
    with pytest.raises(LeaseLost):
        holder.fenced_write({b"root": b"stale"})
    taker.fenced_write({b"root": b"fresh"})
    assert container.get(b"root") == b"fresh"
