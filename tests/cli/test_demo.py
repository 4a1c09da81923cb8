"""`persist demo` through the real console script, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import persist

BIN = Path(sys.executable).parent / "persist"


def test_demo_runs_and_checks_itself(tmp_path: Path) -> None:
    loc = tmp_path / "demo.db"
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
        freshness=str(loc.with_suffix(".fresh")),
        read_only=True,
    ) as db:
        assert sum(db.table("accounts").values()) == 200_000
        assert db.verify() == []
    assert b"accounts" not in loc.read_bytes()  # the table name is not in the file


def test_python_dash_m_persist() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "persist", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "demo" in out.stdout
