"""`persist lease ...` and `persist container ...` through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import persist
from persist.remote import open_container, open_target

from .conftest import SHARED_KINDS, target_location_for

BIN = str(Path(sys.executable).parent / "persist")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def report(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(params=SHARED_KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return target_location_for(request.param, tmp_path)


def test_containers(target: str, tmp_path: Path) -> None:
    assert run("container", "create", f"{target}#db").returncode == 0
    assert run("container", "create", f"{target}#db").returncode == 0  # empty: fine
    with open_container(f"{target}#db") as c:
        c.write({b"\x01" * 32: b"ciphertext"})
    refused = run("container", "create", f"{target}#db", "--json")
    assert refused.returncode == 1 and report(refused)["refused"] == "ContainerExists"
    copied = run("container", "copy", f"{target}#db", f"{target}#copy", "--json")
    assert copied.returncode == 0 and report(copied)["rows"] == 1
    other = f"dir://{tmp_path}/elsewhere#db"
    assert run("container", "copy", f"{target}#copy", other).returncode == 0
    again = run("container", "copy", f"{target}#db", other, "--json")
    assert again.returncode == 1 and report(again)["refused"] == "ContainerExists"
    listed = run("container", "list", target, "--json")
    assert listed.returncode == 0
    assert report(listed)["containers"] == ["copy", "db"]
    assert report(listed)["default_holds_rows"] is False
    assert run("container", "delete", f"{target}#copy").returncode == 0
    assert report(run("container", "list", target, "--json"))["containers"] == ["db"]
    missing = run("container", "delete", f"{target}#copy")
    assert missing.returncode == 2 and "ContainerNotFound" in missing.stderr
    with open_container(other) as c:
        assert list(c.scan()) == [(b"\x01" * 32, b"ciphertext")]


def test_lease_commands(target: str) -> None:
    db = f"{target}#db"
    assert run("container", "create", db).returncode == 0
    shown = run("lease", "show", db, "--json")
    assert shown.returncode == 0 and report(shown)["lease"] is None
    got = run("lease", "acquire", db, "--holder", "alpha", "--lease", "60", "--json")
    assert got.returncode == 0, got.stderr
    assert report(got)["lease"]["holder"] == "alpha"  # type: ignore[index]
    assert 0 < report(got)["valid_for_seconds"] <= 54  # type: ignore[operator]
    held = run("lease", "acquire", db, "--holder", "beta", "--json")
    assert held.returncode == 1 and report(held)["refused"] == "LeaseHeld"
    assert report(held)["lease"]["holder"] == "alpha"  # type: ignore[index]
    intruder = run("lease", "release", db, "--holder", "beta")
    assert intruder.returncode == 1 and "held by alpha" in intruder.stderr
    env = {"PERSIST_LEASE_HOLDER": "alpha"}
    renewed = run("lease", "renew", db, "--generation", "1", "--json", env=env)
    assert renewed.returncode == 0
    assert report(renewed)["lease"]["serial"] == 2  # type: ignore[index]
    assert report(renewed)["lease"]["lease_seconds"] == 60  # type: ignore[index]
    assert run("lease", "renew", db, "--holder", "alpha", "--generation", "7").returncode == 1
    assert run("lease", "release", db, env=env).returncode == 0
    shown = run("lease", "show", db)
    assert shown.returncode == 0 and "released by alpha" in shown.stdout
    assert run("lease", "renew", db, env=env).returncode == 1  # released: lost
    taken = run("lease", "acquire", db, "--json")  # default holder: host:pid:random
    assert taken.returncode == 0
    assert report(taken)["lease"]["generation"] == 2  # type: ignore[index]
    assert report(taken)["lease"]["holder"].count(":") == 2  # type: ignore[index, union-attr]


def test_usage_and_cannot_open(tmp_path: Path) -> None:
    for args in (
        ("lease", "show", f"dir://{tmp_path}/missing#db"),
        ("lease", "show", f"dir://{tmp_path}/t#Bad-Name"),
        ("lease", "renew", f"dir://{tmp_path}/t#db"),
        ("container", "list", "s3://bucket"),
        ("container", "list", f"dir://{tmp_path}/t#db"),
        ("lease", "acquire", f"{tmp_path}/t.db#db", "--holder", "has space"),
    ):
        done = run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
    assert run("container", "create", f"dir://{tmp_path}/t#db").returncode == 0
    missing = run("lease", "acquire", f"dir://{tmp_path}/t#other")
    assert missing.returncode == 2 and "ContainerNotFound" in missing.stderr


def test_a_malformed_lease_record_is_refused(tmp_path: Path) -> None:
    db = f"{tmp_path}/t.db#db"
    with open_container(db, create=True) as c:
        assert c.swap_lease(None, b"garbage planted by the host")
    for args in (("lease", "show", db), ("lease", "acquire", db), ("container", "delete", db)):
        done = run(*args, "--json")
        assert done.returncode == 1, args
        assert report(done)["refused"] == "IntegrityError"


def test_a_copied_database_verifies(tmp_path: Path) -> None:
    """A copy is the rows byte for byte: through a dir target and back into a
    SQLite file, the database opens and `persist verify` finds it intact."""
    source = str(tmp_path / "source.db")
    kdf = persist.ebs.KdfParams.weak_for_tests()
    with persist.open(source, "pw", kdf=kdf, allow_weak_kdf=True, freshness=False) as db:
        for i in range(300):
            db.table("t")[i] = "x" * (i % 250)
    assert run("container", "copy", source, f"dir://{tmp_path}/replicas#wallet").returncode == 0
    back = str(tmp_path / "restored.db")
    assert run("container", "copy", f"dir://{tmp_path}/replicas#wallet", back).returncode == 0
    (tmp_path / "pw").write_text("pw\n")
    verify = run(
        "verify", back, "--passphrase-file", str(tmp_path / "pw"), "--allow-weak-kdf",
        "--no-freshness",
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    with open_target(f"dir://{tmp_path}/replicas") as t:
        assert t.list_containers() == ["wallet"]
