"""The torture suite's knobs: CI sizes by default, ``PERSIST_TORTURE=long`` by hand.

Every test adds what it measured to :data:`FIGURES`; the figures are printed
at the end of the run (and written as JSON to ``$PERSIST_TORTURE_FIGURES``
when that is set), and docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from persist.testing.crash import Zygote

LONG = os.environ.get("PERSIST_TORTURE") == "long"

#: name -> value, filled by the tests of this run.
FIGURES: dict[str, Any] = {}


def scale(ci: int, long: int) -> int:
    """``ci`` in the default run, ``long`` under PERSIST_TORTURE=long."""
    return long if LONG else ci


def record(name: str, value: Any) -> None:
    FIGURES[name] = value


def tear_tail(path: Path, at: int, damage: str) -> None:
    """Damage the file ``path`` from byte ``at`` to its end as a torn write leaves
    it: ``cut`` (truncated there), ``zeros`` or ``garbage`` (random bytes)."""
    end = path.stat().st_size
    with path.open("r+b") as f:
        if damage == "cut":
            f.truncate(at)
        else:
            f.seek(at)
            f.write(bytes(end - at) if damage == "zeros" else os.urandom(end - at))


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        yield z


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("torture figures" + (" (long mode)" if LONG else ""))
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
    out = os.environ.get("PERSIST_TORTURE_FIGURES")
    if out:
        with open(out, "w") as f:
            json.dump(FIGURES, f, indent=1, sort_keys=True, default=str)
