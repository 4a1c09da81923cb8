"""The single-writer lease of a remote container (DESIGN §2.6).

Theory of operation (docs/remote.md "Lease protocol"):

1. **The record** (leaserecord.py: holder, generation, serial, lease time,
   wall-clock times, an acquisition nonce) is the container's lease metadata
   and changes only by compare-and-set (:meth:`Container.swap_lease`).  Its
   serial grows with every change, so a stored record never repeats.
2. **Acquiring.**  A contender reads the record.  When there is none, or it
   says *released*, the contender swaps in a new record (generation + 1) at
   once.  When it says *held* -- whatever its wall-clock expiry claims -- the
   contender waits until it has seen that very record, unchanged, for a full
   lease time ``D = max(own lease time, the record's)`` of its **own monotonic
   clock**, and only then swaps it out.  Any change restarts the wait.  The
   record's expiry is never trusted: it is another host's clock.
3. **Holding.**  The holder takes ``t0`` from its monotonic clock *before* it
   sends the swap that acquired or renewed; it is valid until
   ``t0 + D - margin`` of that clock and acts (fenced writes) only while valid.
   Renewing swaps in the record with the next serial; a renewal that finds the
   record changed by anyone else means the lease is lost.
4. **Why at most one holder acts.**  The holder's swap took effect after
   ``t0``; a contender first saw that record after the swap, and swaps at
   least ``D`` of its own clock later.  If each clock's rate is within a
   factor ``1 ± rho`` of real time, the holder's ``D - margin`` end before the
   contender's ``D`` whenever ``rho <= margin / (2 D - margin)``: about 5 % at
   the default margin of ``D / 10``.  Nothing is assumed about the clocks'
   readings, only their rates.
5. **Fencing.**  A fenced write is :meth:`Container.write_if_lease` with the
   record the holder last wrote: the target applies it only if that record is
   still current, atomically (kvs: under the store's single-writer lock; dir:
   as one state-log link).  So a holder that stalled anywhere -- even between
   its own deadline check and the write -- and was superseded writes nothing
   and gets :class:`~persist.errors.LeaseLost`.
6. **Releasing** steps down locally first, then swaps in a *released* record
   (same generation, next serial), which a contender takes at once.

Clocks, sleeping, the wall clock and randomness are parameters, so that tests
drive the protocol deterministically (STYLE: pure cores); :class:`Contender`
is the waiting rule on its own, free of I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self, TypeVar

from ..errors import LeaseHeld, LeaseLost
from ..kvs import display_location
from .leaserecord import MAX_LEASE_MS, NONCE_SIZE, LeaseRecord, check_holder
from .target import Container, Puts

__all__ = [
    "DEFAULT_LEASE_TIME",
    "Contender",
    "Lease",
    "aacquire",
    "acquire",
    "aread_lease",
    "arelease_lease",
    "arenew_lease",
    "default_holder",
    "read_lease",
    "release_lease",
    "renew_lease",
]

#: The default lease time, seconds.
DEFAULT_LEASE_TIME = 30.0
#: The default margin is this fraction of the lease time.
DEFAULT_MARGIN_FRACTION = 0.1
#: How often a record that keeps changing under a caller is read again.
_RETRIES = 8

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Random = Callable[[int], bytes]
T = TypeVar("T")


def default_holder() -> str:
    """``host:pid:random``: unique per process, and says where the holder runs.

    The host learns it (docs/remote.md "What the host learns"); pass an opaque
    holder id where the machine's name is private."""
    host = re.sub(r"[^\x21-\x7e]", "_", socket.gethostname())[:200] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def _lease_ms(lease_time: float) -> int:
    """The lease time as stored: whole milliseconds, rounded up (contenders
    then wait at least as long as the holder counts)."""
    if not isinstance(lease_time, int | float) or not 0.001 <= lease_time <= MAX_LEASE_MS / 1000:
        raise ValueError(f"a lease time is 0.001 to {MAX_LEASE_MS // 1000} seconds")
    return math.ceil(lease_time * 1000)


def _margin(lease_time: float, margin: float | None) -> float:
    if margin is None:
        return lease_time * DEFAULT_MARGIN_FRACTION
    if not 0 < margin < lease_time:
        raise ValueError("the margin is more than 0 and less than the lease time")
    return float(margin)


def _wall_ms(wall: Clock) -> int:
    return min(max(int(wall() * 1000), 0), (1 << 63) - 1)


def _parse(stored: bytes | None) -> LeaseRecord | None:
    return None if stored is None else LeaseRecord.parse(stored)


