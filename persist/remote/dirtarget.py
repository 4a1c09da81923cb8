"""Targets in a plain directory, ``dir:///abs/path``: any synced folder or mount.

Layout (docs/remote.md "Dir targets")::

    ROOT/persist-target               marker: b"persist dir target 1\\n"
    ROOT/tmp/                         temporary files, staged and deleted containers
    ROOT/default/                     the default container
    ROOT/containers/NAME/             named containers
    CONTAINER/rows/AA/BB/<hex key>    one file per row, named by its key in hex;
                                      AA, BB: hex of the key's first and second
                                      byte ("-" for a 1-byte key)
    CONTAINER/state/<serial>          the state log (dirstate.py): the lease
                                      record and the conditional rows

Two levels of 256 directories give 65,536 leaves: with storage keys (which look
random) a leaf holds about 150 files at ten million rows and 1,500 at a
hundred million.  Keeping the key's own bytes as the fan-out (rather than a
hash of them) keeps directory order equal to key order, so a scan walks the
tree in order without sorting more than one directory at a time.

**Writing a row:** write it to a new file in ``ROOT/tmp`` and fsync it; rename
it to its place; fsync each directory that received a file (and the parent of
each directory created on the way).  A reader sees the old file or the new one.

**Transitions** of the state log: read the newest state ``s``; compute the next;
write it to a temporary file, fsync it, ``link()`` it as ``state/<s+1>``
(create-if-absent: exactly one contender wins; ``EEXIST`` means someone else
moved first, so start over from the new state), fsync ``state/``.  Old states
are removed, keeping the newest ``KEEP_STATES`` (containerdir.py); since a
removed serial could in principle be linked again by a process that read it
long ago and then stalled, a successful link is confirmed: it counts only if it
is the newest state or its successor names it as predecessor (by digest).  When
neither can be told (the process stalled across more than ``KEEP_STATES``
transitions), the outcome is reported unknown (StoreIOError), never guessed.

Everything is opened through directory descriptors without following links
(_fs.py); each operation works on its own duplicate of the root's descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping

from ..errors import (
    ContainerExists,
    IntegrityError,
    LeaseHeld,
    NotAStore,
    StoreIOError,
    StoreNotFound,
)
from . import _fs
from .containerdir import ContainerDir
from .dirstate import DirState
from .leaserecord import lease_is_held
from .target import (
    Container,
    CopySink,
    Rows,
    Target,
    check_container_name,
)

__all__ = ["LAYOUT_MARKER", "DirContainer", "DirTarget"]

LAYOUT_MARKER = b"persist dir target 1\n"
_MARKER_FILE = "persist-target"
_LAYOUT_ENTRIES = {"tmp", "containers", "default"}


def _unique(kind: str) -> str:
    return f"{kind}-{os.getpid()}-{secrets.token_hex(8)}"


class DirTarget(Target):
    """A target in the directory ``path`` (module docstring)."""

    def __init__(self, path: str, *, create: bool, read_only: bool, lock_timeout: float) -> None:
        if not os.path.isabs(path):
            raise ValueError("dir targets take an absolute path: dir:///abs/path")
        path = os.path.normpath(path)
        super().__init__("dir://" + path, read_only=read_only)
        self.lock_timeout = lock_timeout
        self._rng = random.Random()
        self._root_lock = threading.Lock()
        self._root = self._open_root(path, create=create and not read_only)

    # -- the root -------------------------------------------------------------------

    def _open_root(self, path: str, *, create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        with _fs.translated(self.location):
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if not create:
                    raise StoreNotFound(f"no dir target at {self.location}") from None
                try:
                    os.mkdir(path)
                except FileNotFoundError:
                    raise StoreNotFound(
                        f"cannot create {self.location}: no such directory"
                    ) from None
                except FileExistsError:
                    pass
                _fsync_path(os.path.dirname(path))
                fd = os.open(path, flags)
            except NotADirectoryError:
                raise NotAStore(f"{self.location} is a file, not a directory") from None
        try:
            marker = _fs.read_file(_MARKER_FILE, fd, 4096, f"{self.location}/{_MARKER_FILE}")
            if marker is None:
                self._initialize(fd, create)
            elif marker != LAYOUT_MARKER:
                raise NotAStore(f"{self.location} holds an unknown dir target marker")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _initialize(self, fd: int, create: bool) -> None:
        entries = set(os.listdir(fd))
        if entries - _LAYOUT_ENTRIES:
            raise NotAStore(f"{self.location} is a directory, but not a dir target")
        if not create:
            raise StoreNotFound(f"no dir target at {self.location}")
        # A crash before the marker leaves only these entries: start again.
        for name in ("tmp", "containers", "default"):
            _fs.make_dir(name, fd, self.location)
        with self._dir("default", fd) as default:
            _make_container_dirs(default, self.location)
        _fs.fsync(fd, self.location)
        with self._dir("tmp", fd) as tmp, _fs.translated(self.location):
            name = _fs.write_temp(tmp, LAYOUT_MARKER, self.location)
            os.rename(name, _MARKER_FILE, src_dir_fd=tmp, dst_dir_fd=fd)
            os.fsync(fd)

    @contextlib.contextmanager
    def root(self) -> Iterator[int]:
        """A private duplicate of the root's descriptor, for one operation."""
        with self._root_lock:
            self._check_open()
            fd = os.dup(self._root)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _dir(self, name: str, parent: int) -> Iterator[int]:
        """A directory of the layout, which must be there."""
        fd = _fs.open_dir(name, parent, f"{self.location}: {name}")
        if fd is None:
            raise IntegrityError(f"{self.location} lacks its {name!r} directory")
        try:
            yield fd
        finally:
            os.close(fd)

    def _parent_of(self, root: int, name: str) -> tuple[int, str]:
        """(a new fd of the directory holding container ``name``, its entry there)."""
        if not name:
            return os.dup(root), "default"
        fd = _fs.open_dir("containers", root, self.location)
        if fd is None:
            raise IntegrityError(f"{self.location} lacks its 'containers' directory")
        return fd, name

    def open_container_dir(self, root: int, name: str) -> int | None:
        parent, entry = self._parent_of(root, name)
        try:
            return _fs.open_dir(entry, parent, f"{self.location}#{name}")
        finally:
            os.close(parent)

    # -- containers -----------------------------------------------------------------

    def _container(self, name: str) -> DirContainer:
        return DirContainer(self, name)

    def _list(self) -> list[str]:
        with (
            self.root() as root,
            self._dir("containers", root) as fd,
            _fs.translated(self.location),
        ):
            names = os.listdir(fd)
            for name in names:
                try:
                    check_container_name(name)
                except ValueError:
                    raise IntegrityError(
                        f"{self.location} holds an entry {name!r} that is no container"
                    ) from None
                if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise IntegrityError(f"{self.location}: container {name!r} is no directory")
        return names

    def _create(self, name: str) -> None:
        with self.root() as root:
            fd = self.open_container_dir(root, name)
            if fd is None:
                self._install(root, self._stage(root), name, replace_empty=False)
                return
            with ContainerDir(self, fd, self._container(name).location) as existing:
                if existing.holds_rows():
                    raise ContainerExists(f"container {existing.what} holds rows")

    def _delete(self, name: str, force: bool) -> None:
        location = self._container(name).location
        with self.root() as root:
            fd = self.open_container_dir(root, name)
            if fd is None:
                if name:
                    raise self._container(name)._missing()
                self._install(root, self._stage(root), name, replace_empty=False)
                return
            with ContainerDir(self, fd, location) as existing:
                stored = existing.state().lease
            if not force and lease_is_held(stored):
                raise LeaseHeld(f"the lease of {location} is held", stored)
            trash = self._move_to_trash(root, name)
            if not name:
                self._install(root, self._stage(root), name, replace_empty=False)
            self._remove_trash(root, trash)

    def _sink(self, name: str) -> CopySink:
        with self.root() as root:
            fd = self.open_container_dir(root, name)
            if fd is not None:
                with ContainerDir(self, fd, self._container(name).location) as existing:
                    existing.check_replaceable()
            return _DirSink(self, self._stage(root), name)

    def _close(self) -> None:
        with self._root_lock:
            os.close(self._root)

    # -- staging, installing, trashing ----------------------------------------------

    def _stage(self, root: int) -> str:
        """A new, empty container directory in ``tmp``; returns its name."""
        name = _unique("new")
        with self._dir("tmp", root) as tmp:
            _fs.make_dir(name, tmp, self.location)
            with self._dir(name, tmp) as fd:
                _make_container_dirs(fd, self.location)
            _fs.fsync(tmp, self.location)
        return name

    def install(self, root: int, staged: str, name: str) -> None:
        """Put the staged container ``staged`` in place as ``name`` (for a copy)."""
        self._install(root, staged, name, replace_empty=True)

    def _install(self, root: int, staged: str, name: str, *, replace_empty: bool) -> None:
        """Rename ``tmp/staged`` to container ``name``.  If ``name`` exists: with
        ``replace_empty`` it is replaced when it holds no rows and no held lease
        (else ContainerExists / LeaseHeld); without, the existing container
        stays (ContainerExists if it holds rows)."""
        parent, entry = self._parent_of(root, name)
        try:
            with self._dir("tmp", root) as tmp:
                try:
                    if self._rename_into_place(staged, entry, tmp, parent):
                        return
                    trash = None
                    fd = _fs.open_dir(entry, parent, self.location)
                    if fd is not None:
                        with ContainerDir(self, fd, self._container(name).location) as old:
                            if not replace_empty:
                                if old.holds_rows():
                                    raise ContainerExists(f"container {old.what} holds rows")
                                _rmtree(staged, tmp)
                                return
                            old.check_replaceable()
                        trash = self._move_to_trash(root, name)
                    if not self._rename_into_place(staged, entry, tmp, parent):
                        raise ContainerExists(
                            f"container {self._container(name).location} was created meanwhile"
                        )
                except BaseException:
                    _rmtree(staged, tmp)
                    raise
        finally:
            os.close(parent)
        if trash is not None:
            self._remove_trash(root, trash)

    def _rename_into_place(self, staged: str, entry: str, tmp: int, parent: int) -> bool:
        """Rename ``staged`` to ``entry`` unless a non-empty ``entry`` exists."""
        with _fs.translated(self.location):
            try:
                os.rename(staged, entry, src_dir_fd=tmp, dst_dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
            os.fsync(parent)
            os.fsync(tmp)
        return True

    def _move_to_trash(self, root: int, name: str) -> str:
        trash = _unique("deleted")
        parent, entry = self._parent_of(root, name)
        try:
            with self._dir("tmp", root) as tmp, _fs.translated(self.location):
                os.rename(entry, trash, src_dir_fd=parent, dst_dir_fd=tmp)
                os.fsync(parent)
                os.fsync(tmp)
        finally:
            os.close(parent)
        return trash

    def _remove_trash(self, root: int, trash: str) -> None:
        with self._dir("tmp", root) as tmp:
            try:
                shutil.rmtree(trash, dir_fd=tmp)
            except OSError as exc:
                raise StoreIOError(
                    f"the container was removed from {self.location}, but its files in "
                    f"tmp/{trash} could not all be deleted: {exc.strerror}"
                ) from exc


class DirContainer(Container):
    """A container of a :class:`DirTarget`."""

    target: DirTarget

    @contextlib.contextmanager
    def _open(self, *, write: bool) -> Iterator[ContainerDir | None]:
        """The container's directories for one operation; None (reads) when missing."""
        with self.target.root() as root:
            fd = self.target.open_container_dir(root, self.name)
            if fd is None:
                if not write:
                    yield None
                    return
                if self.name:
                    raise self._missing()
                # The default container always exists: put back a lost one.
                self.target._install(root, self.target._stage(root), "", replace_empty=False)
                fd = self.target.open_container_dir(root, "")
                if fd is None:
                    raise StoreIOError(f"{self.location} vanished while it was recreated")
            with ContainerDir(self.target, fd, self.location) as cdir:
                yield cdir

    def _get(self, key: bytes) -> bytes | None:
        with self._open(write=False) as cdir:
            if cdir is None:
                return None
            rows = cdir.state().rows
            if key in rows:
                return rows[key]
            return cdir.read_row(key)

    def _scan(self, start: bytes, stop: bytes | None) -> Rows:
        with self._open(write=False) as cdir:
            if cdir is not None:
                yield from cdir.scan(start, stop)

    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        with self._open(write=True) as cdir:
            assert cdir is not None
            conditional = {k for k in (*puts, *deletes) if k in cdir.state().rows}
            cdir.put_rows([(k, v) for k, v in puts.items() if k not in conditional])
            cdir.delete_rows([k for k in deletes if k not in conditional])
            if conditional:
                # Conditional rows stay in the state log (target contract rule 4).
                def change(st: DirState) -> tuple[bytes | None, dict[bytes, bytes | None]]:
                    rows = dict(st.rows)
                    rows.update((k, puts.get(k)) for k in conditional)
                    return st.lease, rows

                cdir.transition(change)

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        with self._open(write=True) as cdir:
            assert cdir is not None
            moved: list[bytes] = []

            def change(st: DirState) -> tuple[bytes | None, dict[bytes, bytes | None]] | None:
                moved.clear()
                if key in st.rows:
                    current = st.rows[key]
                else:
                    current = cdir.read_row(key)
                    if current is not None:
                        moved.append(key)
                if current != expected:
                    return None
                return st.lease, {**st.rows, key: new}

            if cdir.transition(change) is None:
                return False
            cdir.delete_rows(moved)  # now shadowed by the state log
            return True

    def _read_lease(self) -> bytes | None:
        with self._open(write=False) as cdir:
            return None if cdir is None else cdir.state().lease

    def _swap_lease(self, expected: bytes | None, new: bytes | None) -> bool:
        with self._open(write=True) as cdir:
            assert cdir is not None

            def change(st: DirState) -> tuple[bytes | None, Mapping[bytes, bytes | None]] | None:
                return None if st.lease != expected else (new, st.rows)

            return cdir.transition(change) is not None

    def _write_if_lease(
        self, expected: bytes, puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> bool:
        return self._transition_rows(puts, deletes, lambda lease: lease == expected)

    def _write_atomic(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        self._transition_rows(puts, deletes, lambda lease: True)

    def _transition_rows(
        self,
        puts: dict[bytes, bytes],
        deletes: list[bytes],
        allowed: Callable[[bytes | None], bool],
    ) -> bool:
        """One state-log transition writing ``puts`` and ``deletes`` as conditional
        rows, if ``allowed(lease)``; then the row files those rows now stand for are
        deleted.  False: refused, nothing written.

        A deleted row that was a plain file leaves a tombstone in the state
        log, which hides the file from the moment of the transition (a holder
        stalled before it unlinks the files cannot remove a row that a later
        holder writes again: that write goes into the log, over the tombstone).
        Once the files are gone, a second transition drops the tombstones that
        are still tombstones, so a push's fenced garbage deletes do not grow
        the state log.  Killed in between, a tombstone and perhaps its file
        stay: the row reads as absent, as it should."""
        with self._open(write=True) as cdir:
            assert cdir is not None
            moved: list[bytes] = []

            def change(st: DirState) -> tuple[bytes | None, dict[bytes, bytes | None]] | None:
                if not allowed(st.lease):
                    return None
                moved.clear()
                rows: dict[bytes, bytes | None] = dict(st.rows)
                for key in (*puts, *deletes):
                    if key not in st.rows and cdir.row_exists(key):
                        moved.append(key)
                rows.update(puts)
                rows.update((k, None) for k in deletes if k in st.rows or k in moved)
                return st.lease, rows

            if cdir.transition(change) is None:
                return False
            cdir.delete_rows(moved)
            buried = [k for k in moved if k not in puts]
            if buried:

                def prune(st: DirState) -> tuple[bytes | None, dict[bytes, bytes | None]] | None:
                    dead = [k for k in buried if k in st.rows and st.rows[k] is None]
                    if not dead:
                        return None
                    rows = dict(st.rows)
                    for key in dead:
                        del rows[key]
                    return st.lease, rows

                cdir.transition(prune)
            return True

    def _exists(self) -> bool:
        if not self.name:
            self.target._check_open()
            return True
        with self.target.root() as root:
            fd = self.target.open_container_dir(root, self.name)
        if fd is None:
            return False
        os.close(fd)
        return True


class _DirSink(CopySink):
    """Fills a staged container in ``tmp``; commit renames it into place."""

    def __init__(self, target: DirTarget, staged: str, name: str) -> None:
        self._target = target
        self._staged = staged
        self._name = name
        with target.root() as root, target._dir("tmp", root) as tmp:
            staged_fd = _dir_fd(target, staged, tmp)
        self._dir = ContainerDir(target, staged_fd, f"{target.location} (staged copy {staged})")

    def put(self, rows: list[tuple[bytes, bytes]]) -> None:
        self._dir.put_rows(rows)

    def commit(self) -> None:
        self._dir.close()
        with self._target.root() as root:
            self._target.install(root, self._staged, self._name)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._dir.close()
        with contextlib.suppress(Exception), self._target.root() as root:
            fd = _fs.open_dir("tmp", root, self._target.location)
            if fd is not None:
                try:
                    _rmtree(self._staged, fd)
                finally:
                    os.close(fd)


def _dir_fd(target: DirTarget, name: str, parent: int) -> int:
    fd = _fs.open_dir(name, parent, target.location)
    if fd is None:
        raise IntegrityError(f"{target.location}: {name!r} vanished")
    return fd


def _make_container_dirs(fd: int, what: str) -> None:
    for sub in ("rows", "state"):
        _fs.make_dir(sub, fd, what)
    _fs.fsync(fd, what)


def _rmtree(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(name, dir_fd=dir_fd)


def _fsync_path(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
