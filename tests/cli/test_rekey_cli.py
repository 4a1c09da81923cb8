"""`persist rekey` across an interrupted rotation, `init --replace`, no password in output."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

import persist
from persist.db.rekey import TreesRekeyer
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs import rekey as rotation
from persist.kvs import display_location, open_store
from persist.testing.faults import FaultyStore, InjectedFault

BIN = str(Path(sys.executable).parent / "persist")
WEAK = KdfParams.weak_for_tests()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)


def _interrupted_rotation(tmp_path: Path) -> str:
    location = str(tmp_path / "s.db")
    with persist.open(location, "old", kdf=WEAK, allow_weak_kdf=True, freshness=False) as db:
        db.table("t").update({i: b"v%d" % i for i in range(500)})
    inner = open_store(location)
    faulty = FaultyStore(inner)
    ebs = EncryptedStore.open(faulty, "old", allow_weak_kdf=True, freshness=False)
    faulty.fail_write_number(faulty.writes + 2)  # the journal lands, the copy does not
    with pytest.raises(InjectedFault):
        rotation.rekey(ebs, "new", kdf=WEAK, allow_weak_kdf=True, rekeyer=TreesRekeyer())
    inner.close()
    (tmp_path / "old").write_text("old\n")
    (tmp_path / "new").write_text("new\n")
    (tmp_path / "other").write_text("other\n")
    return location


def test_an_interrupted_rotation_is_finished_with_the_new_passphrase(tmp_path: Path) -> None:
    location = _interrupted_rotation(tmp_path)
    common = ["--passphrase-file", str(tmp_path / "old"), "--allow-weak-kdf", "--no-freshness"]
    try:
        persist.open(location, "old", allow_weak_kdf=True, freshness=False)
        raise AssertionError("a writable open must refuse the unfinished rotation")
    except persist.RotationUnfinished as exc:
        assert "persist rekey" in str(exc)
    with persist.open(location, "old", allow_weak_kdf=True, freshness=False, read_only=True) as db:
        assert db.table("t")[7] == b"v7"  # the pre-rotation state reads
    wrong = _run("rekey", location, *common, "--new-passphrase-file", str(tmp_path / "other"))
    assert wrong.returncode == 2 and "another passphrase" in wrong.stderr
    done = _run("rekey", location, *common, "--new-passphrase-file", str(tmp_path / "new"))
    assert done.returncode == 0, done.stderr
    with persist.open(location, "new", allow_weak_kdf=True, freshness=False) as db:
        assert db.table("t")[7] == b"v7" and db.verify() == []


def test_an_interrupted_rotation_can_be_abandoned(tmp_path: Path) -> None:
    location = _interrupted_rotation(tmp_path)
    common = ["--passphrase-file", str(tmp_path / "old"), "--allow-weak-kdf", "--no-freshness"]
    out = _run("rekey", location, *common, "--abort")
    assert out.returncode == 0, out.stderr
    with persist.open(location, "old", allow_weak_kdf=True, freshness=False) as db:
        assert db.table("t")[7] == b"v7" and db.verify() == []
    again = _run("rekey", location, *common, "--abort")
    assert again.returncode == 2 and "no rotation" in again.stderr


def test_init_refuses_an_emptied_store_unless_replace(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("pw\n")
    args = ["--passphrase-file", str(tmp_path / "pw"), "--allow-weak-kdf", "--weak-kdf-for-tests"]
    fresh = ["--freshness", str(tmp_path / "fresh.json")]
    location = str(tmp_path / "s.db")
    assert _run("init", location, *args, *fresh).returncode == 0
    for f in tmp_path.glob("s.db*"):
        f.unlink()
    out = _run("init", location, *args, *fresh)
    assert out.returncode == 2 and "RollbackDetected" in out.stderr
    assert _run("init", location, *args, *fresh, "--replace").returncode == 0


def test_a_password_in_a_location_is_never_printed() -> None:
    uri = "postgresql://alice:s3cr3t@db.example/app?table=t"
    shown = display_location(uri)
    assert "s3cr3t" not in shown and shown.startswith("postgresql://alice:***@db.example/")
    assert display_location("/plain/path.db") == "/plain/path.db"


def _rotation_interrupted_after_the_switch(tmp_path: Path) -> str:
    """A store whose rotation to "new" switched keys and was cut in its cleanup."""
    for n in range(2, 200):
        location = str(tmp_path / f"c{n}.db")
        with persist.open(location, "old", kdf=WEAK, allow_weak_kdf=True, freshness=False) as db:
            db.table("t").update({i: b"v%d" % i for i in range(50)})
        inner = open_store(location)
        faulty = FaultyStore(inner)
        ebs = EncryptedStore.open(faulty, "old", allow_weak_kdf=True, freshness=False)
        faulty.fail_write_number(faulty.writes + n)
        with contextlib.suppress(InjectedFault):
            rotation.rekey(ebs, "new", kdf=WEAK, allow_weak_kdf=True, rekeyer=TreesRekeyer())
        inner.close()
        with open_store(location, read_only=True) as kvs:
            try:
                probe = EncryptedStore.open(kvs, "new", allow_weak_kdf=True, freshness=False)
            except persist.WrongPassphrase:
                continue
            phase = probe.rekey_phase
            probe.close()
        if phase == "cleanup":
            (tmp_path / "new").write_text("new\n")
            (tmp_path / "other").write_text("other\n")
            return location
    raise AssertionError("no write number cut the rotation in its cleanup")


@pytest.mark.parametrize("asked", ["new", "other"])
def test_a_rotation_cut_in_its_cleanup_is_finished_and_the_asked_passphrase_applies(
    asked: str, tmp_path: Path
) -> None:
    """The cleanup needs no credential; a different new passphrase asked for then takes
    a rotation of its own instead of being silently ignored."""
    location = _rotation_interrupted_after_the_switch(tmp_path)
    done = _run(
        "rekey",
        location,
        "--passphrase-file",
        str(tmp_path / "new"),
        "--new-passphrase-file",
        str(tmp_path / asked),
        "--allow-weak-kdf",
        "--no-freshness",
        "--weak-kdf-for-tests",
    )
    assert done.returncode == 0, done.stderr
    assert "cleanup" in done.stdout
    assert ("every row is now encrypted" in done.stdout) == (asked == "other")
    with persist.open(location, asked, allow_weak_kdf=True, freshness=False) as db:
        assert db.table("t")[7] == b"v7" and db.verify() == []
    if asked == "other":
        with pytest.raises(persist.WrongPassphrase):
            persist.open(location, "new", allow_weak_kdf=True, freshness=False, read_only=True)
