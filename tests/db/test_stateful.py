"""The public API against a dict model: puts, deletes, atomic blocks, ranges, reopen."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import persist
from persist.ebs import KdfParams
from persist.kvs.memory import drop_named_store

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}

int_keys = st.integers(-300, 300) | st.integers(-(2**70), 2**70)
tuple_keys = st.tuples(st.text(alphabet="abc", max_size=2), st.integers(-3, 3))
values = (
    st.none()
    | st.integers()
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=3)
    | st.binary(min_size=225, max_size=600)  # large: stored as blobs
    | st.sampled_from([b"B" * 300, b"C" * 400])  # identical large values: deduplicated
)


class APIModel(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        if self.backend == "memory":
            self.name = uuid.uuid4().hex
            self.location = f"memory:{self.name}"
        else:
            self.tmp = tempfile.mkdtemp(prefix="persist-api-")
            self.location = f"{self.tmp}/db.sqlite"
        self.db = self._open()
        self.model: dict[str, dict[Any, Any]] = {"ints": {}, "tuples": {}}
        self.in_block = False

    #: 1: a due log is folded one small key range per commit (rootlog rule 6)
    piece_nodes = 64

    def _open(self) -> persist.Database:
        # A small root log: both commit paths (log and fold) run often.
        limits = persist.LogLimits(6, 700, piece_nodes=self.piece_nodes)
        return persist.open(self.location, "pw", root_log=limits, **WEAK)

    def _table(self, name: str) -> persist.Table:
        return self.db.table(name)

    @rule(k=int_keys, v=values)
    def put_int(self, k: int, v: Any) -> None:
        self._table("ints")[k] = v
        self.model["ints"][k] = v

    @rule(k=tuple_keys, v=values)
    def put_tuple(self, k: tuple[str, int], v: Any) -> None:
        self._table("tuples")[k] = v
        self.model["tuples"][k] = v

    @rule(k=int_keys)
    def delete_int(self, k: int) -> None:
        t = self._table("ints")
        if k in self.model["ints"]:
            del t[k]
            del self.model["ints"][k]
        else:
            with pytest.raises(KeyError):
                del t[k]

    @rule(
        puts=st.dictionaries(int_keys, values, max_size=40),
        dels=st.lists(int_keys, max_size=5),
    )
    def atomic_block(self, puts: dict[int, Any], dels: list[int]) -> None:
        t = self._table("ints")
        with self.db.atomic():
            for k, v in puts.items():
                t[k] = v
                self.model["ints"][k] = v
            with self.db.atomic():  # nested
                for k in dels:
                    if k in self.model["ints"]:
                        del t[k]
                        del self.model["ints"][k]

    @rule(k=int_keys)
    def get(self, k: int) -> None:
        assert self._table("ints").get(k, "absent") == self.model["ints"].get(k, "absent")

    @rule(lo=st.none() | int_keys, hi=st.none() | int_keys, reverse=st.booleans())
    def range_ints(self, lo: int | None, hi: int | None, reverse: bool) -> None:
        want = sorted(
            (k for k in self.model["ints"] if (lo is None or k >= lo) and (hi is None or k < hi)),
            reverse=reverse,
        )
        assert list(self._table("ints").keys(lo, hi, reverse=reverse)) == want

    @rule(prefix=st.text(alphabet="abc", max_size=2))
    def range_tuples(self, prefix: str) -> None:
        want = sorted(k for k in self.model["tuples"] if k[0] == prefix)
        got = list(self._table("tuples").keys((prefix,), (prefix + "\x00",)))
        assert got == want

    @rule()
    def commit_wait(self) -> None:
        self.db.commit_wait()

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = self._open()

    @rule()
    def reopen_with_the_log_unfolded(self) -> None:
        """As after a crash: the next open finds changes in the root log."""
        self.db._trees.fold = lambda: None  # type: ignore[method-assign]
        self.db.close()
        self.db = self._open()

    @invariant()
    def same_contents(self) -> None:
        for name, model in self.model.items():
            t = self._table(name)
            assert len(t) == len(model)
            assert dict(t.items()) == model

    def teardown(self) -> None:
        try:
            issues = self.db.verify()
            assert issues == [], issues
        finally:
            self.db.close()
            if self.backend == "memory":
                drop_named_store(self.name)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


class SQLiteAPIModel(APIModel):
    backend = "sqlite"


class PiecesAPIModel(APIModel):
    piece_nodes = 1


TestAPIModelMemory = APIModel.TestCase
TestAPIModelMemory.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestAPIModelSQLite = SQLiteAPIModel.TestCase
TestAPIModelSQLite.settings = settings(max_examples=10, stateful_step_count=25, deadline=None)
TestAPIModelFoldingInPieces = PiecesAPIModel.TestCase
TestAPIModelFoldingInPieces.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None
)
