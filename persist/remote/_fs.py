"""File-system primitives of dir targets, for a directory its host may have rigged.

Every path is opened relative to a directory file descriptor, one component at
a time, with ``O_NOFOLLOW``: a symbolic link the host planted (say, a row file
pointing at ``~/.ssh/id_ed25519``) is refused, never followed, so a copy of a
replica can never read the local machine's files.  Files are opened with
``O_NONBLOCK`` (a FIFO cannot stall a read) and must be regular files of a
bounded size.  Errors of the medium become :mod:`persist.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator

from ..errors import IntegrityError, StoreFull, StoreIOError

__all__ = [
    "fsync",
    "make_dir",
    "open_dir",
    "read_file",
    "translated",
    "unlink",
    "write_temp",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: errno values that mean "something other than what we expect is there".
_NOT_OURS = {errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EMLINK}


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn an OSError about ``what`` into the persist error tree."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"{what}: no space left; the write did not complete") from exc
        if exc.errno in _NOT_OURS:
            raise IntegrityError(f"{what} is not what a dir target holds there") from exc
        raise StoreIOError(f"I/O error on {what}: {exc.strerror}") from exc


def open_dir(name: str, dir_fd: int, what: str) -> int | None:
    """The fd of directory ``name`` in ``dir_fd``, or None when it is missing."""
    with translated(what):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None


def read_file(name: str, dir_fd: int, limit: int, what: str) -> bytes | None:
    """The bytes of regular file ``name`` (at most ``limit``), or None when missing."""
    with translated(what):
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IntegrityError(f"{what} is not a regular file")
            if info.st_size > limit:
                raise IntegrityError(f"{what} is larger than {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:  # it grew while we read it
                    raise IntegrityError(f"{what} is larger than {limit} bytes")
                chunks.append(chunk)
        finally:
            os.close(fd)


def write_temp(dir_fd: int, data: bytes, what: str) -> str:
    """Write ``data`` to a new file in ``dir_fd``, fsync it, and return its name."""
    name = f"{os.getpid()}-{secrets.token_hex(8)}.tmp"
    with translated(what):
        fd = os.open(name, _CREATE_FLAGS, 0o666, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink(name, dir_fd)
            raise
        os.close(fd)
    return name


def make_dir(name: str, dir_fd: int, what: str) -> bool:
    """Create directory ``name`` in ``dir_fd``; return whether it was created
    (the caller then fsyncs ``dir_fd`` to make the new entry durable)."""
    with translated(what):
        try:
            os.mkdir(name, 0o777, dir_fd=dir_fd)
        except FileExistsError:
            return False
    return True


def unlink(name: str, dir_fd: int) -> bool:
    """Remove file ``name`` if it is there; return whether it was."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def fsync(fd: int, what: str) -> None:
    with translated(what):
        os.fsync(fd)
