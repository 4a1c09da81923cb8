"""`persist init`, `info` and `verify` on a postgresql:// location, through the console
script, and damage done to the rows with plain SQL, the way the server's owner could."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import persist
from persist.testing.pgserver import PostgresServer

from ..conftest import PG_DATABASE, pg_location

BIN = str(Path(sys.executable).parent / "persist")
PW = "cli passphrase"


def _persist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)


def test_init_info_and_verify_on_postgresql(pg_server: PostgresServer, tmp_path: Path) -> None:
    location = pg_location(pg_server)
    table = location.rsplit("table=", 1)[1]
    (tmp_path / "pw").write_text(PW + "\n")
    creds = ["--passphrase-file", str(tmp_path / "pw"), "--no-freshness"]
    opened = [*creds, "--allow-weak-kdf"]

    out = _persist("init", location, *creds, "--weak-kdf-for-tests")
    assert out.returncode == 0, out.stdout + out.stderr
    with persist.open(
        location,
        PW,
        kdf=persist.ebs.KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
    ) as db:
        t = db.table("t")
        for i in range(300):
            t[i] = "x" * 300 if i % 3 == 0 else f"value {i}"
    out = _persist("verify", location, *opened)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intact" in out.stdout
    out = _persist("info", location, *opened)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "t           300 entries" in out.stdout and f"table={table}" in out.stdout
    out = _persist("init", location, *creds, "--weak-kdf-for-tests")
    assert out.returncode == 2 and "not empty" in out.stderr

    with pg_server.connect(PG_DATABASE) as admin:  # flip one byte of one stored row
        key, value = admin.execute(
            # the longest row is a tree node (not a root slot or keyslot, which
            # verify reports as an open failure without a storage key)
            f"SELECT k, v FROM {table} ORDER BY length(v) DESC, k LIMIT 1"
        ).fetchone()
        damaged = bytearray(value)
        damaged[-5] ^= 0x10
        admin.execute(f"UPDATE {table} SET v = %s WHERE k = %s", (bytes(damaged), key))
    out = _persist("verify", location, *opened, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["intact"] is False
    assert key.hex() in out.stdout

    out = _persist("verify", pg_location(pg_server), *opened)  # no such store: cannot open
    assert out.returncode == 2 and "StoreNotFound" in out.stderr, out.stderr
