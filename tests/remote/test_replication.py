"""Continuous replication: persist.open(..., replicas=[...]) (persist/db/replication.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.db import replication
from persist.ebs import KdfParams
from persist.errors import StoreIOError

from .conftest import target_location_for
from .test_sync import replica_issues


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))


def _open(tmp_path: Path, target: str) -> persist.Database:
    return persist.open(
        str(tmp_path / "s.db"),
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        replicas=[target],
    )


def test_commit_wait_replicated_waits_for_a_slow_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = target_location_for("dir", tmp_path)
    real = replication.sync.push
    gate = threading.Event()

    def slow_push(*a: Any, **k: Any) -> Any:
        gate.wait(10)  # the replica answers only when the test lets it
        return real(*a, **k)

    monkeypatch.setattr(replication.sync, "push", slow_push)
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
    real = replication.sync.push
    failing = threading.Event()
    failing.set()

    def flaky_push(*a: Any, **k: Any) -> Any:
        if failing.is_set():
            raise StoreIOError("the replica is unreachable")
        return real(*a, **k)

    monkeypatch.setattr(replication.sync, "push", flaky_push)
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
