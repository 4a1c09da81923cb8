"""Misuse of the public API and the CLI: each raises its documented error and the
store stays intact (the same contents, verify clean) after every case.

The documented errors are the table "Errors: who raises what" of docs/api.md
and the CLI's exit statuses (DESIGN §2.7: usage errors are one line, exit 2).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import persist
from persist.ebs import KdfParams

from .conftest import record

BIN = str(Path(sys.executable).parent / "persist")
WEAK: dict[str, Any] = {"allow_weak_kdf": True, "freshness": False}
CONTENTS = {i: f"value {i}" for i in range(50)}


@pytest.fixture
def store(tmp_path: Path) -> str:
    location = str(tmp_path / "s.db")
    with persist.open(location, "pw", kdf=KdfParams.weak_for_tests(), **WEAK) as db:
        db.table("t").update(CONTENTS)
        db.root["config"] = {"a": 1}
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "wrong").write_text("wrong\n")
    return location


def _open(location: str, **kw: Any) -> persist.Database:
    return persist.open(location, "pw", **{**WEAK, **kw})


def _timeout(fn: Callable[[], Any], seconds: float = 30) -> Any:
    """Run ``fn`` in a thread; a hang fails the test, its exception is re-raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:
            out.append(("err", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "deadlock: the call never returned"
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


# Each case: (name, expected exception, action(db, location, tmp_path)).
def _closed(db: persist.Database) -> persist.Database:
    db.close()
    return db


def _in_block(db: persist.Database, fn: Callable[[], Any]) -> None:
    with db.atomic():
        fn()


def _block_in_other_thread(db: persist.Database) -> None:
    """An atomic block entered in one thread and left in another."""
    block = db.atomic()
    block.__enter__()
    err: list[BaseException] = []

    def leave() -> None:
        try:
            block.__exit__(None, None, None)
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=leave)
    t.start()
    t.join(10)
    block.__exit__(None, None, None)  # the owner closes it whatever happened
    if err:
        raise err[0]


def _sync_wait_in_coroutine_with_open_block(db: persist.Database) -> None:
    async def main() -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with db.atomic():
                db.table("t")["in block"] = 1
                entered.set()
                await release.wait()
                del db.table("t")["in block"]

        task = asyncio.create_task(holder())
        await entered.wait()
        try:
            db.commit_wait()  # would block the loop the block needs
        finally:
            release.set()
            await task

    asyncio.run(main())


API_CASES: list[
    tuple[str, type[BaseException] | tuple[type[BaseException], ...], Callable[..., Any]]
] = [
    ("float key", TypeError, lambda db, *_: db.table("t").__setitem__(1.5, "x")),
    ("None key", TypeError, lambda db, *_: db.table("t").__setitem__(None, "x")),
    ("list key", TypeError, lambda db, *_: db.table("t").__setitem__([1], "x")),
    ("bool key", TypeError, lambda db, *_: db.table("t").__setitem__(True, "x")),
    ("key over 1024 bytes", ValueError, lambda db, *_: db.table("t").__setitem__("k" * 2000, 1)),
    ("bytearray value", TypeError, lambda db, *_: db.table("t").__setitem__(1, bytearray(b"x"))),
    ("object value", TypeError, lambda db, *_: db.table("t").__setitem__(1, object())),
    ("function value", TypeError, lambda db, *_: db.table("t").__setitem__(1, len)),
    (
        "naive datetime",
        TypeError,
        lambda db, *_: db.table("t").__setitem__(1, __import__("datetime").datetime(2020, 1, 1)),
    ),
    (
        "self-containing value",
        TypeError,
        lambda db, *_: (lambda v: (v.append(v), db.table("t").__setitem__(1, v)))([]),
    ),
    (
        "too deep value",
        TypeError,
        lambda db, *_: db.table("t").__setitem__(
            1, __import__("functools").reduce(lambda a, _: [a], range(200), [])
        ),
    ),
    ("missing key read", persist.NotFound, lambda db, *_: db.table("t")["missing"]),
    ("missing key delete", persist.NotFound, lambda db, *_: db.table("t").__delitem__("missing")),
    ("empty table name", ValueError, lambda db, *_: db.table("")),
    ("reserved table name", ValueError, lambda db, *_: db.table("__internal")),
    ("table name over 200 bytes", ValueError, lambda db, *_: db.table("x" * 300)),
    ("non-str table name", TypeError, lambda db, *_: db.table(7)),
    (
        "write after close",
        persist.ClosedError,
        lambda db, *_: _closed(db).table("t").__setitem__(1, 1),
    ),
    ("read after close", persist.ClosedError, lambda db, *_: _closed(db).table("t")[1]),
    ("commit_wait after close", persist.ClosedError, lambda db, *_: _closed(db).commit_wait()),
    ("verify after close", persist.ClosedError, lambda db, *_: _closed(db).verify()),
    ("atomic after close", persist.ClosedError, lambda db, *_: _closed(db).atomic().__enter__()),
    ("commit_wait inside atomic", RuntimeError, lambda db, *_: _in_block(db, db.commit_wait)),
    ("close inside atomic", RuntimeError, lambda db, *_: _in_block(db, db.close)),
    (
        "sync commit_wait in a coroutine while a task holds a block",
        RuntimeError,
        lambda db, *_: _sync_wait_in_coroutine_with_open_block(db),
    ),
    ("second writer", persist.StoreLocked, lambda db, loc, _: _open(loc)),
    (
        "wrong passphrase",
        persist.WrongPassphrase,
        lambda db, loc, _: persist.open(loc, "wrong", read_only=True, **WEAK),
    ),
    (
        "passphrase and key both",
        TypeError,
        lambda db, loc, _: persist.open(loc, "pw", key=bytes(32), read_only=True, **WEAK),
    ),
    (
        "neither passphrase nor key",
        TypeError,
        lambda db, loc, _: persist.open(loc, read_only=True, **WEAK),
    ),
    (
        "bytes passphrase",
        TypeError,
        lambda db, loc, _: persist.open(loc, b"pw", read_only=True, **WEAK),
    ),
    (
        "raw key of the wrong size",
        (ValueError, persist.PersistError),
        lambda db, loc, _: persist.open(loc, key=b"short", read_only=True, **WEAK),
    ),
    (
        "key file that is missing",
        (persist.PersistError, OSError, ValueError),
        lambda db, loc, tmp: persist.open(loc, key=str(tmp / "nokey"), read_only=True, **WEAK),
    ),
    (
        "weak KDF without the flag",
        persist.IntegrityError,
        lambda db, loc, _: persist.open(loc, "pw", read_only=True, freshness=False),
    ),
    ("write on a read-only database", persist.ReadOnlyError, lambda db, loc, _: _ro_write(loc)),
    (
        "read-only open of a missing store",
        persist.StoreNotFound,
        lambda db, loc, tmp: _open(str(tmp / "missing.db"), read_only=True),
    ),
    (
        "create=False on a missing store",
        persist.StoreNotFound,
        lambda db, loc, tmp: _open(str(tmp / "missing.db"), create=False),
    ),
    ("a directory as location", persist.NotAStore, lambda db, loc, tmp: _open(str(tmp))),
    ("a junk file as location", persist.NotAStore, lambda db, loc, tmp: _open(_junk(tmp))),
    ("an unknown scheme", ValueError, lambda db, loc, _: _open("ftp://host/x")),
    ("a relative leveldb URI", ValueError, lambda db, loc, _: _open("leveldb://relative/dir")),
    (
        "post-commit hook that commit-waits",
        RuntimeError,
        lambda db, *_: _hook_reentry(db),
    ),
]


def _ro_write(location: str) -> None:
    with _open(location, read_only=True) as ro:
        ro.table("t")[1] = "changed"


def _junk(tmp: Path) -> str:
    (tmp / "junk.db").write_bytes(b"not a database" * 100)
    return str(tmp / "junk.db")


def _hook_reentry(db: persist.Database) -> None:
    """A post-commit hook that calls commit_wait: an error or a return, never a hang."""
    errors: list[BaseException] = []

    def hook(_: int) -> None:
        try:
            db.commit_wait()
        except BaseException as exc:
            errors.append(exc)

    assert db._mux is not None
    db._mux.add_post_commit_hook(hook)
    db.table("t")["hooked"] = 1
    _timeout(db.commit_wait)
    del db.table("t")["hooked"]
    _timeout(db.commit_wait)
    db._mux._post_hooks.remove(hook)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("name, expected, action", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_misuse(store: str, tmp_path: Path, name: str, expected: Any, action: Any) -> None:
    db = _open(store)
    try:
        if isinstance(expected, tuple) and type(None) in expected:
            _timeout(lambda: action(db, store, tmp_path))
        else:
            with pytest.raises(expected):
                _timeout(lambda: action(db, store, tmp_path))
    finally:
        if not db._closed:
            db.close()
    with _open(store, read_only=True) as again:
        assert dict(again.table("t").items()) == CONTENTS, f"{name}: the contents changed"
        assert again.root["config"] == {"a": 1}
        assert again.verify() == []
    record("misuse.api_cases", len(API_CASES))


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120, input=stdin)


CLI_CASES = [
    ("no command", lambda loc, tmp: []),
    ("unknown command", lambda loc, tmp: ["frobnicate", loc]),
    (
        "verify wrong passphrase",
        lambda loc, tmp: [
            "verify",
            loc,
            "--passphrase-file",
            str(tmp / "wrong"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "verify missing store",
        lambda loc, tmp: [
            "verify",
            str(tmp / "nope.db"),
            "--passphrase-file",
            str(tmp / "pw"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "verify missing passphrase file",
        lambda loc, tmp: [
            "verify",
            loc,
            "--passphrase-file",
            str(tmp / "nofile"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "verify without the weak flag",
        lambda loc, tmp: ["verify", loc, "--passphrase-file", str(tmp / "pw"), "--no-freshness"],
    ),
    (
        "dump of a missing table",
        lambda loc, tmp: [
            "dump",
            loc,
            "no_such_table",
            "--passphrase-file",
            str(tmp / "pw"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "dump of a reserved table",
        lambda loc, tmp: [
            "dump",
            loc,
            "__catalog",
            "--passphrase-file",
            str(tmp / "pw"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "init over an existing store",
        lambda loc, tmp: [
            "init",
            loc,
            "--passphrase-file",
            str(tmp / "pw"),
            "--weak-kdf-for-tests",
            "--no-freshness",
        ],
    ),
    (
        "bad location scheme",
        lambda loc, tmp: ["verify", "ftp://x/y", "--passphrase-file", str(tmp / "pw")],
    ),
    (
        "passwd with a wrong passphrase",
        lambda loc, tmp: [
            "passwd",
            loc,
            "--passphrase-file",
            str(tmp / "wrong"),
            "--new-passphrase-file",
            str(tmp / "pw"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "rekey --abort without a rotation",
        lambda loc, tmp: [
            "rekey",
            loc,
            "--abort",
            "--passphrase-file",
            str(tmp / "pw"),
            "--allow-weak-kdf",
            "--no-freshness",
        ],
    ),
    (
        "prompt at end of input (no terminal)",
        lambda loc, tmp: ["verify", loc, "--allow-weak-kdf", "--no-freshness"],
    ),
]


@pytest.mark.parametrize("name, argv", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_misuse(store: str, tmp_path: Path, name: str, argv: Any) -> None:
    out = _cli(*argv(store, tmp_path), stdin="")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    if argv(store, tmp_path):  # a usage error is one line
        assert out.stderr.strip().count("\n") == 0, out.stderr
    with _open(store, read_only=True) as again:
        assert dict(again.table("t").items()) == CONTENTS, f"{name}: the contents changed"
        assert again.verify() == []
    record("misuse.cli_cases", len(CLI_CASES))


def test_interrupted_prompt(store: str, tmp_path: Path) -> None:
    """Ctrl-C at the passphrase prompt: exit 2 ("Aborted."), the store untouched."""
    import os
    import pty
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(BIN, [BIN, "verify", store, "--allow-weak-kdf", "--no-freshness"])
    output = b""
    deadline = time.monotonic() + 60
    while b"assphrase" not in output and time.monotonic() < deadline:
        try:
            output += os.read(fd, 1024)
        except OSError:
            break
    assert b"assphrase" in output, output
    os.kill(pid, signal.SIGINT)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2, status
    with _open(store, read_only=True) as again:
        assert dict(again.table("t").items()) == CONTENTS and again.verify() == []


def test_an_atomic_block_left_in_another_thread(store: str, tmp_path: Path) -> None:
    db = _open(store)
    try:
        with pytest.raises(RuntimeError):
            _timeout(lambda: _block_in_other_thread(db))
    finally:
        db.close()
    with _open(store, read_only=True) as again:
        assert dict(again.table("t").items()) == CONTENTS and again.verify() == []
