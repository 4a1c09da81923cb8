"""Ruff, mypy (strict on persist/) and the import-linter layer contract, as tests.

They run the tools installed by ``pip install -e '.[test]'`` from the same
environment as pytest, so the README's one test command checks them too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "cmd",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
        ("lint-imports",),
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict", "import-layers"],
)
def test_tool_is_clean(cmd: tuple[str, ...]) -> None:
    result = _run(str(BIN / cmd[0]), *cmd[1:])
    assert result.returncode == 0, result.stdout + result.stderr


def test_layer_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The contract is live: an upward import (kvs -> cli) is reported."""
    bad = ROOT / "persist" / "kvs" / "_upward_probe.py"
    bad.write_text("from persist import cli  # noqa: F401\n")
    try:
        result = _run(str(BIN / "lint-imports"), "--no-cache")
    finally:
        bad.unlink()
    assert result.returncode != 0
    assert "persist.kvs._upward_probe -> persist.cli" in result.stdout


def test_no_import_cycle_between_modules_of_a_layer() -> None:
    """STYLE/brief: the store module is each layer's contract and depends on neither
    its rotation nor its verifier (issue 14 found a four-module cycle in persist.ebs)."""
    import grimp

    graph = grimp.build_graph(
        "persist", include_external_packages=False, exclude_type_checking_imports=True
    )
    cycles = []
    for layer in ("kvs", "ebs", "btree", "mux", "db", "remote", "cli"):
        modules = sorted(m for m in graph.modules if m.startswith(f"persist.{layer}."))
        for a in modules:
            for b in modules:
                if a < b and graph.chain_exists(a, b) and graph.chain_exists(b, a):
                    cycles.append((a, b))
    assert cycles == []
