"""The directories of one dir container, open for one operation: row files and state log.

Row files (dirtarget.py "Writing a row") and the state log's transitions
(dirtarget.py "Transitions"; the byte format is dirstate.py) are here; the
layout of the target around them is dirtarget.py's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

from ..errors import ContainerExists, IntegrityError, LeaseHeld, StoreIOError, StoreLocked
from . import _fs
from .dirstate import EMPTY, MAX_STATE_SIZE, DirState, parse_state_name, state_file_name
from .leaserecord import lease_is_held
from .target import MAX_ROW_SIZE, Rows

if TYPE_CHECKING:
    from .dirtarget import DirTarget

__all__ = ["KEEP_STATES", "Change", "ContainerDir"]

#: State files kept behind the newest.
KEEP_STATES = 32
_LEVEL1 = re.compile(r"[0-9a-f]{2}")
_LEVEL2 = re.compile(r"[0-9a-f]{2}|-")
_ROW_FILE = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_MISSING_STATE_RETRIES = 20
#: Threads that write and fsync row files at once (measured: 4 give about five
#: times one thread's rows per second on ext4; more give no more).
_WORKERS = 4
T = TypeVar("T")

#: A change of the state log: the next (lease, rows), or None to leave it.
Change = Callable[[DirState], "tuple[bytes | None, Mapping[bytes, bytes | None]] | None"]


class ContainerDir:
    """The open directories of one container, for the duration of one operation."""

    def __init__(self, target: DirTarget, fd: int, what: str) -> None:
        self.target = target
        self.fd = fd
        self.what = what
        self._fds: dict[str, int] = {}
        self._leaves: dict[tuple[str, str], int] = {}
        self._level1: dict[str, int] = {}
        #: Directories whose new entries are not yet fsynced.
        self.unsynced: set[int] = set()

    def __enter__(self) -> ContainerDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in (*self._leaves.values(), *self._level1.values(), *self._fds.values()):
            os.close(fd)
        self._leaves.clear()
        self._level1.clear()
        self._fds.clear()
        os.close(self.fd)

    def _sub(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            if name == "tmp":
                with self.target.root() as root:
                    found = _fs.open_dir("tmp", root, self.target.location)
            else:
                found = _fs.open_dir(name, self.fd, self.what)
            if found is None:
                raise IntegrityError(f"{self.what} lacks its {name!r} directory")
            fd = self._fds[name] = found
        return fd

    # -- row files -------------------------------------------------------------------

    def _leaf(self, key: bytes, *, create: bool) -> int | None:
        """The directory of ``key``'s file (created when ``create``; the parent
        of a directory created is added to ``self.unsynced``)."""
        names = (key[:1].hex(), key[1:2].hex() or "-")
        fd = self._leaves.get(names)
        if fd is not None:
            return fd
        level1 = self._level1.get(names[0])
        if level1 is None:
            rows = self._sub("rows")
            if create and _fs.make_dir(names[0], rows, self.what):
                self.unsynced.add(rows)
            level1 = _fs.open_dir(names[0], rows, self.what)
            if level1 is None:
                self._vanished(create)
                return None
            self._level1[names[0]] = level1
        if create and _fs.make_dir(names[1], level1, self.what):
            self.unsynced.add(level1)
        fd = _fs.open_dir(names[1], level1, self.what)
        if fd is None:
            self._vanished(create)
            return None
        self._leaves[names] = fd
        return fd

    def _vanished(self, create: bool) -> None:
        if create:
            raise StoreIOError(f"a directory of {self.what} vanished while rows were written")

    def read_row(self, key: bytes) -> bytes | None:
        leaf = self._leaf(key, create=False)
        if leaf is None:
            return None
        return _fs.read_file(key.hex(), leaf, MAX_ROW_SIZE, f"{self.what}: row {key.hex()}")

    def row_exists(self, key: bytes) -> bool:
        leaf = self._leaf(key, create=False)
        if leaf is None:
            return False
        with _fs.translated(self.what):
            try:
                os.stat(key.hex(), dir_fd=leaf, follow_symlinks=False)
            except FileNotFoundError:
                return False
        return True

    def put_rows(self, rows: list[tuple[bytes, bytes]]) -> None:
        """Write row files: all to temporary files (fsynced), then renamed into
        place, then each receiving directory fsynced.  The fsyncs run in a few
        threads, so that the disk can serve them together."""
        if not rows:
            return
        tmp = self._sub("tmp")
        staged: dict[bytes, str] = {}

        def stage(row: tuple[bytes, bytes]) -> None:
            staged[row[0]] = _fs.write_temp(tmp, row[1], self.what)

        try:
            _each(stage, rows)
            with _fs.translated(self.what):
                for key in list(staged):
                    leaf = self._leaf(key, create=True)
                    assert leaf is not None
                    os.rename(staged[key], key.hex(), src_dir_fd=tmp, dst_dir_fd=leaf)
                    del staged[key]
                    self.unsynced.add(leaf)
            self.sync()
        finally:
            for name in staged.values():
                _fs.unlink(name, tmp)

    def delete_rows(self, keys: Iterable[bytes]) -> None:
        with _fs.translated(self.what):
            for key in keys:
                leaf = self._leaf(key, create=False)
                if leaf is not None and _fs.unlink(key.hex(), leaf):
                    self.unsynced.add(leaf)
        self.sync()

    def sync(self) -> None:
        """fsync every directory with new or removed entries (in a few threads)."""
        dirs, self.unsynced = list(self.unsynced), set()
        _each(lambda fd: _fs.fsync(fd, self.what), dirs)

    def files(self, start: bytes, stop: bytes | None) -> Rows:
        """The row files with ``start <= key < stop``, in key order."""
        rows = self._sub("rows")
        for n1 in _listdir(rows, self.what):
            if not _LEVEL1.fullmatch(n1):
                raise IntegrityError(f"{self.what}: unexpected entry rows/{n1}")
            p1 = bytes.fromhex(n1)
            if _outside(p1, start, stop):
                continue
            level1 = _fs.open_dir(n1, rows, self.what)
            if level1 is None:
                continue
            try:
                for n2 in _listdir(level1, self.what):
                    if not _LEVEL2.fullmatch(n2):
                        raise IntegrityError(f"{self.what}: unexpected entry rows/{n1}/{n2}")
                    p2 = p1 if n2 == "-" else p1 + bytes.fromhex(n2)
                    if n2 != "-" and _outside(p2, start, stop):
                        continue
                    yield from self._leaf_files(level1, n1, n2, p2, start, stop)
            finally:
                os.close(level1)

    def _leaf_files(
        self, level1: int, n1: str, n2: str, prefix: bytes, start: bytes, stop: bytes | None
    ) -> Rows:
        leaf = _fs.open_dir(n2, level1, self.what)
        if leaf is None:
            return
        try:
            for name in _listdir(leaf, self.what):
                key = bytes.fromhex(name) if _ROW_FILE.fullmatch(name) else b""
                placed = len(key) == 1 if n2 == "-" else len(key) >= 2
                if not placed or key[: len(prefix)] != prefix:
                    raise IntegrityError(f"{self.what}: unexpected file rows/{n1}/{n2}/{name}")
                if key < start or (stop is not None and key >= stop):
                    continue
                value = _fs.read_file(name, leaf, MAX_ROW_SIZE, f"{self.what}: row {name}")
                if value is not None:  # deleted meanwhile (target contract rule 3)
                    yield key, value
        finally:
            os.close(leaf)

    def scan(self, start: bytes, stop: bytes | None) -> Rows:
        """The container's rows: files merged with the state log's conditional rows."""
        state = self.state()
        conditional = sorted(
            (k, v)
            for k, v in state.rows.items()
            if v is not None and k >= start and (stop is None or k < stop)
        )
        pending = iter(conditional)
        nxt = next(pending, None)
        with contextlib.closing(self.files(start, stop)) as files:
            for key, value in files:
                if key in state.rows:
                    continue  # shadowed by the state log
                while nxt is not None and nxt[0] < key:
                    yield nxt
                    nxt = next(pending, None)
                yield key, value
        while nxt is not None:
            yield nxt
            nxt = next(pending, None)

    def holds_rows(self) -> bool:
        if any(v is not None for v in self.state().rows.values()):
            return True
        with contextlib.closing(self.files(b"", None)) as files:
            return next(files, None) is not None

    def check_replaceable(self) -> None:
        """Raise unless a copy may replace this container (no rows, no held lease)."""
        if self.holds_rows():
            raise ContainerExists(f"container {self.what} holds rows")
        stored = self.state().lease
        if lease_is_held(stored):
            raise LeaseHeld(f"the lease of {self.what} is held", stored)

    # -- the state log --------------------------------------------------------------

    def state(self) -> DirState:
        """The newest state (EMPTY when the log is empty)."""
        log = self._sub("state")
        for _ in range(_MISSING_STATE_RETRIES):
            serials = [parse_state_name(n) for n in _listdir(log, self.what)]
            if not serials:
                return EMPTY
            top = max(serials)
            data = _fs.read_file(state_file_name(top), log, MAX_STATE_SIZE, self._state_what(top))
            if data is not None:
                return DirState.parse(data, top)
        raise StoreIOError(f"the state log of {self.what} changes too fast to be read")

    def _state_what(self, serial: int) -> str:
        return f"{self.what}: state {serial}"

    def transition(self, change: Change) -> DirState | None:
        """Apply ``change`` to the newest state atomically (module docstring).

        Returns the new state, or None when ``change`` declined."""
        deadline = time.monotonic() + self.target.lock_timeout
        pause = 0.0005
        while True:
            current = self.state()
            proposal = change(current)
            if proposal is None:
                return None
            data, new = current.successor(*proposal)
            if self._link(data, new):
                return new
            if time.monotonic() > deadline:
                raise StoreLocked(f"the state log of {self.what} is too busy")
            time.sleep(pause * self.target._rng.uniform(0.5, 1.5))
            pause = min(pause * 2, 0.02)

    def _link(self, data: bytes, new: DirState) -> bool:
        log, tmp = self._sub("state"), self._sub("tmp")
        name = _fs.write_temp(tmp, data, self.what)
        try:
            with _fs.translated(self.what):
                try:
                    os.link(name, state_file_name(new.serial), src_dir_fd=tmp, dst_dir_fd=log)
                    linked = True
                except OSError:
                    # On NFS a retransmitted link may report EEXIST (or fail)
                    # although it happened: the link count tells (open(2), NFS).
                    linked = os.stat(name, dir_fd=tmp, follow_symlinks=False).st_nlink == 2
        finally:
            _fs.unlink(name, tmp)
        if not linked:
            return False
        _fs.fsync(log, self.what)
        return self._confirm(new)

    def _confirm(self, new: DirState) -> bool:
        log = self._sub("state")
        serials = sorted(parse_state_name(n) for n in _listdir(log, self.what))
        top = serials[-1]
        if top == new.serial:
            confirmed = True
        else:
            after = new.serial + 1
            data = None
            if after in serials:
                data = _fs.read_file(state_file_name(after), log, MAX_STATE_SIZE, self.what)
            if data is None:
                raise StoreIOError(
                    f"the outcome of a conditional write on {self.what} is unknown: this "
                    f"process stalled for more than {KEEP_STATES} changes of its state log"
                )
            confirmed = DirState.parse(data, after).pred == new.digest
        for serial in serials:
            if serial <= top - KEEP_STATES:
                _fs.unlink(state_file_name(serial), log)
        return confirmed


def _listdir(fd: int, what: str) -> list[str]:
    with _fs.translated(what):
        return sorted(os.listdir(fd))


def _outside(prefix: bytes, start: bytes, stop: bytes | None) -> bool:
    """Whether no key that starts with ``prefix`` lies in ``[start, stop)``."""
    return prefix < start[: len(prefix)] or (stop is not None and prefix >= stop)


def _each(func: Callable[[T], None], items: list[T]) -> None:
    """``func`` over ``items`` in up to :data:`_WORKERS` threads; when calls
    fail, the first error is raised after every call has finished."""
    if len(items) < 2 * _WORKERS:
        for item in items:
            func(item)
        return
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        futures = [pool.submit(func, item) for item in items]
    for future in futures:
        future.result()
