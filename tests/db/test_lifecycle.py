"""Issue 13, "Life cycle and files": opening creates nothing it was not asked
to, a refused close leaves the database whole, a closed database serves no
read, and read-only media and unwritable files are handled at open."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.ebs import KdfParams
from persist.errors import ClosedError, ReadOnlyError, StoreNotFound

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True}
Opener = Callable[..., persist.Database]


@pytest.fixture
def open_db(location: str, tmp_path: Path) -> Iterator[Opener]:
    opened: list[persist.Database] = []

    def opener(**kw: Any) -> persist.Database:
        db = persist.open(location, "pw", **{**WEAK, "freshness": str(tmp_path / "f"), **kw})
        opened.append(db)
        return db

    yield opener
    for db in opened:
        db.close()


class Thing(persist.Persistent):
    def __init__(self, name: str) -> None:
        self.name = name


def test_close_inside_an_atomic_block_leaves_the_database_usable(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")
    with db.atomic():
        t["before"] = 1
        with pytest.raises(RuntimeError, match="atomic block"):
            db.close()
        assert not db.closed
        t["after"] = 2  # still writable inside the block
        assert t["before"] == 1
    db.commit_wait()  # the block's writes land when it ends
    assert dict(t.items()) == {"before": 1, "after": 2}
    db.close()  # and close works once the block has ended
    assert db.closed
    db = open_db()  # the store is not left locked, and nothing was lost
    assert dict(db.table("t").items()) == {"before": 1, "after": 2}


def test_reads_after_close_raise_closed_error(open_db: Opener) -> None:
    db = open_db()
    t = db.table("t")
    t["k"] = "v"
    db.root["thing"] = Thing("x")
    db.commit_wait()
    assert t["k"] == "v"  # now in the caches
    ghost = db.root["thing"]
    db.close()
    db = open_db()
    t = db.table("t")
    assert t["k"] == "v"
    ghost = db.root["thing"]  # a ghost: its state is not loaded yet
    keys = t.keys()
    db.close()
    for read in (
        lambda: t["k"],
        lambda: t.get("k"),
        lambda: "k" in t,
        lambda: len(t),
        lambda: list(t),
        lambda: list(keys),
        lambda: "k" in keys,
        lambda: ghost.name,
        db.tables,
        db.record_types,
        db.metrics,
        db.verify,
        db.refresh,
    ):
        with pytest.raises(ClosedError):
            read()


@pytest.mark.parametrize("backend", ["sqlite", "leveldb", "memory"])
def test_open_without_create_on_a_missing_store_creates_nothing(
    backend: str, tmp_path: Path
) -> None:
    where = tmp_path / "dir"
    where.mkdir()
    fresh = tmp_path / "state"
    location = {
        "sqlite": str(where / "missing.db"),
        "leveldb": f"leveldb://{where / 'missing'}",
        "memory": "memory:never-created",
    }[backend]
    for kw in ({"create": False}, {"read_only": True}):
        with pytest.raises(StoreNotFound):
            persist.open(location, "pw", **WEAK, freshness=str(fresh / "rec"), **kw)
    assert os.listdir(where) == []  # no file, no -wal, -shm or -lock, no directory
    assert not fresh.exists()
    with pytest.raises(StoreNotFound):  # the memory backend did not make one either
        persist.open("memory:never-created", "pw", **WEAK, freshness=False, create=False)


# -- read-only media and unwritable files ----------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Callable[[], None]]:
    """A tmpfs mounted at ``where``; yields a function that remounts it read-only."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"this sandbox cannot mount: {mounted.stderr.decode().strip()}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_read_only_open_works_on_read_only_media(tmp_path: Path) -> None:
    media = tmp_path / "media"
    fresh = str(tmp_path / "fresh")
    with tmpfs(media) as remount_read_only:
        path = str(media / "s.db")
        with persist.open(path, "pw", **WEAK, freshness=fresh) as db:
            db.table("t").update({i: f"v{i}" for i in range(100)})
        remount_read_only()
        files = sorted(os.listdir(media))
        with pytest.raises(OSError):
            (media / "probe").write_text("x")  # really read-only
        with persist.open(path, "pw", allow_weak_kdf=True, freshness=fresh, read_only=True) as db:
            assert db.table("t")[42] == "v42" and len(db.table("t")) == 100
            assert db.verify() == []
        with pytest.raises(ReadOnlyError):  # a writer is refused at open, clearly
            persist.open(path, "pw", allow_weak_kdf=True, freshness=fresh)
        (tmp_path / "pw").write_text("pw\n")
        opts = ["--passphrase-file", str(tmp_path / "pw"), "--allow-weak-kdf", "--freshness", fresh]
        for command in ("info", "verify"):
            out = subprocess.run(
                [str(Path(sys.executable).parent / "persist"), command, path, *opts],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stdout + out.stderr
        assert sorted(os.listdir(media)) == files


NOBODY = 65534

# Runs as root only to import everything the open needs (the interpreter lives
# under /root, which nobody cannot read), then drops to the nobody user.
AS_NOBODY = """
import os, sys
import persist, persist.kvs.sqlite, persist.db.rekey, apsw, argon2
from persist.errors import ReadOnlyError
os.setgroups([])
os.setgid({uid})
os.setuid({uid})
path = sys.argv[1]
try:
    persist.open(path, "pw", allow_weak_kdf=True, freshness=False)
except ReadOnlyError as exc:
    print("refused:", exc)
with persist.open(path, "pw", allow_weak_kdf=True, freshness=False, read_only=True) as db:
    print("read:", db.root["k"])
"""


def test_writable_open_of_a_store_this_process_cannot_write_is_refused() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to the nobody user needs root")
    where = Path(tempfile.mkdtemp(prefix="persist-nobody-", dir="/tmp"))
    try:
        where.chmod(0o755)  # nobody may enter and read, not write
        path = str(where / "s.db")
        with persist.open(path, "pw", **WEAK, freshness=False) as db:
            db.root["k"] = "v"
        os.chmod(path, 0o644)
        before = Path(path).read_bytes(), sorted(os.listdir(where))
        out = subprocess.run(
            [sys.executable, "-c", AS_NOBODY.format(uid=NOBODY), path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "refused: store" in out.stdout and "not writable" in out.stdout
        assert "read: v" in out.stdout
        assert (Path(path).read_bytes(), sorted(os.listdir(where))) == before
    finally:
        shutil.rmtree(where)
