"""Continuous replication: persist.open(..., replicas=[...]) (persist/db/replication.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.db import replication
from persist.ebs import KdfParams
from persist.errors import StoreIOError
from persist.mux import MuxConfig
from persist.remote import restore

from .conftest import target_location_for
from .test_sync import PW, WEAK, contents, replica_issues


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))


def _open(tmp_path: Path, target: str, **kw: Any) -> persist.Database:
    return persist.open(
        str(tmp_path / "s.db"),
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        replicas=[target],
        **kw,
    )


def _before_each_push(monkeypatch: pytest.MonkeyPatch, before: Callable[[int], None]) -> None:
    """Run ``before(n)`` ahead of the replication thread's n-th push (from 1): it
    may wait or raise (the replica hangs or fails); then the real push runs."""
    real = replication.sync.push
    calls = [0]

    def push(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        before(calls[0])
        return real(*a, **k)

    monkeypatch.setattr(replication.sync, "push", push)


def test_commit_wait_replicated_waits_for_a_slow_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = target_location_for("dir", tmp_path)
    gate = threading.Event()

    def slow(n: int) -> None:
        gate.wait(10)  # the replica answers only when the test lets it

    _before_each_push(monkeypatch, slow)
    with _open(tmp_path, target) as db:
        db.root["k"] = 1
        db.commit_wait()  # a local commit does not wait for the replica
        count = db._ebs.root.count
        timer = threading.Timer(0.3, gate.set)
        started = time.monotonic()
        timer.start()
        db.commit_wait(replicated=True)
        assert time.monotonic() - started >= 0.25
        held, issues = replica_issues(target)  # read the replica directly
        assert held >= count and issues == []
        db.root["k"] = 2
        asyncio.run(db.acommit_wait(replicated=True))
        assert replica_issues(target)[0] >= db._ebs.root.count
        assert db.replication_status()[0].error is None


def test_a_failing_replica_is_reported_retried_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = target_location_for("dir", tmp_path)
    failing = threading.Event()
    failing.set()

    def flaky(n: int) -> None:
        if failing.is_set():
            raise StoreIOError("the replica is unreachable")

    _before_each_push(monkeypatch, flaky)
    with _open(tmp_path, target) as db:
        for i in range(5):
            db.root[i] = i  # local commits go on while the replica fails
            db.commit_wait()
        deadline = time.monotonic() + 5
        while db.replication_status()[0].failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status = db.replication_status()[0]
        assert status.failures >= 2 and "StoreIOError" in (status.error or "")
        assert status.replicated < status.committed
        failing.clear()
        db.commit_wait(replicated=True)
        assert replica_issues(target)[0] >= db._ebs.root.count
        assert db.replication_status()[0].error is None
        db.root["after"] = 1  # never poisoned
        db.commit_wait()


def _open_lazy(tmp_path: Path, target: str, **kw: Any) -> persist.Database:
    """A database whose waves commit only when asked (or at close)."""
    return _open(tmp_path, target, config=MuxConfig(max_delay=60.0), **kw)


def test_close_pushes_the_final_state_to_the_replicas(tmp_path: Path) -> None:
    """The last waves commit in close(); before, the replication thread had
    already stopped then, and the replica kept an older state."""
    target = target_location_for("dir", tmp_path)
    db = _open_lazy(tmp_path, target)
    db.root["k"] = "last"
    db.close()  # commits the wave, then pushes it
    held, issues = replica_issues(target)
    assert held > 0 and issues == []
    restore(target, str(tmp_path / "r.db"), passphrase=PW, **WEAK)
    assert contents(str(tmp_path / "r.db")) == contents(str(tmp_path / "s.db"))
    assert contents(str(tmp_path / "r.db"))["root:'k'"] == "last"


def test_close_gives_a_failing_replica_one_try_and_logs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = target_location_for("dir", tmp_path)
    calls: list[float] = []

    def down_after_the_first(n: int) -> None:
        calls.append(time.monotonic())
        if n > 1:
            raise StoreIOError("the replica is unreachable")

    _before_each_push(monkeypatch, down_after_the_first)
    db = _open_lazy(tmp_path, target, replica_close_timeout=60.0)
    db.root["k"] = 1
    db.commit_wait()
    deadline = time.monotonic() + 10  # its retries back off: 0.05, 0.1, 0.2 ... 5 s
    while db.replication_status()[0].failures < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    tried = len(calls)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="persist.replication"):
        db.close()
    assert len(calls) == tried + 1  # one last try at once, not after its backoff
    assert calls[-1] - started < 2.0
    assert time.monotonic() - started < 30  # not the whole replica_close_timeout
    assert any("closing with replicas behind" in r.getMessage() for r in caplog.records)
    assert "pw" not in caplog.text


def test_close_waits_for_a_slow_replica_at_most_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = target_location_for("dir", tmp_path)
    release = threading.Event()

    def hangs_after_the_first(n: int) -> None:
        if n > 1:
            release.wait(30)  # the replica hangs until the test lets it go

    _before_each_push(monkeypatch, hangs_after_the_first)
    db = _open_lazy(tmp_path, target, replica_close_timeout=0.3)
    db.root["k"] = 1
    closer = threading.Thread(target=db.close)
    with caplog.at_level("WARNING", logger="persist.replication"):
        closer.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
        # the timeout passed and was logged while the push still hangs
        assert any("closing with replicas behind" in r.getMessage() for r in caplog.records)
        assert closer.is_alive()  # a push in flight is let finish (docs/remote.md)
        release.set()
        closer.join(10)
    assert not closer.is_alive()
    assert replica_issues(target)[1] == []


def test_replica_close_timeout_is_checked(tmp_path: Path) -> None:
    target = target_location_for("dir", tmp_path)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="replica_close_timeout"):
            _open_lazy(tmp_path, target, replica_close_timeout=bad)
    with _open_lazy(tmp_path, target) as db:  # the failed opens left it usable
        db.root["ok"] = 1


def test_a_push_in_flight_when_close_begins_and_fails_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = target_location_for("dir", tmp_path)
    release = threading.Event()
    calls = [0]

    def fails_in_flight(n: int) -> None:
        calls[0] = n
        if n == 2:  # in flight when close begins, then fails
            release.wait(30)
            raise StoreIOError("the replica dropped the connection")

    _before_each_push(monkeypatch, fails_in_flight)
    db = _open_lazy(tmp_path, target, replica_close_timeout=60.0)
    db.root["k"] = "last"
    db.commit_wait()  # wakes the thread: its push hangs
    deadline = time.monotonic() + 10
    while calls[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    replicator = db._replicator
    assert replicator is not None
    replicator._backoff = replicator._max_backoff = 30.0  # a failure would wait 30 s
    closer = threading.Thread(target=db.close)
    started = time.monotonic()
    closer.start()
    while replicator._drain_since is None and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()  # the push in flight fails now, after close began
    closer.join(45)
    assert not closer.is_alive()
    assert calls[0] == 3  # the failure of a push begun before close did not end the drain
    assert time.monotonic() - started < 15.0  # and its retry came at once, not after 30 s
    assert replica_issues(target)[1] == []
    restore(target, str(tmp_path / "r.db"), passphrase=PW, **WEAK)
    assert contents(str(tmp_path / "r.db"))["root:'k'"] == "last"
