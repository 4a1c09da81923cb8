"""Throw-away PostgreSQL servers for tests: real ``initdb`` and ``pg_ctl``, no mock.

:func:`start_server` creates a fresh directory under ``/tmp``, runs ``initdb``
and ``pg_ctl start`` in it and returns a :class:`PostgresServer` that listens
on a Unix socket in that directory only (``listen_addresses=''``), so that
many servers can run at once without a port conflict.  ``fsync`` stays on:
durability is part of what the tests check.  :meth:`PostgresServer.standby`
starts a streaming hot standby of a server (``pg_basebackup -R``).

PostgreSQL refuses to run as root.  Under root the directory is given to the
``postgres`` user and every server program runs as that user
(``subprocess.run(user=...)``); under any other user, as that user.

The server programs are looked up in this order:

1. the directory named by the environment variable ``PERSIST_PG_BIN`` (when it
   is set, only there);
2. the Debian/Ubuntu layout ``/usr/lib/postgresql/<version>/bin`` (the newest);
3. the binaries inside the ``pgserver`` wheel (pinned in the ``test`` extra
   for Linux x86_64 and Python < 3.13), used as plain programs.

Nothing outlives the test process: each server has a watchdog process that
holds the read end of a pipe whose write end only the test process has.  When
the test process ends -- normally, by an exception, or by ``SIGKILL`` -- the
pipe reaches end-of-file, and the watchdog stops the server and removes its
directory.  :meth:`PostgresServer.stop` uses the same path and waits for it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRE_ENV",
    "PostgresServer",
    "ServerUnavailable",
    "find_binaries",
    "running_server",
    "start_server",
]

#: When this environment variable is ``1``, a missing server fails the tests
#: instead of skipping them (``.ci/run`` sets it).
REQUIRE_ENV = "PERSIST_REQUIRE_POSTGRES"

_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")

#: Settings of every test server (on top of PostgreSQL's defaults, fsync on).
DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "''",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "max_wal_size": "1GB",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "wal_keep_size": "256MB",  # a standby that falls behind can catch up
    "hot_standby": "on",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}

# The watchdog: waits for end-of-file on stdin (the parent died or let go),
# then stops the server of the directory it was given and removes it.
_WATCHDOG = r"""
import os, shutil, signal, subprocess, sys, time
base, bin_dir, user = sys.argv[1], sys.argv[2], sys.argv[3] or None
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
data = os.path.join(base, "data")
pidfile = os.path.join(data, "postmaster.pid")
def postmaster():
    try:
        with open(pidfile) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return None
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
pid = postmaster()
if pid is not None:
    mode = os.environ.get("PERSIST_PG_STOP_MODE", "fast")
    try:
        subprocess.run([os.path.join(bin_dir, "pg_ctl"), "stop", "-D", data, "-m", mode, "-w",
                        "-t", "30"], user=user, cwd=base, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=40)
    except (OSError, subprocess.SubprocessError):
        pass
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        for _ in range(200):
            if not alive(pid):
                break
            time.sleep(0.05)
