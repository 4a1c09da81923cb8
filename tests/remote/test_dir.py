"""Dir targets: the layout on disk, the state log, and a host that rigs the directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persist.errors import IntegrityError, NotAStore, StoreIOError, StoreNotFound
from persist.remote import containerdir, open_target
from persist.remote import target as target_module
from persist.remote.dirstate import DirState
from persist.remote.dirtarget import LAYOUT_MARKER, DirContainer
from persist.testing.remote import held_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "t"


@pytest.fixture
def loc(root: Path) -> str:
    return f"dir://{root}"


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# -- layout ---------------------------------------------------------------------------


def test_layout_one_file_per_row_named_by_its_key(root: Path, loc: str) -> None:
    key = bytes.fromhex("ab" * 32)
    with open_target(loc, create=True) as t:
        t.container().write({key: b"ciphertext", b"\x07": b"one byte"})
        t.create_container("named").write({b"\x01\x02\x03": b"x"})
    assert (root / "persist-target").read_bytes() == LAYOUT_MARKER
    assert (root / "default/rows/ab/ab" / key.hex()).read_bytes() == b"ciphertext"
    assert (root / "default/rows/07/-/07").read_bytes() == b"one byte"
    assert (root / "containers/named/rows/01/02/010203").read_bytes() == b"x"
    assert list((root / "tmp").iterdir()) == []  # no temporary file is left behind


def test_rows_spread_over_two_levels_of_256(root: Path, loc: str) -> None:
    keys = [bytes([a, b]) + bytes(30) for a in (0, 1, 255) for b in (0, 9, 255)]
    with open_target(loc, create=True) as t:
        t.container().write({k: b"v" for k in keys})
        assert [k for k, _ in t.container().scan()] == sorted(keys)
    leaves = sorted(
        p.relative_to(root / "default/rows") for p in (root / "default/rows").glob("*/*")
    )
    assert [str(p) for p in leaves] == [
        f"{a:02x}/{b:02x}" for a in (0, 1, 255) for b in (0, 9, 255)
    ]


def test_conditional_rows_live_in_the_state_log(root: Path, loc: str) -> None:
    with open_target(loc, create=True) as t:
        c = t.container()
        c.write({b"root": b"plain"})
        assert c.compare_and_set(b"root", b"plain", b"conditional")
        assert not (root / "default/rows/72/6f/726f6f74").exists()  # moved into the log
        assert c.swap_lease(None, held_record())
        for i in range(100):
            assert c.write_if_lease(held_record(), {b"root": b"r%d" % i})
        states = sorted(os.listdir(root / "default/state"))
        assert len(states) <= containerdir.KEEP_STATES + 1
        assert int(states[-1]) == 102
        assert c.get(b"root") == b"r99" and dict(c.scan()) == {b"root": b"r99"}


# -- opening ---------------------------------------------------------------------------


def test_opening_what_is_not_a_dir_target(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        open_target(f"dir://{tmp_path}/missing")
    with pytest.raises(StoreNotFound):
        open_target(f"dir://{tmp_path}/no/such/parent", create=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStore):
        open_target(f"dir://{tmp_path}/file", create=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(NotAStore):
        open_target(f"dir://{tmp_path}/other", create=True)
    assert os.listdir(tmp_path / "other") == ["photo.jpg"]  # left untouched
    with pytest.raises(ValueError):
        open_target("dir://relative/path")


def test_a_tampered_marker_is_refused(root: Path, loc: str) -> None:
    open_target(loc, create=True).close()
    (root / "persist-target").write_bytes(b"persist dir target 9\n")
    with pytest.raises(NotAStore):
        open_target(loc)


def test_an_interrupted_initialization_is_finished(root: Path, loc: str) -> None:
    (root / "tmp").mkdir(parents=True)
    (root / "containers").mkdir()
    with pytest.raises(StoreNotFound):
        open_target(loc)
    with open_target(loc, create=True) as t:
        t.container().write({b"k": b"v"})
    assert (root / "persist-target").read_bytes() == LAYOUT_MARKER


# -- a hostile host ---------------------------------------------------------------------


def _target_with_row(loc: str) -> bytes:
    key = bytes.fromhex("cd" * 32)
    with open_target(loc, create=True) as t:
        t.container().write({key: b"row"})
    return key


def test_a_symlinked_row_is_never_followed(root: Path, loc: str, tmp_path: Path) -> None:
    key = _target_with_row(loc)
    secret = tmp_path / "secret"
    secret.write_bytes(b"the user's private key")
    path = root / "default/rows/cd/cd" / key.hex()
    path.unlink()
    path.symlink_to(secret)
    with open_target(loc) as t, open_target(f"dir://{tmp_path}/copy", create=True) as dest:
        with pytest.raises(IntegrityError):
            t.container().get(key)
        with pytest.raises(IntegrityError):
            list(t.container().scan())
        with pytest.raises(IntegrityError):
            t.copy_container("", dest, "stolen")
        assert dest.list_containers() == []
    assert b"private" not in b"".join(
        p.read_bytes() for p in (tmp_path / "copy").rglob("*") if p.is_file()
    )


def test_a_symlinked_directory_is_never_followed(root: Path, loc: str, tmp_path: Path) -> None:
    key = _target_with_row(loc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / key.hex()).write_bytes(b"planted")
    leaf = root / "default/rows/cd/cd"
    (leaf / key.hex()).unlink()
    leaf.rmdir()
    leaf.symlink_to(elsewhere)
    with open_target(loc) as t:
        with pytest.raises(IntegrityError):
            t.container().get(key)
        with pytest.raises(IntegrityError):
            list(t.container().scan())


def test_a_fifo_for_a_row_does_not_hang(root: Path, loc: str) -> None:
    key = _target_with_row(loc)
    path = root / "default/rows/cd/cd" / key.hex()
    path.unlink()
    os.mkfifo(path)
    # In a child process, so that a read that hangs fails the test instead.
    read = "\n".join(
        [
            "import sys",
            "from persist.errors import IntegrityError",
            "from persist.remote import open_target",
            "try:",
            "    open_target(sys.argv[1]).container().get(bytes.fromhex(sys.argv[2]))",
            "except IntegrityError:",
            "    sys.exit(7)",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", read, loc, key.hex()], timeout=30, cwd=ROOT, capture_output=True
    )
    assert done.returncode == 7, done.stderr


def test_an_oversized_row_is_refused_unread(root: Path, loc: str) -> None:
    key = _target_with_row(loc)
    with open(root / "default/rows/cd/cd" / key.hex(), "r+b") as f:
        f.truncate(target_module.MAX_ROW_SIZE + 1)  # sparse: nothing to read
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.container().get(key)


@pytest.mark.parametrize(
    "where, name",
    [
        ("default/rows", "zz"),
        ("default/rows", "AB"),
        ("default/rows/cd", "xyz"),
        ("default/rows/cd/cd", "notes.txt"),
        ("default/rows/cd/cd", "CD" * 32),
        ("default/rows/cd/cd", "ee" * 32),  # a key in the wrong directory
        ("default/rows/cd/cd", "cd"),  # a 1-byte key outside "-"
        ("default/rows/cd/cd", "cdc"),  # odd length
    ],
)
def test_foreign_entries_among_rows_are_reported(
    root: Path, loc: str, where: str, name: str
) -> None:
    _target_with_row(loc)
    path = root / where / name
    if where.count("/") < 3:
        path.mkdir()
    else:
        path.write_bytes(b"junk")
    with open_target(loc) as t, pytest.raises(IntegrityError):
        list(t.container().scan())


def test_foreign_entries_among_containers_are_reported(root: Path, loc: str) -> None:
    with open_target(loc, create=True) as t:
        t.create_container("good")
    (root / "containers" / "Bad Name").mkdir()
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.list_containers()
    (root / "containers" / "Bad Name").rmdir()
    (root / "containers" / "plainfile").write_bytes(b"x")
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.list_containers()


def _state_file(root: Path) -> Path:
    return max((root / "default/state").iterdir())


def _with_lease(loc: str) -> None:
    with open_target(loc, create=True) as t:
        c = t.container()
        assert c.swap_lease(None, held_record())
        assert c.compare_and_set(b"root", None, b"r")


@pytest.mark.parametrize("offset", [0, 5, 9, 30, 60, 120, -20, -1])
def test_a_damaged_state_file_is_reported(root: Path, loc: str, offset: int) -> None:
    _with_lease(loc)
    path = _state_file(root)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with open_target(loc) as t:
        for read in (t.container().read_lease, lambda: t.container().get(b"root")):
            with pytest.raises(IntegrityError):
                read()


def test_a_truncated_or_renamed_state_file_is_reported(root: Path, loc: str) -> None:
    _with_lease(loc)
    path = _state_file(root)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.container().read_lease()
    path.write_bytes(data)
    path.rename(path.with_name(f"{int(path.name) + 5:020d}"))  # the serial inside disagrees
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.container().read_lease()
    (root / "default/state" / "junk").write_bytes(b"")
    with open_target(loc) as t, pytest.raises(IntegrityError):
        t.container().read_lease()


def test_a_state_file_round_trips_and_parses_strictly() -> None:
    data, state = DirState(0, bytes(32), bytes(32), None, {}).successor(
        held_record(), {b"a": b"1", b"b": None}
    )
    assert DirState.parse(data, 1) == state
    for cut in range(len(data)):
        with pytest.raises(IntegrityError):
            DirState.parse(data[:cut], 1)
    with pytest.raises(IntegrityError):
        DirState.parse(data, 2)


# -- the state log under a stalled writer ------------------------------------------------


def _stall_then_link(loc: str, transitions: int) -> bool:
    """Read the state, let others make ``transitions`` changes, then link the
    successor of the state read: what a process stalled mid-transition does."""
    with open_target(loc, create=True) as t, open_target(loc) as others:
        c = t.container()
        assert isinstance(c, DirContainer)
        assert c.compare_and_set(b"root", None, b"r0")
        with c._open(write=True) as cdir:
            assert cdir is not None
            stale = cdir.state()
            for i in range(transitions):
                assert others.container().compare_and_set(b"root", b"r%d" % i, b"r%d" % (i + 1))
            data, new = stale.successor(stale.lease, {b"root": b"stale"})
            linked = cdir._link(data, new)
        assert others.container().get(b"root") == b"r%d" % transitions
        return linked


def test_a_stale_link_is_not_taken_for_a_transition(loc: str) -> None:
    # The stale serial was removed and linked again; its successor, still
    # there, names another predecessor: the link does not count.
    assert not _stall_then_link(loc, containerdir.KEEP_STATES + 1)


def test_a_stale_link_past_what_the_log_remembers_is_unknown(loc: str) -> None:
    with pytest.raises(StoreIOError, match="unknown"):
        _stall_then_link(loc, containerdir.KEEP_STATES + 10)


def test_a_link_after_a_short_stall_loses_the_race(loc: str) -> None:
    assert not _stall_then_link(loc, 3)  # the serial still exists: EEXIST


# -- staged copies and deletes -------------------------------------------------------------


def test_an_interrupted_copy_leaves_nothing(
    root: Path, loc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target_module, "COPY_BATCH_ROWS", 10)
    with open_target(loc, create=True) as t:
        t.container().write({b"%03d" % i: b"v" for i in range(100)})

        def interrupt(copied: int) -> None:
            if copied >= 30:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            t.copy_container("", t, "copy", progress=interrupt)
        assert t.list_containers() == []
        assert list((root / "tmp").iterdir()) == []
        assert t.copy_container("", t, "copy") == 100


def test_a_lost_default_container_reads_empty_and_is_put_back_by_a_write(
    root: Path, loc: str
) -> None:
    open_target(loc, create=True).close()
    (root / "default/rows").rmdir()
    (root / "default/state").rmdir()
    (root / "default").rmdir()
    with open_target(loc, read_only=True) as t:
        assert t.container().get(b"k") is None and list(t.container().scan()) == []
    assert not (root / "default").exists()  # a read writes nothing
    with open_target(loc) as t:
        t.container().write({b"k": b"v"})
        assert t.container().get(b"k") == b"v"


def test_delete_leaves_no_trash(root: Path, loc: str) -> None:
    with open_target(loc, create=True) as t:
        t.create_container("a").write({b"k%d" % i: b"v" for i in range(50)})
        t.container().write({b"k": b"v"})
        t.delete_container("a")
        t.delete_container("")
        assert t.list_containers() == [] and list(t.container().scan()) == []
    assert list((root / "tmp").iterdir()) == []
    assert sorted(os.listdir(root / "default")) == ["rows", "state"]
