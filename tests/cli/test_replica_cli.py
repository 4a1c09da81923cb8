"""`persist push | poll | pull | restore` and `persist verify TARGET` through the console script."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import persist
from persist.ebs import KdfParams
from persist.remote import open_container

BIN = str(Path(sys.executable).parent / "persist")


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PERSIST_STATE_DIR": str(tmp_path / "state"), "PERSIST_PASSPHRASE": "pw"}
    return subprocess.run(
        [BIN, *args, "--allow-weak-kdf"], capture_output=True, text=True, timeout=120, env=env
    )


def test_push_poll_pull_restore_verify(tmp_path: Path) -> None:
    src, mirror = str(tmp_path / "s.db"), str(tmp_path / "m.db")
    target = f"dir://{tmp_path / 'rep'}#main"
    kdf = KdfParams.weak_for_tests()
    with persist.open(src, "pw", kdf=kdf, allow_weak_kdf=True, freshness=False) as db:
        db.table("t").update({i: f"v{i}" for i in range(500)})
    done = run(tmp_path, "push", src, target, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["previous"] is None
    assert run(tmp_path, "verify", target).returncode == 0
    done = run(tmp_path, "restore", target, mirror, "--json")
    assert done.returncode == 0, done.stderr
    assert run(tmp_path, "restore", target, mirror).returncode == 1  # exists
    with persist.open(src, "pw", allow_weak_kdf=True, freshness=False) as db:
        db.root["new"] = 1
    assert run(tmp_path, "push", src, target).returncode == 0
    done = run(tmp_path, "poll", mirror, target, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["newer"] is True
    done = run(tmp_path, "pull", mirror, target)
    assert done.returncode == 0 and "pulled" in done.stdout
    with persist.open(mirror, "pw", read_only=True, allow_weak_kdf=True, freshness=False) as db:
        assert db.root["new"] == 1
    # one flipped row: verify TARGET reports it (exit 1)
    with contextlib.closing(open_container(target)) as c, contextlib.closing(c.scan()) as rows:
        key, value = max((len(v), k, v) for k, v in rows)[1:]
    with contextlib.closing(open_container(target)) as c:
        c.write({key: value[:-1] + bytes([value[-1] ^ 1])})
    done = run(tmp_path, "verify", target, "--json")
    assert done.returncode == 1 and not json.loads(done.stdout)["intact"]
    assert run(tmp_path, "restore", target, str(tmp_path / "r.db")).returncode == 1
    # usage and cannot-open errors exit 2
    assert run(tmp_path, "pull", mirror, f"dir://{tmp_path / 'nothing'}").returncode == 2
    assert run(tmp_path, "push", str(tmp_path / "missing.db"), target).returncode == 2


def test_no_password_is_printed(tmp_path: Path) -> None:
    location = "postgresql://user:s3cret@127.0.0.1:1/db#c"
    done = run(tmp_path, "container", "create", location)
    assert done.returncode == 2 and "s3cret" not in done.stdout + done.stderr
