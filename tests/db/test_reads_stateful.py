"""Hypothesis: tables against a dict, with commits landing during reads and iterations.

The database folds often (a tiny root log) and caches few nodes, so reads go
to the store and folds delete what older states still name.  Iterations are
left half-way while the same thread writes and commits (folds included),
and ``len`` and ``get`` run with a commit forced to land in the middle of
them (a hook in the read path runs a commit to completion on another thread).
Every read must match the model of the state it started from.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import persist
from persist.btree import cache as btree_cache
from persist.db import treestore
from persist.ebs import KdfParams

KEYS = st.integers(0, 150)
VALUES = st.sampled_from([b"a", b"bb", b"L" * 300, b"M" * 300]) | st.binary(max_size=12)
TABLES = st.sampled_from(["t", "u"])


def _landing(owner: Any, name: str, commit: Callable[[], None]) -> Callable[[], None]:
    """Patch ``owner.name`` so its next call on this thread first runs ``commit``
    to completion on another thread; returns the undo."""
    original = getattr(owner, name)
    reader = threading.get_ident()
    fired: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == reader and not fired:
            fired.append(True)
            worker = threading.Thread(target=commit)
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive()
        return original(*args, **kwargs)

    setattr(owner, name, hooked)
    return lambda: setattr(owner, name, original)


class ReadsMachine(RuleBasedStateMachine):
    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(_TMP) / uuid.uuid4().hex
        self.dir.mkdir()
        if self.backend == "sqlite":
            self.location = str(self.dir / "db.sqlite")
        else:
            self.location = f"leveldb://{self.dir / 'db.ldb'}"
        self.model: dict[str, dict[int, bytes]] = {"t": {}, "u": {}}
        self.iterations: list[tuple[Iterator[tuple[Any, Any]], list[tuple[int, bytes]], int]] = []
        self.db = self._open()

    #: 1: a due log is folded one small key range per commit (rootlog rule 6)
    piece_nodes = 64

    def _open(self) -> persist.Database:
        return persist.open(
            self.location,
            "pw",
            kdf=KdfParams.weak_for_tests(),
            allow_weak_kdf=True,
            freshness=False,
            durable=False,
            cache_nodes=24,
            root_log=persist.LogLimits(max_entries=12, fold_nodes=4, piece_nodes=self.piece_nodes),
            config=persist.mux.MuxConfig(max_delay=30),  # commits come when asked
        )

    # -- writes ---------------------------------------------------------------

    @rule(table=TABLES, key=KEYS, value=VALUES)
    def put(self, table: str, key: int, value: bytes) -> None:
        self.db.table(table)[key] = value
        self.model[table][key] = value

    @rule(table=TABLES, key=KEYS)
    def delete(self, table: str, key: int) -> None:
        if key in self.model[table]:
            del self.db.table(table)[key]
            del self.model[table][key]

    @rule(table=TABLES, data=st.data())
    def atomic_batch(self, table: str, data: st.DataObject) -> None:
        changes = data.draw(st.dictionaries(KEYS, VALUES | st.none(), max_size=30))
        t = self.db.table(table)
        with self.db.atomic():
            for key, value in changes.items():
                if value is None:
                    if key in self.model[table]:
                        del t[key]
                        del self.model[table][key]
                else:
                    t[key] = value
                    self.model[table][key] = value

    @rule(table=TABLES)
    def clear(self, table: str) -> None:
        self.db.table(table).clear()
        self.model[table].clear()

    @rule()
    def commit_wait(self) -> None:
        self.db.commit_wait()

    # -- reads with commits landing in them -----------------------------------

    @precondition(lambda self: len(self.iterations) < 3)
    @rule(table=TABLES, take=st.integers(0, 40), reverse=st.booleans())
    def start_iteration(self, table: str, take: int, reverse: bool) -> None:
        expected = sorted(self.model[table].items(), reverse=reverse)
        it = iter(self.db.table(table).items(reverse=reverse))
        got = [next(it) for _ in range(min(take, len(expected)))]
        assert got == expected[: len(got)]
        self.iterations.append((it, expected, len(got)))

    @precondition(lambda self: bool(self.iterations))
    @rule(data=st.data(), take=st.integers(1, 60))
    def advance_iteration(self, data: st.DataObject, take: int) -> None:
        i = data.draw(st.integers(0, len(self.iterations) - 1))
        it, expected, done = self.iterations[i]
        got = [pair for _, pair in zip(range(take), it, strict=False)]
        assert got == expected[done : done + len(got)]
        done += len(got)
        if done == len(expected):
            assert next(it, None) is None
            self.iterations.pop(i)
        else:
            self.iterations[i] = (it, expected, done)

    @rule(table=TABLES)
    def len_with_a_commit_landing_in_it(self, table: str) -> None:
        undo = _landing(treestore._State, "count", self.db.commit_wait)
        try:
            assert len(self.db.table(table)) == len(self.model[table])
        finally:
            undo()

    @rule(table=TABLES, key=KEYS)
    def get_with_a_commit_landing_in_it(self, table: str, key: int) -> None:
        self.db._trees.cache.clear()
        undo = _landing(btree_cache.NodeReader, "tree_node", self.db.commit_wait)
        try:
            assert self.db.table(table).get(key) == self.model[table].get(key)
        finally:
            undo()

    @rule()
    def reopen(self) -> None:
        self._finish_iterations()
        self.db.close()
        self.db = self._open()

    def _finish_iterations(self) -> None:
        for it, expected, done in self.iterations:
            assert list(it) == expected[done:]
        self.iterations.clear()

    @invariant()
    def contents_match(self) -> None:
        for table, model in self.model.items():
            t = self.db.table(table)
            assert len(t) == len(model)
            assert dict(t.items()) == model

    def teardown(self) -> None:
        try:
            self._finish_iterations()
            assert self.db.verify() == []
        finally:
            self.db.close()


_TMP = __import__("tempfile").mkdtemp(prefix="persist-reads-")
SETTINGS = settings(max_examples=200, stateful_step_count=50, deadline=None, database=None)


class SQLiteReads(ReadsMachine):
    backend = "sqlite"


class LevelDBReads(ReadsMachine):
    backend = "leveldb"


class SQLiteReadsFoldingInPieces(ReadsMachine):
    backend = "sqlite"
    piece_nodes = 1


SQLiteReads.TestCase.settings = SETTINGS
LevelDBReads.TestCase.settings = SETTINGS
SQLiteReadsFoldingInPieces.TestCase.settings = settings(SETTINGS, max_examples=100)
test_reads_on_sqlite = SQLiteReads.TestCase
test_reads_on_leveldb = LevelDBReads.TestCase
test_reads_on_sqlite_folding_in_pieces = SQLiteReadsFoldingInPieces.TestCase