shutil.rmtree(base, ignore_errors=True)
"""


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def _bin_dir_ok(path: Path) -> bool:
    return all(os.access(path / p, os.X_OK) for p in _PROGRAMS)


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def _wheel_bin_dir() -> Path | None:
    """The server programs inside the ``pgserver`` wheel, without importing it."""
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if _bin_dir_ok(candidate):
            return candidate
    return None


def find_binaries() -> Path:
    """The directory of ``initdb``, ``pg_ctl``, ``postgres`` and ``pg_basebackup``.

    Raises :class:`ServerUnavailable` (with every place looked at) when none
    is usable.
    """
    explicit = os.environ.get("PERSIST_PG_BIN")
    if explicit:  # what the user named, or nothing: never a server they did not ask for
        if _bin_dir_ok(Path(explicit)):
            return Path(explicit)
        raise ServerUnavailable(
            f"PERSIST_PG_BIN={explicit} is not a directory with {', '.join(_PROGRAMS)}"
        )
    looked: list[str] = []
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    for initdb in debian:
        if _bin_dir_ok(Path(initdb).parent):
            return Path(initdb).parent
    looked.append("/usr/lib/postgresql/*/bin (apt-get install postgresql)")
    wheel = _wheel_bin_dir()
    if wheel is not None:
        return wheel
    looked.append("the pgserver wheel (pip install 'pgserver==0.1.4'; Linux x86_64, Python < 3.13)")
    raise ServerUnavailable("no PostgreSQL server programs found; looked at: " + "; ".join(looked))


def _server_user() -> tuple[str | None, int, int]:
    """(user to run the server as, or None for this one; its uid; its gid)."""
    if os.geteuid() != 0:
        return None, os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root, and PostgreSQL refuses root, but there is no 'postgres' user "
            "to run it as (apt-get install postgresql creates one)"
        ) from None
    return "postgres", entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    """A running server owned by this process; see the module docstring."""

    base: Path  # the directory holding data/, the socket and the log
    bin_dir: Path
    port: int
    version: str
    _user: str | None
    _watchdog: subprocess.Popen[bytes]
    _pipe: int | None

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def uri(
        self,
        dbname: str = "postgres",
        *,
        user: str = "postgres",
        password: str | None = None,
        **params: str,
    ) -> str:
        """A libpq URI of ``dbname`` on this server; ``params`` go into its query."""
        query = {"host": str(self.socket_dir), "port": str(self.port), **params}
        encoded = "&".join(f"{k}={urllib.parse.quote(v, safe='/')}" for k, v in query.items())
        userinfo = urllib.parse.quote(user)
        if password is not None:
            userinfo += ":" + urllib.parse.quote(password, safe="")
        return f"postgresql://{userinfo}@/{dbname}?{encoded}"

    def conninfo(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """An autocommit psycopg connection as the superuser (for test set-up)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.conninfo(dbname), **kwargs)

    def execute(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; return its rows (if any)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description is not None else []

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its name."""
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.execute(f"CREATE DATABASE {name}")
        return name

    def allow(self, hba_line: str) -> None:
        """Put ``hba_line`` first in ``pg_hba.conf`` and reload the server."""
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba_line.rstrip("\n") + "\n" + hba.read_text())
        self.run("pg_ctl", "reload", "-D", str(self.data))

    @property
    def postmaster_pid(self) -> int | None:
        try:
            with open(self.data / "postmaster.pid") as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def run(self, program: str, *args: str, timeout: float = 120) -> str:
        """Run a server program as the server's user; return its output."""
        return _run(self.bin_dir / program, args, user=self._user, cwd=self.base, timeout=timeout)

    def standby(self, settings: Mapping[str, str] | None = None) -> PostgresServer:
        """Start a streaming hot standby of this server (``pg_basebackup -R``)."""
        bin_dir, user = self.bin_dir, "postgres"

        def fill(data: Path) -> None:
            _run(
                bin_dir / "pg_basebackup",
                ("-D", str(data), "-R", "-X", "stream", "-c", "fast"),
                user=self._user,
                cwd=data.parent,
                env={"PGHOST": str(self.socket_dir), "PGPORT": str(self.port), "PGUSER": user},
            )

        return _start(bin_dir, fill, {**(settings or {})}, port=self.port + 1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and remove its directory.  Idempotent."""
        if self._pipe is not None:
            if mode != "fast":
                self.run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")
            os.close(self._pipe)
            self._pipe = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(timeout=60)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(
    program: Path,
    args: tuple[str, ...],
    *,
    user: str | None,
    cwd: Path,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> str:
    environment = {**os.environ, "LC_ALL": "C", **(env or {})}
    environment.pop("PGDATA", None)
    try:
        done = subprocess.run(
            [str(program), *args],
            user=user,
            group=None if user is None else pwd.getpwnam(user).pw_gid,
            extra_groups=None if user is None else [],
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerUnavailable(f"{program.name} could not run: {exc}") from exc
    if done.returncode != 0:
        raise ServerUnavailable(
            f"{program.name} {' '.join(args)} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def _start(
    bin_dir: Path,
    fill: Any,
    settings: dict[str, str],
    *,
    port: int = 5432,
    parent: Path | None = None,
) -> PostgresServer:
    """Make a directory, arm its watchdog, ``fill(data)``, then ``pg_ctl start``."""
    user, uid, gid = _server_user()
    base = Path(tempfile.mkdtemp(prefix="persist-pg-", dir=parent))  # None: /tmp
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(base), str(bin_dir), user or ""],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run reaches the test process only
        )
    except BaseException:
        os.close(write_end)
        shutil.rmtree(base, ignore_errors=True)
        raise
    finally:
        os.close(read_end)
    server = PostgresServer(base, bin_dir, port, "", user, watchdog, write_end)
    try:
        if user is not None:
            os.chown(base, uid, gid)
        os.chmod(base, 0o700)
        data = base / "data"
        fill(data)
        conf = {**DEFAULT_SETTINGS, "unix_socket_directories": f"'{base}'", "port": str(port)}
        conf.update(settings)
        with open(data / "postgresql.auto.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        server.run("pg_ctl", "start", "-D", str(data), "-l", str(server.log_file), "-w", "-t", "60")
        server.version = server.run("postgres", "--version").strip()
    except BaseException as exc:
        log = ""
        with contextlib.suppress(OSError):
            log = (base / "server.log").read_text()[-2000:]
        server.stop()
        if isinstance(exc, ServerUnavailable) and log:
            raise ServerUnavailable(f"{exc}\nserver log:\n{log}") from exc
        raise
    return server


def start_server(
    settings: Mapping[str, str] | None = None,
    *,
    bin_dir: Path | None = None,
    parent: Path | None = None,
) -> PostgresServer:
    """``initdb`` and start a fresh server in a new directory under ``parent``
    (default ``/tmp``; the benchmarks put it on the repository's disk).

    Raises :class:`ServerUnavailable` when no server can be run here.
    """
    programs = bin_dir or find_binaries()
    user = _server_user()[0]

    def fill(data: Path) -> None:
        _run(
            programs / "initdb",
            ("-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"),
            user=user,
            cwd=data.parent,
        )

    return _start(programs, fill, dict(settings or {}), parent=parent)


@contextlib.contextmanager
def running_server(
    settings: Mapping[str, str] | None = None, *, bin_dir: Path | None = None
) -> Iterator[PostgresServer]:
    """:func:`start_server` as a context manager that stops it at the end."""
    server = start_server(settings, bin_dir=bin_dir)
    try:
        yield server
    finally:
        server.stop()
