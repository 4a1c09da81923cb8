"""Fixtures of the db tests: a database on SQLite with the weak test KDF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import persist
from persist.ebs import KdfParams


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[persist.Database]:
    """A new database in ``tmp_path/s.db`` (passphrase "pw", no freshness record)."""
    with persist.open(
        str(tmp_path / "s.db"),
        "pw",
        kdf=KdfParams.weak_for_tests(),
        allow_weak_kdf=True,
        freshness=False,
    ) as db:
        yield db