class Contender:
    """The waiting rule of a contender (theory rule 2), without any I/O."""

    def __init__(self, lease_time: float) -> None:
        self.lease_time = lease_time
        self._seen: bytes | None = None
        self._since = 0.0

    def takeover_at(self, stored: bytes | None, record: LeaseRecord | None, now: float) -> float:
        """The earliest reading of the contender's own clock at which it may
        swap out ``stored`` (the record as just read at ``now``)."""
        if stored is None or record is None or not record.held:
            self._seen = None
            return now
        if stored != self._seen:
            self._seen, self._since = stored, now
        return self._since + max(self.lease_time, record.lease_time)


class Lease:
    """A lease this process holds (theory rule 3).  Get one from :func:`acquire`.

    Thread-safe: renewals, fenced writes and the release are serialized.
    """

    #: Test seam: called inside :meth:`fenced_write` after the deadline check,
    #: before the target is asked (tests stop the process there).
    _fence_hook: Callable[[], None] | None = None

    def __init__(
        self,
        container: Container,
        record: LeaseRecord,
        stored: bytes,
        *,
        lease_time: float,
        margin: float,
        valid_until: float,
        clock: Clock,
        wall: Clock,
    ) -> None:
        self.container = container
        self.record = record
        self.lease_time = lease_time
        self.margin = margin
        #: End of validity on this holder's monotonic clock.
        self.valid_until = valid_until
        self._stored = stored
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._lost = False
        self._released = False

    @property
    def _shown(self) -> str:
        return display_location(self.container.location)  # no password in a message

    @property
    def holder(self) -> str:
        return self.record.holder

    @property
    def generation(self) -> int:
        return self.record.generation

    def remaining(self) -> float:
        """Seconds of validity left on this holder's clock (0 when it must not act)."""
        if self._lost or self._released:
            return 0.0
        return max(0.0, self.valid_until - self._clock())

    @property
    def held(self) -> bool:
        return self.remaining() > 0

    def renew(self) -> None:
        """Extend the lease by a lease time from now (from before the swap is sent).

        Raises LeaseLost when another holder took it over (or it was released);
        a renewal after this holder's own deadline succeeds only if nobody did.
        """
        with self._lock:
            self._check_ours()
            for _ in range(_RETRIES):
                new = self.record.renewed(_lease_ms(self.lease_time), _wall_ms(self._wall))
                data = new.encode()
                sent = self._clock()
                if self.container.swap_lease(self._stored, data):
                    self._stored, self.record = data, new
                    self.valid_until = sent + self.lease_time - self.margin
                    return
                self._adopt_or_lose("renew")
            raise LeaseLost(f"the lease of {self._shown} keeps changing")

    def fenced_write(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        """Apply a batch (a push's root switch) only while this lease is current.

        Refused with LeaseLost, writing nothing, when this holder is past its
        deadline (renew first) or was superseded or released (theory rule 5).
        """
        with self._lock:
            self._check_ours()
            if self._clock() >= self.valid_until:
                raise LeaseLost(
                    f"the lease of {self._shown} is past its deadline on this "
                    "holder's clock (renew it first); nothing was written"
                )
            if self._fence_hook is not None:
                self._fence_hook()
            for _ in range(_RETRIES):
                if self.container.write_if_lease(self._stored, puts, deletes):
                    return
                self._adopt_or_lose("write")
            raise LeaseLost(f"the lease of {self._shown} keeps changing")

    def release(self) -> None:
        """Step down, then mark the record released.  Idempotent.

        Raises LeaseLost when the lease was no longer this holder's."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self.valid_until = -math.inf  # step down before anything is sent
            if self._lost:
                raise LeaseLost(f"the lease of {self._shown} was already lost")
            for _ in range(_RETRIES):
                new = self.record.released(_wall_ms(self._wall))
                data = new.encode()
                if self.container.swap_lease(self._stored, data):
                    self._stored, self.record = data, new
                    return
                if self._adopt_or_lose("release", released_ok=True):
                    return  # released on its behalf (persist lease release)
            raise LeaseLost(f"the lease of {self._shown} keeps changing")

    def _check_ours(self) -> None:
        if self._released:
            raise LeaseLost(f"the lease of {self._shown} was released")
        if self._lost:
            raise LeaseLost(f"the lease of {self._shown} was lost")

    def _adopt_or_lose(self, what: str, *, released_ok: bool = False) -> bool:
        """After a failed swap: adopt the record if it changed within this
        acquisition (renewed on its behalf by ``persist lease renew``), else
        the lease is lost (LeaseLost).  Returns True instead when ``released_ok``
        and the record is this acquisition's, released.

        REQUIRES: self._lock."""
        stored = self.container.read_lease()
        current = _parse(stored)
        if stored is not None and current is not None and current.same_acquisition(self.record):
            if current.held:
                self._stored, self.record = stored, current
                return False
            if released_ok:
                return True
        self._lost = True
        self.valid_until = -math.inf
        who = "nobody" if current is None else current.holder
        raise LeaseLost(
            f"could not {what}: the lease of {self._shown} is no longer "
            f"{self.holder}'s (now: {who}); nothing was written"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(LeaseLost):  # not holding it is what release is for
            self.release()

    def __repr__(self) -> str:
        return (
            f"<Lease {self.container.location!r} holder={self.holder!r} "
            f"generation={self.generation} remaining={self.remaining():.3f}s>"
        )

    # -- asyncio twins ----------------------------------------------------------------

    async def arenew(self) -> None:
        await asyncio.to_thread(self.renew)

    async def afenced_write(self, puts: Puts = (), deletes: Iterable[bytes] = ()) -> None:
        await asyncio.to_thread(self.fenced_write, puts, deletes)

    async def arelease(self) -> None:
        await asyncio.to_thread(self.release)


class _Acquisition:
    """One caller's attempt to acquire: read, decide (Contender), maybe swap."""

    def __init__(
        self,
        container: Container,
        holder: str | None,
        lease_time: float,
        margin: float | None,
        timeout: float,
        poll: float | None,
        clock: Clock,
        wall: Clock,
        random: Random,
    ) -> None:
        self.container = container
        self.holder = check_holder(default_holder() if holder is None else holder)
        self.lease_ms = _lease_ms(lease_time)
        self.lease_time = float(lease_time)
        self.margin = _margin(lease_time, margin)
        if timeout < 0:
            raise ValueError("the timeout is at least 0")
        self.poll = poll if poll is not None else max(0.001, min(1.0, lease_time / 10))
        self.clock, self.wall, self.random = clock, wall, random
        self.contender = Contender(lease_time)
        self.deadline = clock() + timeout

    @property
    def _shown(self) -> str:
        return display_location(self.container.location)

    def step(self) -> Lease | float:
        """Look once: the Lease when acquired, else how long to sleep before the next look."""
        stored = self.container.read_lease()
        now = self.clock()
        record = _parse(stored)
        takeover = self.contender.takeover_at(stored, record, now)
        if takeover <= now:
            new = LeaseRecord.first(
                record, self.holder, self.lease_ms, _wall_ms(self.wall), self.random(NONCE_SIZE)
            )
            data = new.encode()
            sent = self.clock()
            if self.container.swap_lease(stored, data):
                return Lease(
                    self.container,
                    new,
                    data,
                    lease_time=self.lease_time,
                    margin=self.margin,
                    valid_until=sent + self.lease_time - self.margin,
                    clock=self.clock,
                    wall=self.wall,
                )
            return 0.0  # it changed under us: look again at once
        if now >= self.deadline:
            assert record is not None
            raise LeaseHeld(
                f"the lease of {self._shown} is held by {record.holder} "
                f"(generation {record.generation})",
                record,
            )
        return min(takeover - now, self.deadline - now, self.poll)


def acquire(
    container: Container,
    *,
    holder: str | None = None,
    lease_time: float = DEFAULT_LEASE_TIME,
    margin: float | None = None,
    timeout: float = 0.0,
    poll: float | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    wall: Clock = time.time,
    random: Random = os.urandom,
) -> Lease:
    """Acquire the lease of ``container`` (theory rule 2).

    ``holder``: this holder's id (default: :func:`default_holder`).
    ``lease_time``: seconds the lease lasts from each acquisition or renewal;
    ``margin``: how much earlier the holder stops (default a tenth).
    ``timeout``: how long to wait for a held lease.  Taking over a lease held
    by someone else always waits a full lease time of unchanged record, so a
    ``timeout`` shorter than that only helps when the holder releases.  Raises
    :class:`~persist.errors.LeaseHeld` when the timeout passes.
    ``poll``: how often the record is read while waiting.  ``clock`` (a
    monotonic clock), ``sleep``, ``wall`` and ``random`` are for tests.
    """
    attempt = _Acquisition(
        container, holder, lease_time, margin, timeout, poll, clock, wall, random
    )
    while True:
        step = attempt.step()
        if isinstance(step, Lease):
            return step
        sleep(step)


async def aacquire(
    container: Container,
    *,
    holder: str | None = None,
    lease_time: float = DEFAULT_LEASE_TIME,
    margin: float | None = None,
    timeout: float = 0.0,
    poll: float | None = None,
    clock: Clock = time.monotonic,
    wall: Clock = time.time,
    random: Random = os.urandom,
) -> Lease:
    """:func:`acquire` for asyncio: waits with ``asyncio.sleep``, reads and
    swaps in a worker thread.  Cancelled while a swap is in flight, it waits for
    the swap and releases a lease it got before it lets the cancellation through."""
    attempt = _Acquisition(
        container, holder, lease_time, margin, timeout, poll, clock, wall, random
    )
    while True:
        step = await _run_to_completion(attempt.step, on_cancel=_release_quietly)
        if isinstance(step, Lease):
            return step
        await asyncio.sleep(step)


async def _run_to_completion(func: Callable[[], T], on_cancel: Callable[[T], None]) -> T:
    """Run ``func`` in a thread; if cancelled meanwhile, finish it first, hand
    its result to ``on_cancel`` (in a thread), then re-raise the cancellation."""
    task = asyncio.ensure_future(asyncio.to_thread(func))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception:
            raise asyncio.CancelledError from None
        await asyncio.to_thread(on_cancel, result)
        raise


def _release_quietly(step: object) -> None:
    if isinstance(step, Lease):
        step.__exit__(None, None, None)


# -- the lease as others see it (persist lease show|renew|release) ------------------


def read_lease(container: Container) -> LeaseRecord | None:
    """The container's lease record, parsed (IntegrityError if malformed); None if none."""
    return _parse(container.read_lease())


def _held_by(
    container: Container, stored: bytes | None, holder: str, generation: int | None
) -> LeaseRecord:
    record = _parse(stored)
    where = container.location
    if record is None:
        raise LeaseLost(f"{where} has no lease")
    if record.holder != holder:
        if record.held:
            raise LeaseHeld(
                f"the lease of {where} is held by {record.holder}, not {holder}", record
            )
        raise LeaseLost(f"the lease of {where} is released; {holder} does not hold it")
    if not record.held:
        raise LeaseLost(f"the lease of {where} was released")
    if generation is not None and record.generation != generation:
        raise LeaseLost(
            f"the lease of {where} is in generation {record.generation}, not {generation}"
        )
    return record


def renew_lease(
    container: Container,
    holder: str,
    *,
    generation: int | None = None,
    lease_time: float | None = None,
    wall: Clock = time.time,
) -> LeaseRecord:
    """Renew the lease on behalf of ``holder`` (of ``generation``, if given),
    for ``lease_time`` seconds (default: the lease time it has).

    For a holder that is not this process (``persist lease renew``): it must
    keep its own clock -- valid until a lease time minus its margin after it
    started this call.  LeaseHeld when another holder has it, LeaseLost when
    ``holder`` no longer does."""
    lease_ms = None if lease_time is None else _lease_ms(lease_time)
    for _ in range(_RETRIES):
        stored = container.read_lease()
        record = _held_by(container, stored, holder, generation)
        new = record.renewed(lease_ms or record.lease_ms, _wall_ms(wall))
        if container.swap_lease(stored, new.encode()):
            return new
    raise LeaseLost(f"the lease of {display_location(container.location)} keeps changing")


def release_lease(
    container: Container, holder: str, *, generation: int | None = None, wall: Clock = time.time
) -> LeaseRecord:
    """Release the lease on behalf of ``holder``; idempotent.

    LeaseHeld (and nothing changes) when another holder has it."""
    for _ in range(_RETRIES):
        stored = container.read_lease()
        record = _parse(stored)
        if (
            record is not None
            and record.holder == holder
            and not record.held
            and generation in (None, record.generation)
        ):
            return record
        record = _held_by(container, stored, holder, generation)
        new = record.released(_wall_ms(wall))
        if container.swap_lease(stored, new.encode()):
            return new
    raise LeaseLost(f"the lease of {display_location(container.location)} keeps changing")


async def aread_lease(container: Container) -> LeaseRecord | None:
    return await asyncio.to_thread(read_lease, container)


async def arenew_lease(
    container: Container,
    holder: str,
    *,
    generation: int | None = None,
    lease_time: float | None = None,
) -> LeaseRecord:
    return await asyncio.to_thread(
        lambda: renew_lease(container, holder, generation=generation, lease_time=lease_time)
    )


async def arelease_lease(
    container: Container, holder: str, *, generation: int | None = None
) -> LeaseRecord:
    return await asyncio.to_thread(lambda: release_lease(container, holder, generation=generation))
