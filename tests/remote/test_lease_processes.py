"""The lease across real processes: races at a barrier, a holder stopped with
SIGSTOP past its lease, a holder killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from persist.errors import StoreLocked
from persist.remote import acquire, open_container, open_target, read_lease

from .conftest import SHARED_KINDS, target_location_for
from .lease_child import race_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=SHARED_KINDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A target other processes can reach, with a container ``db``."""
    target = target_location_for(request.param, tmp_path)
    with open_target(target, create=True) as t:
        t.create_container("db")
    return target


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.remote.lease_child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, child.stderr.read() if child.stderr else "no output"
    return line.strip()


def _wait_stopped(child: subprocess.Popen[str]) -> None:
    pid, status = os.waitpid(child.pid, os.WUNTRACED)
    assert pid == child.pid and os.WIFSTOPPED(status), status


@pytest.mark.slow
def test_processes_race_and_exactly_one_wins_every_round(location: str) -> None:
    processes, rounds = 4, 12
    with open_target(location) as t:
        for r in range(rounds):
            t.create_container(f"r{r}")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=race_worker, args=(location, i, rounds, barrier, results))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in range(processes * rounds)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for r in range(rounds):
        winners = [i for (rr, i, won) in outcomes if rr == r and won]
        assert len(winners) == 1, (r, outcomes)
        with open_container(f"{location}#r{r}") as c:
            assert read_lease(c).holder == f"p{winners[0]}"  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_holder_stopped_inside_its_fenced_write_writes_nothing(location: str) -> None:
    """Stopped after its own deadline check, before the target checks the
    lease: the worst moment.  Another process takes the lease over meanwhile."""
    lease_time = 0.5
    child = _child("stop-in-fence", f"{location}#db", str(lease_time))
    assert _line(child) == "acquired"
    _wait_stopped(child)
    with open_container(f"{location}#db") as c:
        started = time.monotonic()
        taker = acquire(c, holder="parent", lease_time=lease_time, timeout=10)
        assert time.monotonic() - started >= lease_time
        taker.fenced_write({b"root": b"parent"})
        os.kill(child.pid, signal.SIGCONT)
        assert _line(child) == "lost"
        assert child.wait(timeout=30) == 3
        assert c.get(b"root") == b"parent"
        assert read_lease(c) == taker.record


@pytest.mark.slow
def test_a_holder_stopped_at_random_moments_loses_and_writes_nothing_after(
    location: str,
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    lease_time = 0.4
    for _ in range(3):
        with open_target(location) as t:
            t.delete_container("db", force=True)
            t.create_container("db")
        c = open_container(f"{location}#db", lock_timeout=0.2)
        child = _child("loop", f"{location}#db", str(lease_time))
        assert _line(child) == "acquired"
        acked: list[int] = []
        reader = threading.Thread(target=_read_numbers, args=(child, acked))
        reader.start()
        deadline = time.monotonic() + 30
        while not acked and time.monotonic() < deadline:  # it is writing
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.25))
        taker = None
        for _ in range(200):
            os.kill(child.pid, signal.SIGSTOP)
            _wait_stopped(child)
            try:
                taker = acquire(c, holder="parent", lease_time=lease_time, timeout=10)
                break
            except StoreLocked:
                # stopped while it held the store: let it finish that operation
                os.kill(child.pid, signal.SIGCONT)
                time.sleep(0.001)
        assert taker is not None
        at_takeover = {k for k, _ in c.scan()}
        taker.fenced_write({b"root": b"parent"})
        os.kill(child.pid, signal.SIGCONT)
        assert child.wait(timeout=60) == 3
        reader.join()
        rows = {k for k, _ in c.scan()}
        c.close()
        assert rows == at_takeover | {b"root"}  # nothing of the child's after the takeover
        assert {b"n%06d" % i for i in acked} <= rows  # everything it acknowledged is there
        assert acked


def _read_numbers(child: subprocess.Popen[str], into: list[int]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip().isdigit():
            into.append(int(line))


@pytest.mark.slow
def test_a_killed_holders_lease_is_taken_after_a_lease_time(location: str) -> None:
    lease_time = 1.0
    holder = _child("hold", f"{location}#db", str(lease_time))
    assert _line(holder) == "acquired"
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    taker = _child("take", f"{location}#db", str(lease_time), "20")
    word, generation, seconds = _line(taker).split()
    assert taker.wait(timeout=60) == 0
    assert word == "took" and int(generation) == 2
    assert lease_time <= float(seconds) < 20
    with open_container(f"{location}#db") as c:
        assert read_lease(c).holder == "taker"  # type: ignore[union-attr]
