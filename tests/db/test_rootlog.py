"""The root log: small waves committed in the root record, folded into the trees later."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import persist
from persist.db.rootlog import (
    LOG_DESCRIPTOR,
    LogLimits,
    RootLog,
    decode_segment,
    encode_segment,
    fold_estimate,
)
from persist.db.treestore import TreeWaveStore
from persist.db.verify import verify_database
from persist.ebs import EncryptedStore, KdfParams
from persist.ebs import rekey as rotation
from persist.errors import IntegrityError
from persist.kvs import MemoryStore, open_store

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}

changes_st = st.dictionaries(
    st.sampled_from(["t", "accounts", "ünïcode"]),
    st.dictionaries(st.binary(max_size=40), st.none() | st.binary(max_size=300), max_size=10),
    max_size=3,
)


@given(first=changes_st, second=changes_st)
def test_segments_round_trip(first: dict, second: dict) -> None:  # type: ignore[type-arg]
    rows: dict[bytes, bytes] = {}
    log = RootLog()
    want: dict[str, dict[bytes, bytes | None]] = {}
    for changes in (first, second):
        log, key, segment = log.appended(changes)
        rows[key] = segment
        assert decode_segment(segment) == {t: tab for t, tab in changes.items() if tab}
        for table, tab in changes.items():
            if tab:
                want.setdefault(table, {}).update(tab)
    assert log.tables == want
    assert len(log) == sum(map(len, want.values()))
    assert log.nbytes == sum(map(len, rows.values()))
    loaded = RootLog.load(log.meta(), rows.get)
    assert loaded.tables == want and loaded.meta() == log.meta()


def test_the_chain_catches_a_missing_swapped_or_old_segment() -> None:
    rows: dict[bytes, bytes] = {}
    log = RootLog()
    for i in range(3):
        log, key, segment = log.appended({"t": {b"k": b"%d" % i}})
        rows[key] = segment
    assert RootLog.load(log.meta(), rows.get).tables == {"t": {b"k": b"2"}}
    keys = sorted(rows)
    for damaged in (
        {k: v for k, v in rows.items() if k != keys[1]},  # a segment missing
        {**rows, keys[0]: rows[keys[1]], keys[1]: rows[keys[0]]},  # two swapped
        {**rows, keys[2]: rows[keys[1]]},  # one rolled back to another's content
    ):
        with pytest.raises(IntegrityError):
            RootLog.load(log.meta(), damaged.get)
    with pytest.raises(IntegrityError):
        RootLog.load(log.meta()[:-1], rows.get)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02",  # an unknown version
        b"\x01\x00",  # a truncated entry header
        encode_segment({"t": {b"k": b"value"}})[:-1],  # a truncated value
        encode_segment({"t": {b"k": b"1"}}) + encode_segment({"t": {b"k": b"2"}})[1:],  # twice
        encode_segment({"": {b"k": b"1"}}),  # no table name
        b"\x01\x00\x02\x00\x00\x00\x00\x00\x00\xff\xfe",  # a name that is not UTF-8
    ],
)
def test_a_malformed_segment_is_an_integrity_error(payload: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_segment(payload)


def _filled(db: persist.Database, model: dict[int, str]) -> persist.Table:
    """Table "t" of ``db`` holding ``model``, committed in one wave (into its tree)."""
    t = db.table("t")
    with db.atomic():
        t.update(model)
    db.commit_wait()
    return t


def _trees(limits: LogLimits) -> tuple[MemoryStore, TreeWaveStore]:
    kvs = MemoryStore()
    ebs = EncryptedStore.create(kvs, "pw", **WEAK)  # type: ignore[arg-type]
    return kvs, TreeWaveStore(ebs, log_limits=limits)


def _rows(kvs: MemoryStore) -> int:
    return sum(1 for _ in kvs.scan())


def test_small_waves_write_one_row_and_the_root_until_the_log_is_full() -> None:
    kvs, trees = _trees(LogLimits(max_entries=10, max_bytes=10_000, tail_bytes=0))
    rows = _rows(kvs) + 1  # a keyslot, a root, and soon the other root slot
    for i in range(10):
        trees.commit_wave(i + 1, {"t": {b"k%02d" % i: b"v%d" % i}})
        assert _rows(kvs) == rows + i + 1  # a root slot replaced, one segment added
        assert len(trees.log) == i + 1
    tree = trees.tree("t")
    assert tree is not None and tree.root is None  # all of it in the log so far
    assert trees.get("t", b"k03") == b"v3" and trees.count("t") == 10
    trees.commit_wave(11, {"t": {b"k10": b"v10", b"k00": None}})  # 12 entries: a fold
    assert len(trees.log) == 0
    tree = trees.tree("t")
    assert tree is not None and tree.count() == 10 and tree.get(b"k10") == b"v10"
    assert _rows(kvs) == rows + 1  # the segments deleted, one leaf written
    assert trees.log.segments == 0 and trees.log.generation == 1
    assert TreeWaveStore(trees.ebs).get("t", b"k10") == b"v10"
    with trees.ebs.pin() as snap:  # the segments' rows are gone: no orphan
        assert verify_database(trees.ebs, snap) == []


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_verify_names_the_storage_key_of_a_missing_or_damaged_segment(damage: str) -> None:
    """As it names a node's: "segment 0 is missing" alone says nothing a user can find
    (tests/remote/test_sync.py::test_a_damaged_replica_is_refused failed whenever the
    row it damaged at random was a log segment)."""
    kvs, trees = _trees(LogLimits(max_entries=1000, max_bytes=100_000, tail_bytes=0))
    for i in range(4):
        trees.commit_wave(i + 1, {"t": {b"k%02d" % i: b"v%d" % i}})
    assert trees.log.segments == 4
    table = trees.ebs.table(LOG_DESCRIPTOR)
    victim = table.row_key(trees.log.segment_keys()[1])
    stored = kvs.get(victim)
    assert stored is not None
    if damage == "delete":
        kvs.write(deletes=[victim])
    else:
        kvs.write({victim: stored[:-1] + bytes([stored[-1] ^ 1])})
    with trees.ebs.pin() as snap:
        issues = verify_database(trees.ebs, snap)
    logged = [i for i in issues if i.kind == "log"]
    assert [i.storage_key for i in logged] == [victim.hex()], issues


def test_small_waves_ride_in_the_root_until_the_tail_is_full() -> None:
    """Rule 5 of the log: a small commit writes the root alone; the commit that
    would pass ``tail_bytes`` writes one merged segment row and empties the tail."""
    kvs, trees = _trees(LogLimits(max_entries=1000, max_bytes=100_000, tail_bytes=200))
    trees.commit_wave(1, {"t": {b"k00": b"v0"}})
    rows = _rows(kvs)  # a keyslot and both root slots from now on
    spills = []
    for i in range(1, 30):
        before = trees.log.tail_bytes
        trees.commit_wave(i + 1, {"t": {b"k%02d" % i: b"v%d" % i, b"k00": b"w%d" % i}})
        if trees.log.tail:
            assert trees.log.tail_bytes > before  # joined the tail: no row written
        else:
            spills.append(i)
        assert _rows(kvs) == rows + trees.log.segments
        assert trees.log.tail_bytes <= 200
    assert len(spills) >= 3 and trees.log.segments == len(spills)
    want = {b"k%02d" % i: b"v%d" % i for i in range(1, 30)} | {b"k00": b"w29"}
    assert dict(trees.scan("t", None, None, False)) == want
    reopened = TreeWaveStore(trees.ebs)  # reads the rows, then the tail from the root
    assert dict(reopened.scan("t", None, None, False)) == want
    assert reopened.log.meta() == trees.log.meta()
    with trees.ebs.pin() as snap:
        assert verify_database(trees.ebs, snap) == []
    trees.fold()
    assert not trees.log.tail and trees.log.segments == 0
    assert dict(TreeWaveStore(trees.ebs).scan("t", None, None, False)) == want


@pytest.mark.parametrize(
    "suffix",
    [b"\x00\x00\x00\x05ab", b"\x00\x00\x00\x00", b"\x00\x00", b""],
    ids=["truncated", "empty segment", "short length", "no tail"],
)
def test_a_malformed_tail_is_an_integrity_error(suffix: bytes) -> None:
    log, _, _ = RootLog().appended({"t": {b"k": b"v"}}, tail_bytes=100)
    header = log.meta()[:45]
    with pytest.raises(IntegrityError):
        RootLog.load(header + suffix, {}.get)
    v1 = bytes([1]) + header[1:]
    with pytest.raises(IntegrityError):  # a version-1 payload has nothing after its header
        RootLog.load(v1 + b"\x00\x00\x00\x01x", {}.get)


def test_reads_lay_the_log_over_the_trees() -> None:
    _, trees = _trees(LogLimits(max_entries=100, max_bytes=100_000))
    trees.commit_wave(1, {"t": {b"%03d" % i: b"tree" for i in range(0, 303, 3)}})  # a fold
    assert len(trees.log) == 0
    logged = {b"%03d" % i: (None if i % 2 else b"log") for i in range(0, 60)}
    trees.commit_wave(2, {"t": logged})
    assert len(trees.log) == 60
    want = {b"%03d" % i: b"tree" for i in range(0, 303, 3)}
    for k, v in logged.items():
        if v is None:
            want.pop(k, None)
        else:
            want[k] = v
    assert trees.count("t") == len(want)
    assert list(trees.scan("t", None, None, False)) == sorted(want.items())
    assert list(trees.scan("t", None, None, True)) == sorted(want.items(), reverse=True)
    lo, hi = b"010", b"042"
    part = sorted((k, v) for k, v in want.items() if lo <= k < hi)
    assert list(trees.scan("t", lo, hi, False)) == part
    assert list(trees.scan("t", lo, hi, True)) == part[::-1]
    assert trees.get("t", b"003") is None and trees.get("t", b"004") == b"log"
    assert trees.get("t", b"063") == b"tree"


def test_a_large_value_goes_to_the_trees_at_once() -> None:
    _, trees = _trees(LogLimits(max_entries=100, max_bytes=4096))
    trees.commit_wave(1, {"t": {b"small": b"x"}})
    assert len(trees.log) == 1
    trees.commit_wave(2, {"t": {b"big": b"B" * 5000}})
    assert len(trees.log) == 0
    assert trees.get("t", b"big") == b"B" * 5000 and trees.get("t", b"small") == b"x"


def _logged_until_fold(trees: TreeWaveStore, rnd: random.Random, per_wave: int) -> int:
    """Commit waves of fresh random keys until one folds; the keys logged before it."""
    number = 100
    while True:
        before = len(trees.log)
        number += 1
        trees.commit_wave(number, {"t": {rnd.randbytes(8): b"new" for _ in range(per_wave)}})
        if len(trees.log) == 0:
            return before


def test_a_fold_comes_when_it_would_rewrite_about_fold_nodes_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a large tree each logged key costs about a leaf: the log folds after
    about ``fold_nodes`` keys, well before ``max_entries``, and that fold
    writes about ``fold_nodes`` nodes."""
    kvs, trees = _trees(LogLimits(max_entries=1000, max_bytes=1 << 20, fold_nodes=50))
    rnd = random.Random(7)
    trees.commit_wave(1, {"t": {rnd.randbytes(8): b"tree" for _ in range(6000)}})
    assert len(trees.log) == 0  # 6000 keys pass max_entries: straight to the tree
    written: list[int] = []
    real = kvs.write

    def spy(puts: Iterable[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        pairs = list(puts)  # a commit hands its rows over as they are sealed
        written.append(len(pairs))
        real(pairs, deletes)

    monkeypatch.setattr(kvs, "write", spy)
    logged = _logged_until_fold(trees, rnd, per_wave=1)
    assert 30 <= logged <= 80, logged
    assert fold_estimate(logged + 1, 6000) >= 50  # the rule that fired
    assert fold_estimate(logged, 6000) < 50  # ... and not one commit earlier
    # Rows of the fold: its nodes and the root.  A leaf of a bulk load is full,
    # so the first key into it splits it in two: up to twice the estimate.
    assert 25 <= written[-1] <= 2.5 * 50
    assert trees.count("t") == 6000 + logged + 1


def test_a_small_tree_lets_the_log_grow_to_max_entries() -> None:
    """While the tree is small, a fold rewrites it once for many keys: no early fold."""
    _, trees = _trees(LogLimits(max_entries=1000, max_bytes=1 << 20, fold_nodes=50))
    rnd = random.Random(8)
    trees.commit_wave(1, {"t": {rnd.randbytes(8): b"tree" for _ in range(100)}})
    assert len(trees.log) == 100  # fits, and a fold of it would rewrite about 5 nodes
    assert _logged_until_fold(trees, rnd, per_wave=10) == 1000  # full: max_entries
    assert trees.count("t") == 1000 + 10


def test_fold_estimate() -> None:
    assert fold_estimate(0, 10**6) == 0
    # a large tree: about a leaf per key (plus new leaves for the keys)
    assert 1000 < fold_estimate(1000, 10**7) < 1000 * (1 + 1 / 24) + 1
    # a small tree: at most all of its leaves, plus new ones
    assert fold_estimate(10**5, 2400) < 100 + 10**5 / 24 + 1
    with pytest.raises(ValueError):
        LogLimits(10, 10, fold_nodes=-1)


def test_zero_limits_turn_the_log_off() -> None:
    _, trees = _trees(LogLimits(0, 0))
    trees.commit_wave(1, {"t": {b"k": b"v"}})
    assert len(trees.log) == 0 and trees.get("t", b"k") == b"v"
    with pytest.raises(ValueError):
        LogLimits(-1, 10)


def test_a_new_table_in_the_log_is_in_the_catalog() -> None:
    _, trees = _trees(LogLimits())
    trees.commit_wave(1, {"fresh": {b"k": b"v"}})
    assert trees.tables() == ["fresh"]
    reopened = TreeWaveStore(trees.ebs)
    assert reopened.tables() == ["fresh"] and reopened.get("fresh", b"k") == b"v"


def test_close_folds_the_log(tmp_path: Path) -> None:
    location = str(tmp_path / "db.sqlite")
    with persist.open(location, "pw", **WEAK) as db:  # type: ignore[arg-type]
        db.table("t")["a"] = 1
        db.commit_wait()
        assert len(db._trees.log) == 1
    with persist.open(location, "pw", **WEAK) as db:  # type: ignore[arg-type]
        assert len(db._trees.log) == 0 and db.table("t")["a"] == 1
        assert db.verify() == []


def test_read_only_and_crashed_writers_see_the_log(tmp_path: Path) -> None:
    """A writer that dies (os._exit: no close, no fold) leaves its commits in the log."""
    location = str(tmp_path / "db.sqlite")
    script = textwrap.dedent(
        f"""
        import os, persist
        from persist.ebs import KdfParams
        db = persist.open({location!r}, "pw", kdf=KdfParams.weak_for_tests(),
                          allow_weak_kdf=True, freshness=False)
        t = db.table("t")
        for i in range(20):
            t[i] = "v%d" % i
            db.commit_wait()
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    store = open_store(location, read_only=True)
    ebs = EncryptedStore.open(store, "pw", allow_weak_kdf=True, freshness=False)
    log = RootLog.load(ebs.root.catalog[LOG_DESCRIPTOR], ebs.table(LOG_DESCRIPTOR).read_row)
    assert len(log) == 20 and log.segments < 20  # the newest ride in the root (its tail)
    assert log.tail
    store.close()
    with persist.open(location, "pw", read_only=True, **WEAK) as db:  # type: ignore[arg-type]
        assert dict(db.table("t").items()) == {i: f"v{i}" for i in range(20)}
        assert db.verify() == []
        assert len(db._trees.log) == 20  # read-only: nothing folded on close
    with persist.open(location, "pw", **WEAK) as db:  # type: ignore[arg-type]
        assert len(db.table("t")) == 20 and db.verify() == []


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "b"]),
            st.dictionaries(st.binary(min_size=1, max_size=2), st.none() | st.binary(max_size=3)),
            max_size=2,
        ),
        max_size=60,
    )
)
def test_the_layers_read_like_one_dict(waves: list) -> None:  # type: ignore[type-arg]
    """More than 64 keys move the recent layer into the base: reads do not change."""
    log = RootLog()
    model: dict[str, dict[bytes, bytes | None]] = {}
    for changes in waves:
        log, _, _ = log.appended(changes)
        for table, tab in changes.items():
            if tab:
                model.setdefault(table, {}).update(tab)
        assert log.tables == model
        assert len(log) == sum(map(len, model.values())) <= log.bound
        for table in ("a", "b"):
            for key in (b"\0", b"\1", b"\0\1"):
                want = model.get(table, {})
                assert log.lookup(table, key) == ((key in want), want.get(key))


def test_a_master_key_rotation_keeps_the_log(tmp_path: Path) -> None:
    from persist.db.rekey import TreesRekeyer

    location = str(tmp_path / "db.sqlite")
    db = persist.open(location, "pw", root_log=persist.LogLimits(2048), **WEAK)  # type: ignore[arg-type]
    t = db.table("t")
    with db.atomic():  # one wave (max_delay could cut a plain update): folded into the tree
        t.update({i: "tree" for i in range(3000)})
    db.commit_wait()
    for i in range(10):
        t[i] = f"log {i}"
        db.commit_wait()
    assert len(db._trees.log) == 10
    db._trees.fold = lambda: None  # type: ignore[method-assign]  # as after a crash
    db.close()
    store = open_store(location)
    ebs = EncryptedStore.open(store, "pw", allow_weak_kdf=True, freshness=False)
    rotation.rekey(
        ebs, "pw2", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, rekeyer=TreesRekeyer()
    )
    ebs.close()
    store.close()
    with persist.open(location, "pw2", **WEAK) as db:  # type: ignore[arg-type]
        assert len(db._trees.log) == 10
        assert db.verify() == []
        t = db.table("t")
        assert len(t) == 3000 and t[3] == "log 3" and t[2999] == "tree"


def test_over_limit_keys_an_old_store_logged_do_not_break_a_fold() -> None:
    """Keys over MAX_KEY_SIZE in the root log (as an older version let through):
    a delete of one is dropped at the fold; a put is a clear IntegrityError
    (not the tree layer's ValueError), and the log stays committed."""
    from persist.btree import MAX_KEY_SIZE

    big = b"x" * (MAX_KEY_SIZE + 10)
    _kvs, trees = _trees(LogLimits(max_entries=100, max_bytes=100_000))
    trees.commit_wave(1, {"t": {b"a": b"1", big: None}})  # the log takes it (u16 length)
    trees.fold()
    assert trees.log.segments == 0 and not trees.log.tail
    assert trees.get("t", b"a") == b"1" and trees.get("t", big) is None
    trees.commit_wave(2, {"t": {big: b"v", b"b": b"2"}})
    with pytest.raises(IntegrityError, match="holds a key of 1034 bytes"):
        trees.fold()
    assert TreeWaveStore(trees.ebs).get("t", b"b") == b"2"  # nothing lost


def _lone_writer(
    location: str, limits: LogLimits, monkeypatch: pytest.MonkeyPatch, commits: int = 600
) -> tuple[list[tuple[bool, int]], list[int], dict[int, str]]:
    """A tree of 3,000 entries, then ``commits`` one-key commits.  Returns, per
    fold, (whether it folded a piece, tree nodes it wrote), the log's key count
    after every commit, and the model."""
    import persist.db.treestore as treestore

    folds: list[tuple[bool, int]] = []
    written = [0]
    real_apply, real_fold = treestore.apply_batch, TreeWaveStore._fold

    def apply(*a: object, **k: object) -> object:
        root, update = real_apply(*a, **k)  # type: ignore[arg-type]
        written[0] += len(update.puts)
        return root, update

    def fold(self: TreeWaveStore, state: object, changes: object, piece: object = None) -> None:
        written[0] = 0
        real_fold(self, state, changes, piece)  # type: ignore[arg-type]
        folds.append((piece is not None, written[0]))

    monkeypatch.setattr(treestore, "apply_batch", apply)
    monkeypatch.setattr(TreeWaveStore, "_fold", fold)
    rng = random.Random(17)
    model = {i: "tree" for i in range(3000)}
    sizes: list[int] = []
    with persist.open(location, "pw", root_log=limits, **WEAK) as db:  # type: ignore[arg-type]
        t = _filled(db, model)
        for n in range(commits):
            k = rng.randrange(6000)
            t[k] = model[k] = f"v{n}"
            db.commit_wait()
            sizes.append(len(db._trees.log))
        assert dict(t.items()) == model
        assert db.verify() == []
    with persist.open(location, "pw", read_only=True, **WEAK) as db:  # type: ignore[arg-type]
        assert dict(db.table("t").items()) == model
        assert len(db._trees.log) == 0  # close folded everything
    return folds[1:], sizes, model  # the bulk load's fold aside


def test_a_due_log_is_folded_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the log is due, each commit folds one key range of it: far fewer
    nodes per commit than a whole fold, the log stays at its bound, and the
    state is the same (rootlog rule 6)."""
    pieces, sizes, _ = _lone_writer(
        str(tmp_path / "p.db"), LogLimits(max_entries=100, piece_nodes=4), monkeypatch
    )
    whole, whole_sizes, _ = _lone_writer(
        str(tmp_path / "w.db"), LogLimits(max_entries=100, piece_nodes=0), monkeypatch
    )
    piece_folds = [nodes for piece, nodes in pieces[:-1] if piece]  # the last: close's
    assert len(piece_folds) >= 20 and all(piece for piece, _ in pieces[:-1])
    whole_folds = [nodes for _, nodes in whole[:-1]]
    assert whole_folds and min(whole_folds) > 40  # a whole fold rewrites most leaves
    assert max(piece_folds) <= 16 < min(whole_folds)
    assert max(sizes) <= 100 and min(sizes[200:]) >= 80  # the log stays near its bound
    assert max(whole_sizes) <= 100
    # the same total work, give or take: pieces keep the amortization of a fold
    assert sum(piece_folds) <= 2 * sum(whole_folds)


def _log_rows_written(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Per commit of the tree store, the sizes of the log rows it wrote (-1: a row
    it deleted)."""
    from persist.ebs.store import WriteBatch

    per_commit: list[list[int]] = []
    real_commit, real_put = TreeWaveStore.commit_wave, WriteBatch.put_row

    def commit(self: TreeWaveStore, *a: object, **k: object) -> None:
        per_commit.append([])
        real_commit(self, *a, **k)  # type: ignore[arg-type]

    def put_row(self: WriteBatch, table: object, key: bytes, value: bytes, **k: object) -> None:
        if getattr(table, "descriptor", None) == LOG_DESCRIPTOR.encode() and per_commit:
            per_commit[-1].append(len(value))
        real_put(self, table, key, value, **k)  # type: ignore[arg-type]

    real_delete = WriteBatch.delete_row

    def delete_row(self: WriteBatch, table: object, key: bytes, **k: object) -> None:
        if getattr(table, "descriptor", None) == LOG_DESCRIPTOR.encode() and per_commit:
            per_commit[-1].append(-1)  # a deleted row
        real_delete(self, table, key, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeWaveStore, "commit_wave", commit)
    monkeypatch.setattr(WriteBatch, "put_row", put_row)
    monkeypatch.setattr(WriteBatch, "delete_row", delete_row)
    return per_commit


def test_a_piece_masks_its_range_and_rewrites_none_of_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules 6 and 7: a piece writes no copy of what is left of the log (only the
    tail it turns into a row and the wave), the masks hide what it folded, a
    reopened log reads the same, and rows nothing live is left in are deleted."""
    from persist.db import rootlog

    written = _log_rows_written(monkeypatch)
    pieces: list[int] = []  # the commits that folded a piece, by index in ``written``
    real_fold = TreeWaveStore._fold

    def fold(self: TreeWaveStore, state: object, changes: object, piece: object = None) -> None:
        if piece is not None:
            pieces.append(len(written) - 1)
        real_fold(self, state, changes, piece)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeWaveStore, "_fold", fold)
    location = str(tmp_path / "m.db")
    limits = LogLimits(max_entries=2000, fold_nodes=128, tail_bytes=300, piece_nodes=8)
    rng = random.Random(5)
    model = {i: "tree" for i in range(3000)}
    firsts, logs = [], []
    with persist.open(location, "pw", root_log=limits, **WEAK) as db:  # type: ignore[arg-type]
        t = _filled(db, model)
        start = len(written)
        for n in range(1500):
            k = rng.randrange(6000)
            t[k] = model[k] = f"v{n}" + "x" * 100
            db.commit_wait()
            log = db._trees._state.log
            firsts.append(log.first)
            logs.append(log)
            if n % 97 == 0:  # what a reader opening now would read is what is in memory
                ebs = db._trees.ebs
                loaded = RootLog.load(log.meta(), ebs.table(LOG_DESCRIPTOR).read_row)
                assert loaded.tables == log.tables
                assert loaded.meta() == log.meta() and loaded.nbytes == log.nbytes
        assert len(pieces) >= 20 and min(pieces) >= start  # pieces happened
        biggest_log = max(log.nbytes for log in logs)
        # a piece writes a flushed tail (<= tail_bytes, merged) and the wave's row,
        # not what is left of the log
        assert max(sum(max(n, 0) for n in written[i]) for i in pieces) <= 600
        assert biggest_log // 10 > 600
        # rule 7: dead rows go a few per commit, pieces and plain log commits alike
        deletes = [w.count(-1) for w in written[start:]]
        assert sum(deletes) >= max(firsts) and max(deletes) <= rootlog.DROP_ROWS
        assert sum(d for i, d in enumerate(deletes) if i + start not in pieces) > 0
        assert max(firsts) > 0  # rows were dropped (rule 7) ...
        assert max(len(log.masks) for log in logs) < 64  # ... and masks with them
        log = db._trees._state.log
        ebs = db._trees.ebs
        table = ebs.table(LOG_DESCRIPTOR)
        for i in range(log.first):  # ... from the store too
            assert table.read_row(log.generation.to_bytes(8, "big") + i.to_bytes(4, "big")) is None
        assert dict(t.items()) == model
        assert db.verify() == []
    with persist.open(location, "pw", read_only=True, **WEAK) as db:  # type: ignore[arg-type]
        assert dict(db.table("t").items()) == model


def test_a_log_with_many_masks_is_rewritten_as_a_new_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 7's bound: once the masks would pass MAX_MASKS, a piece rewrites what
    is live as the next generation (masks gone), and nothing is lost."""
    import persist.db.rootlog as rootlog

    monkeypatch.setattr(rootlog, "MAX_MASKS", 3)
    limits = LogLimits(max_entries=400, fold_nodes=64, tail_bytes=0, piece_nodes=8)
    rng = random.Random(9)
    model = {i: "tree" for i in range(3000)}
    generations, masks = set(), []
    with persist.open(str(tmp_path / "g.db"), "pw", root_log=limits, **WEAK) as db:  # type: ignore[arg-type]
        t = _filled(db, model)
        for n in range(600):
            k = rng.randrange(6000)
            t[k] = model[k] = f"v{n}"
            db.commit_wait()
            log = db._trees._state.log
            generations.add(log.generation)
            masks.append(len(log.masks))
        assert max(masks) <= 3 and max(masks) >= 1
        assert len(generations) >= 5  # rewrites moved to new generations
        assert dict(t.items()) == model and db.verify() == []


def test_lone_writes_into_a_large_tree_never_run_out_of_masks(tmp_path: Path) -> None:
    """Pieces size themselves so that two rounds of masks fit in MAX_MASKS:
    with the defaults' ratio of ``fold_nodes`` to ``piece_nodes`` (32) in a
    tree where each logged key costs a leaf, pieces of ``piece_nodes`` alone
    took 33 a round, so the masks ran out every two rounds and a piece
    rewrote the whole live log (22-25 ms at the defaults in a tree of
    300,000 keys, against 9 ms for a piece).  Now rows and masks are dropped
    as rounds complete, and the log keeps its generation."""
    from persist.db import rootlog

    limits = LogLimits(max_entries=2000, fold_nodes=256, tail_bytes=300, piece_nodes=8)
    rng = random.Random(11)
    model = {i: "tree" for i in range(20_000)}
    with persist.open(str(tmp_path / "r.db"), "pw", root_log=limits, **WEAK) as db:  # type: ignore[arg-type]
        t = _filled(db, model)
        generations, masks, firsts = set(), [], []
        for n in range(1500):  # about three rounds of the log's cursor
            k = rng.randrange(40_000)
            t[k] = model[k] = f"v{n}"
            db.commit_wait()
            log = db._trees._state.log
            generations.add(log.generation)
            masks.append(len(log.masks))
            firsts.append(log.first)
        assert len(generations) == 1  # no rewrite (and no whole fold)
        assert 0 < max(masks) < rootlog.MAX_MASKS
        assert max(firsts) > 0  # rows were dropped as rounds completed
        assert dict(t.items()) == model and db.verify() == []


@pytest.mark.parametrize(
    "damage",
    ["upto 0", "upto past the rows", "empty range", "first past the rows", "truncated", "chain"],
)
def test_a_malformed_version_3_catalog_entry_is_refused(damage: str) -> None:
    """A version-3 payload that cannot be the writer's is an IntegrityError."""
    from persist.db import rootlog

    rows: dict[bytes, bytes] = {}
    log = RootLog()
    for i in range(4):
        log, key, row = log.appended({"t": {b"k%d" % i: b"v"}})
        rows[key] = row
    piece = rootlog.Piece("t", [b"k0", b"k1"], ((b"", b"k2"),))
    masked, flushed, dropped = log.masked(piece)
    assert flushed is None and dropped == []  # one mask does not cover everything
    assert RootLog.load(masked.meta(), rows.get).tables == {"t": {b"k2": b"v", b"k3": b"v"}}
    header = rootlog._META3.unpack_from(masked.meta())
    version, gen, first, segments, start, chain, count = header
    mask = masked.meta()[rootlog._META3.size :]

    def entry(first: int = first, segments: int = segments, chain: bytes = chain) -> bytes:
        return rootlog._META3.pack(version, gen, first, segments, start, chain, count)

    def one_mask(lo: bytes, hi: bytes, upto: int) -> bytes:
        return rootlog._MASK.pack(1, len(lo), len(hi), upto) + b"t" + lo + hi

    bad = {
        "upto 0": entry() + one_mask(b"", b"k2", 0),
        "upto past the rows": entry() + one_mask(b"", b"k2", 5),
        "empty range": entry() + one_mask(b"k2", b"k2", 4),
        "first past the rows": entry(first=5) + mask,
        "truncated": entry() + mask[:-1],
        "chain": entry(chain=bytes(32)) + mask,
    }[damage]
    with pytest.raises(IntegrityError):
        RootLog.load(bad, rows.get)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), changes_st),
            st.tuples(st.just("piece"), st.integers(0, 5), st.integers(1, 6)),
            st.tuples(st.just("sort"), st.sampled_from(["t", "accounts", "ünïcode"])),
        ),
        max_size=40,
    )
)
def test_the_sorted_keys_a_log_hands_on_are_its_keys_sorted(steps: list) -> None:  # type: ignore[type-arg]
    """The sort hints (an earlier log's sorted keys plus the keys added since)
    give exactly ``sorted(tables)``, through appends, masked pieces and reads."""
    from persist.db import rootlog

    log = RootLog()
    for step in steps:
        if step[0] == "append":
            log, _, _ = log.appended(step[1], tail_bytes=64)
        elif step[0] == "sort":  # a reader's scan: the keys sorted once, for later hints
            tab = log.tables.get(step[1], {})
            assert log.sorted_changes(step[1])[0] == sorted(tab)
        elif log.tables:
            table = sorted(log.tables)[step[1] % len(log.tables)]
            keys = log.sorted_keys(table)  # as a commit chooses its piece: keys alone
            at, take = step[1] % len(keys), min(step[2], len(keys))
            chosen = keys[at : at + take]
            high = keys[at + take] if at + take < len(keys) else None
            piece = rootlog.Piece(table, chosen, ((keys[at], high),))
            if log.can_mask(piece):
                log, _, _ = log.masked(piece)
    for table in ("t", "accounts", "ünïcode"):
        tab = log.tables.get(table, {})
        assert log.sorted_keys(table) == sorted(tab)
        keys, values = log.sorted_changes(table)
        assert keys == sorted(tab) and values == [tab[k] for k in keys]


@given(
    st.lists(st.binary(max_size=2), unique=True),
    st.lists(st.tuples(st.binary(max_size=2), st.none() | st.binary(max_size=2)), max_size=4),
)
def test_the_keys_a_piece_leaves_are_the_keys_outside_its_ranges(
    keys: list[bytes], ranges: list[tuple[bytes, bytes | None]]
) -> None:
    """What a masked log hands on as the piece's table's sorted keys is cut by slices
    from the sorted keys (``_outside``), not by a look-up per key: the same keys."""
    from persist.db.rootlog import _outside

    keys.sort()
    ranges = [(lo, hi) for lo, hi in ranges if hi is None or hi > lo]
    want = [k for k in keys if not any(lo <= k and (hi is None or k < hi) for lo, hi in ranges)]
    assert _outside(keys, ranges) == want
