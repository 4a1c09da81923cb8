"""Kvs targets: the reserved key space, sessions shared between processes, copies."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from persist.errors import (
    ContainerExists,
    IntegrityError,
    StoreLocked,
    StoreNotFound,
)
from persist.kvs import open_store
from persist.remote import open_target
from persist.remote import target as target_module
from persist.remote.kvstarget import KvsContainer
from persist.remote.namespace import MARKER_VALUE, container_marker_key, marker_range
from persist.testing.remote import held_record

ROOT = Path(__file__).resolve().parents[2]


def test_malformed_container_markers_are_reported(tmp_path: Path) -> None:
    loc = str(tmp_path / "t.db")
    with open_target(loc, create=True) as t:
        t.create_container("good")
    with open_store(loc) as s:
        s.write({container_marker_key("good"): b"persist container v9"})
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.list_containers()
    with open_store(loc) as s:
        s.write({container_marker_key("good"): MARKER_VALUE})
        s.write({marker_range()[0] + b"Bad Name\x00": MARKER_VALUE})
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.list_containers()
    with open_store(loc) as s:
        s.write(
            {marker_range()[0] + b"\x00": MARKER_VALUE},
            deletes=[marker_range()[0] + b"Bad Name\x00"],
        )
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.list_containers()


def test_locations_that_are_no_kvs_target(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_target("memory:")
    with pytest.raises(ValueError):
        open_target("s3://bucket/x")
    with pytest.raises(StoreNotFound):
        open_target(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ValueError):
        open_target(str(tmp_path / "x.db#name"))  # a container: open_container
    with open_target(str(tmp_path / "odd#dir") + ".db#", create=True) as t:  # '#' in the path
        assert t.location == str(tmp_path / "odd#dir") + ".db"


_HOLD = """
import sys, time
from persist.kvs import open_store
with open_store(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_store(location: str, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, location, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "holding\n"
    return child


@pytest.mark.parametrize("kind", ["sqlite", "leveldb"])
def test_operations_wait_for_another_process_then_give_up(kind: str, tmp_path: Path) -> None:
    loc = str(tmp_path / "t.db") if kind == "sqlite" else f"leveldb://{tmp_path}/t"
    with open_target(loc, create=True, lock_timeout=5) as t:
        c = t.container()
        child = _hold_store(loc, 0.5)
        started = time.monotonic()
        c.write({b"k": b"v"})  # waits until the other process lets go
        assert time.monotonic() - started >= 0.3
        child.wait()
    with open_target(loc, lock_timeout=0.3) as t:
        child = _hold_store(loc, 3)
        try:
            with pytest.raises(StoreLocked):
                t.container().swap_lease(None, held_record())
        finally:
            child.kill()
            child.wait()
        assert t.container().read_lease() is None
        assert t.container().get(b"k") == b"v"


def test_an_interrupted_copy_is_never_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target_module, "COPY_BATCH_ROWS", 10)
    with (
        open_target(f"dir://{tmp_path}/src", create=True) as src,
        open_target(str(tmp_path / "dst.db"), create=True) as dst,
    ):
        src.container().write({b"%03d" % i: b"v" for i in range(100)})

        def interrupt(copied: int) -> None:
            if copied >= 30:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            src.copy_container("", dst, "copy", progress=interrupt)
        assert dst.list_containers() == []  # the marker comes last
        with pytest.raises(ContainerExists):  # the partial rows are never overwritten
            src.copy_container("", dst, "copy")
        dst.delete_container("copy")  # but they can be deleted
        assert src.copy_container("", dst, "copy") == 100
        assert dst.list_containers() == ["copy"]


def test_fencing_on_postgresql_is_one_conditional_batch(pg_server: object) -> None:
    """A backend whose writable handle does not exclude other writers of the target
    (PostgreSQL) fences with the kvs contract's conditional batch (``write_if``):
    the lease check and the batch are one transaction."""
    from tests.conftest import pg_location

    location = pg_location(pg_server)  # type: ignore[arg-type]
    with open_target(location, create=True) as t:
        c = t.container()
        assert isinstance(c, KvsContainer)
        mine = held_record()
        assert c.swap_lease(None, mine)
        assert c.write_if_lease(mine, {b"root": b"r1"})
        assert c.get(b"root") == b"r1"
        other = held_record("someone-else", generation=2, serial=2)
        assert c.swap_lease(mine, other)  # taken over
        assert not c.write_if_lease(mine, {b"root": b"r2"})
        assert c.get(b"root") == b"r1"
