"""The asyncio twins of push, poll, pull and restore keep the event loop ticking."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from persist.remote import apoll, apull, apush, arestore

from .conftest import target_location_for
from .test_asyncio import unblocked
from .test_sync import PW, WEAK, contents, fill, new_db


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSIST_STATE_DIR", str(tmp_path / "state"))


def test_twins_do_not_block_the_loop(tmp_path: Path) -> None:
    src, mirror = str(tmp_path / "s.db"), str(tmp_path / "m.db")
    target = target_location_for("dir", tmp_path)
    with new_db(src) as db:
        fill(db, 3000)

    async def main() -> None:
        result = await unblocked(apush(src, target, passphrase=PW, **WEAK), floor=0.2)
        assert result.written > 0  # type: ignore[attr-defined]
        await unblocked(arestore(target, mirror, passphrase=PW, **WEAK), floor=0.2)
        seen = await apoll(mirror, target, passphrase=PW, **WEAK)
        assert not seen.newer
        pulled = await apull(mirror, target, passphrase=PW, **WEAK)
        assert pulled.up_to_date

    asyncio.run(main())
    assert contents(mirror) == contents(src)
