"""`persist verify`, `passwd` and `rekey` through the real console script.

Damage is done to the raw SQLite rows with apsw, the way a hostile host would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import persist
from persist.btree import NodeId, NodeReader
from persist.btree.node import Internal
from persist.db.treestore import COUNT_TABLE_PREFIX, TABLE_PREFIX
from persist.ebs import EncryptedStore
from persist.kvs import open_store

BIN = str(Path(sys.executable).parent / "persist")
PW = "first passphrase"
BIG = [b"A" * 300, b"B" * 300]  # large values shared by many keys: counted blobs


class Store:
    """A small database on SQLite plus the addresses of its interesting rows."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.path = str(tmp / "s.db")
        self.fresh = str(tmp / "fresh.json")
        (tmp / "pw").write_text(PW + "\n")
        self.write(range(300))

    def opts(self, pw_file: str = "pw") -> list[str]:
        return [
            "--passphrase-file",
            str(self.dir / pw_file),
            "--allow-weak-kdf",
            "--freshness",
            self.fresh,
        ]

    def open(self, **kw: object) -> persist.Database:
        return persist.open(
            self.path,
            PW,
            allow_weak_kdf=True,
            freshness=self.fresh,
            kdf=persist.ebs.KdfParams.weak_for_tests(),
            **kw,
        )  # type: ignore[arg-type]

    def write(self, keys: range) -> None:
        with self.open() as db:
            t = db.table("t")
            for i in keys:
                t[i] = BIG[i % 2] if i % 3 == 0 else f"value {i}"

    def run(
        self, command: str, *args: str, pw_file: str = "pw"
    ) -> subprocess.CompletedProcess[str]:
        """``persist COMMAND LOCATION ARGS... --passphrase-file ...``."""
        return subprocess.run(
            [BIN, command, self.path, *args, *self.opts(pw_file)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def verify(self) -> subprocess.CompletedProcess[str]:
        return self.run("verify")

    def addresses(self) -> dict[str, list[bytes]]:
        """Storage keys of tree nodes, count-tree nodes and root slots (walked from the root)."""
        with open_store(self.path, read_only=True) as kvs:
            ebs = EncryptedStore.open(kvs, PW, allow_weak_kdf=True, freshness=False)
            nodes = _walk(ebs, TABLE_PREFIX + "t")
            counts = _walk(ebs, COUNT_TABLE_PREFIX + "t")
            slots = [ebs.keyring.root_slot_key(s) for s in (0, 1)]
            ebs.close()
        return {"nodes": nodes, "counts": counts, "slots": slots}

    def sql(self, fn: Callable[[apsw.Connection], None]) -> None:
        conn = apsw.Connection(self.path)
        with conn:
            fn(conn)
        conn.close()

    def raw(self, key: bytes) -> bytes:
        conn = apsw.Connection(self.path)
        value = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchall()[0][0]
        conn.close()
        assert isinstance(value, bytes)
        return value

    def set_raw(self, key: bytes, value: bytes) -> None:
        self.sql(lambda c: c.execute("UPDATE kv SET v = ? WHERE k = ?", (value, key)))

    def snapshot(self) -> Path:
        """A byte copy of the store files (the host's old copy)."""
        copy = self.dir / "snapshot"
        copy.mkdir(exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                shutil.copy(self.path + suffix, copy / ("s.db" + suffix))
        return copy

    def restore(self, copy: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            target = self.path + suffix
            if (copy / ("s.db" + suffix)).exists():
                shutil.copy(copy / ("s.db" + suffix), target)
            elif os.path.exists(target):
                os.remove(target)


def _walk(ebs: EncryptedStore, desc: str) -> list[bytes]:
    """Every node of one tree, root first."""
    table = ebs.table(desc)

    class Source:
        def load(self, nid: NodeId) -> bytes:
            return table.read_node(nid)

    reader, out = NodeReader(Source()), []
    stack = [NodeId(ebs.root.catalog[desc])]
    while stack:
        nid = stack.pop(0)
        out.append(bytes(nid))
        node = reader.node(nid)
        if isinstance(node, Internal):
            stack.extend(node.children)
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def flip(value: bytes, pos: int = -5) -> bytes:
    b = bytearray(value)
    b[pos] ^= 0x10
    return bytes(b)


def assert_found(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    for w in words:
        assert w in out.stdout, (w, out.stdout)


def test_clean_store_verifies(store: Store) -> None:
    out = store.verify()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intact" in out.stdout
    report = json.loads(store.run("verify", "--json").stdout)
    assert report["intact"] is True and report["problems"] == []


def test_bit_flip_in_a_node(store: Store) -> None:
    node = store.addresses()["nodes"][3]
    store.set_raw(node, flip(store.raw(node)))
    assert_found(store.verify(), node.hex())


def test_bit_flip_in_a_count_tree_node(store: Store) -> None:
    row = store.addresses()["counts"][0]
    store.set_raw(row, flip(store.raw(row)))
    assert_found(store.verify(), row.hex())


def test_bit_flip_in_a_root_slot(store: Store) -> None:
    for slot in store.addresses()["slots"]:
        before = store.raw(slot)
        store.set_raw(slot, flip(before))
        out = store.verify()
        assert out.returncode == 1, out.stdout + out.stderr
        assert "root" in out.stdout.lower() or "Rollback" in out.stdout
        store.set_raw(slot, before)
    assert store.verify().returncode == 0


def test_deleted_node(store: Store) -> None:
    node = store.addresses()["nodes"][2]
    store.sql(lambda c: c.execute("DELETE FROM kv WHERE k = ?", (node,)))
    assert_found(store.verify(), "missing", node.hex())


def test_added_orphan_row(store: Store) -> None:
    junk = os.urandom(32)
    store.sql(lambda c: c.execute("INSERT INTO kv VALUES (?, ?)", (junk, os.urandom(120))))
    assert_found(store.verify(), "orphan", junk.hex())


def test_two_swapped_rows(store: Store) -> None:
    a, b = store.addresses()["nodes"][1:3]
    va, vb = store.raw(a), store.raw(b)
    store.set_raw(a, vb)
    store.set_raw(b, va)
    assert_found(store.verify(), a.hex(), b.hex())


def test_put_back_count_tree_node_is_an_orphan_and_changes_nothing(store: Store) -> None:
    """Counts live in a Merkle tree named by the root (format v2): an old count node
    the host puts back is unreachable, so it is reported and never believed."""
    row = store.addresses()["counts"][0]
    old = store.raw(row)
    store.write(range(300, 330))  # more references to the shared blobs: counts change
    assert store.addresses()["counts"][0] != row
    store.sql(lambda c: c.execute("INSERT INTO kv VALUES (?, ?)", (row, old)))
    assert_found(store.verify(), "orphan", row.hex())
    with store.open() as db:  # the counts the library uses are the current ones
        t = db.table("t")
        for i in range(0, 330, 3):
            del t[i]
        assert all(t[i] == f"value {i}" for i in range(330) if i % 3)
    store.sql(lambda c: c.execute("DELETE FROM kv WHERE k = ?", (row,)))
    assert store.verify().returncode == 0


def test_whole_store_rolled_back_with_freshness_record(store: Store) -> None:
    copy = store.snapshot()
    store.write(range(300, 310))
    store.restore(copy)
    out = store.verify()
    assert_found(out, "RollbackDetected")


def test_wrong_passphrase_exits_2_and_changes_nothing(store: Store) -> None:
    (store.dir / "wrong").write_text("not it\n")
    # The data is in s.db and s.db-wal; s.db-shm is SQLite's shared-memory index.
    wal = Path(store.path + "-wal")
    before = (Path(store.path).read_bytes(), wal.read_bytes() if wal.exists() else b"")
    out = store.run("verify", pw_file="wrong")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "WrongPassphrase" in lines[0] and "not it" not in out.stderr
    # A reader may create an empty WAL file; no byte of data changes.
    after = (Path(store.path).read_bytes(), wal.read_bytes() if wal.exists() else b"")
    assert before == after


def test_missing_store_and_usage_exit_2(store: Store, tmp_path: Path) -> None:
    out = subprocess.run(
        [BIN, "verify", str(tmp_path / "none.db"), *store.opts()], capture_output=True, text=True
    )
    assert out.returncode == 2 and "StoreNotFound" in out.stderr
    out = subprocess.run([BIN, "verify"], capture_output=True, text=True)
    assert out.returncode == 2


def test_passwd(store: Store) -> None:
    (store.dir / "new").write_text("second passphrase\n")
    out = store.run(
        "passwd", "--new-passphrase-file", str(store.dir / "new"), "--weak-kdf-for-tests"
    )
    assert out.returncode == 0, out.stderr
    assert store.run("verify", pw_file="new").returncode == 0
    assert store.run("verify", pw_file="pw").returncode == 2


def test_info_and_dump_show_no_secrets(store: Store) -> None:
    out = store.run("info")
    assert out.returncode == 0 and "t " in out.stdout and "300 entries" in out.stdout
    assert PW not in out.stdout
    dumped = [json.loads(line) for line in store.run("dump", "t").stdout.splitlines()]
    assert len(dumped) == 300 and dumped[1] == {"key": 1, "value": "value 1"}


def test_init_creates_a_store(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("init pw\n")
    args = ["--passphrase-file", str(tmp_path / "pw"), "--allow-weak-kdf", "--no-freshness"]
    out = subprocess.run(
        [BIN, "init", str(tmp_path / "n.db"), "--weak-kdf-for-tests", *args],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [BIN, "verify", str(tmp_path / "n.db"), *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [BIN, "init", str(tmp_path / "n.db"), "--weak-kdf-for-tests", *args],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not empty" in out.stderr


@pytest.mark.slow
def test_rekey_killed_at_random_points(store: Store) -> None:
    """However a rotation is cut short, the store opens with its passphrase and verifies."""
    rng = random.Random(int.from_bytes(os.urandom(4)))
    start = time.monotonic()
    assert store.run("rekey", "--weak-kdf-for-tests").returncode == 0
    full = time.monotonic() - start
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [BIN, "rekey", store.path, *store.opts(), "--weak-kdf-for-tests"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3 * full, 0.95 * full))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        try:
            db = store.open()  # a writable open finishes a rotation that switched keys
        except persist.RotationUnfinished:  # cut during the copy: the new passphrase resumes
            assert store.run("rekey", "--weak-kdf-for-tests").returncode == 0
            db = store.open()
        with db:
            assert len(db.table("t")) == 300
            assert db.table("t")[3] == BIG[1]
            assert db.verify() == []
    assert kills >= 4  # most runs were really cut short
