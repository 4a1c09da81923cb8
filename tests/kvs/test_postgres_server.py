"""The test servers themselves (persist.testing.pgserver): nothing outlives the tests,
the wheel fallback runs, and a missing server is a skip with its reason, or a
failure where CI requires a server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persist.kvs import open_store
from persist.testing import pgserver
from persist.testing.pgserver import REQUIRE_ENV, PostgresServer

ROOT = Path(__file__).resolve().parents[2]

HOLDING_TEST = """
import time


def test_hold(pg_server):
    print(pg_server.base, pg_server.postmaster_pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it


def test_a_killed_pytest_leaves_no_server_behind(pg_server: PostgresServer, tmp_path: Path) -> None:
    """A pytest run holding the session server (the real ``pg_server`` fixture) is
    SIGKILLed: no fixture teardown, no atexit; the watchdog alone stops the server."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pg_server  # noqa: F401\n")
    (tmp_path / "test_hold.py").write_text(HOLDING_TEST)
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = ""
    while not line.startswith("/"):  # pytest's own lines come first
        line = child.stdout.readline()
        assert line, "the child test run ended before it held a server"
    base, pid = line.split()[-2:]
    postmaster = int(pid)
    assert _alive(postmaster) and Path(base, "data", "PG_VERSION").exists()
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 30
    while (_alive(postmaster) or Path(base).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(postmaster), "the postmaster outlived the killed test process"
    assert not Path(base).exists(), "the server's directory was left behind"


def test_stop_removes_everything(pg_server: PostgresServer) -> None:
    server = pgserver.start_server()
    postmaster, base = server.postmaster_pid, server.base
    assert postmaster is not None and _alive(postmaster)
    assert server.execute("SHOW fsync") == [("on",)]
    assert server.execute("SHOW listen_addresses") == [("",)]  # a Unix socket only
    server.stop()
    server.stop()  # idempotent
    assert not _alive(postmaster) and not base.exists()


def test_the_pgserver_wheel_fallback_runs_a_server(pg_server: PostgresServer) -> None:
    wheel = pgserver._wheel_bin_dir()
    if wheel is None:
        pytest.skip("the pgserver wheel is not installed (only Linux x86_64, Python < 3.13)")
    with pgserver.running_server(bin_dir=wheel) as server:
        assert "PostgreSQL" in server.version
        with open_store(server.uri(table="wheel")) as store:
            store.write({b"k": b"v"})
            assert store.get(b"k") == b"v"


def _pytest_without_server(require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    env["PERSIST_PG_BIN"] = "/nonexistent/bin"
    if require:
        env[REQUIRE_ENV] = "1"
    test = "tests/kvs/test_postgresql.py::test_open_store_knows_the_scheme"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", test],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_no_server_is_a_skip_with_its_reason_or_a_failure_when_required() -> None:
    skipped = _pytest_without_server(require=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "1 skipped" in skipped.stdout
    assert "PERSIST_PG_BIN=/nonexistent/bin is not a directory" in skipped.stdout
    required = _pytest_without_server(require=True)
    assert required.returncode == 1, required.stdout + required.stderr
    assert f"{REQUIRE_ENV}=1 but no PostgreSQL server can run here" in required.stdout
