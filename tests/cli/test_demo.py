"""`persist demo` through the real console script, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import persist

BIN = Path(sys.executable).parent / "persist"


def test_demo_runs_and_checks_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "store").mkdir()
    loc = tmp_path / "store" / "demo.db"
    state = tmp_path / "state"
    monkeypatch.setenv("PERSIST_STATE_DIR", str(state))  # the demo's child and this test
    out = subprocess.run(
        [
            str(BIN),
            "demo",
            "--fast-kdf",
            "--threads",
            "4",
            "--transfers",
            "40",
            "--location",
            str(loc),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "160 durable transfers by 4 threads" in out.stdout
    assert "writes per wave" in out.stdout
    assert "total balance 200000 (expected 200000): unchanged" in out.stdout
    assert "intact" in out.stdout
    # the store it left behind is a real encrypted database
    with persist.open(
        str(loc),
        "correct horse battery staple",
        allow_weak_kdf=True,
        read_only=True,
    ) as db:  # with the freshness record the demo kept in the state directory
        assert sum(db.table("accounts").values()) == 200_000
        assert db.verify() == []
    assert b"accounts" not in loc.read_bytes()  # the table name is not in the file


def test_demo_keeps_no_freshness_record_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can roll the store back can roll back a record kept beside it."""
    (tmp_path / "store").mkdir()
    loc = tmp_path / "store" / "demo.db"
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))
    args = ["demo", "--fast-kdf", "--threads", "2", "--transfers", "5", "--location", str(loc)]
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(os.listdir(tmp_path / "store")) == ["demo.db", "demo.db-lock"]
    assert list((tmp_path / "state").rglob("*.json"))  # the record is in the state directory
    # A temporary store: its record goes to a temporary directory of its own,
    # and both are removed.
    (tmp_path / "tmp").mkdir()
    out = subprocess.run(
        [str(BIN), "demo", "--fast-kdf", "--threads", "2", "--transfers", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_python_dash_m_persist() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "persist", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "demo" in out.stdout
