"""Issue 4: table views decode in runs; they must equal a sorted dict model in every shape.

Runs grow from 4 entries and shrink for large values; their decoding takes
the C-level paths for plain byte strings and text and falls back per entry
otherwise.  Each test mixes what selects the paths: committed and pending
entries, byte keys with 0x00, mixed key types, large (blob) values, values
that are not plain.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import persist
from persist.ebs import KdfParams

WEAK = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True}


def check_views(t: persist.Table, model: dict[Any, Any], bounds: list[Any]) -> None:
    ordered = sorted(model.items())
    assert list(t.items()) == ordered
    assert list(reversed(t.items())) == ordered[::-1]
    assert list(t) == [k for k, _ in ordered]
    assert list(t.values(reverse=True)) == [v for _, v in ordered][::-1]
    for start in bounds:
        for stop in bounds:
            want = [(k, v) for k, v in ordered if start <= k < stop]
            assert list(t.items(start, stop)) == want
            assert list(t.items(start, stop, reverse=True)) == want[::-1]
            assert list(t.keys(start, stop)) == [k for k, _ in want]
            assert len(t.items(start, stop)) == len(want)


def test_views_of_plain_and_mixed_entries(tmp_path: Path) -> None:
    rng = random.Random(4)
    with persist.open(str(tmp_path / "s.db"), "pw", **WEAK) as db:
        binary, text = db.table("binary"), db.table("text")
        model_b: dict[bytes, Any] = {}
        model_t: dict[str, Any] = {}
        for i in range(3_000):
            key = rng.randbytes(rng.randrange(0, 6))  # many hold 0x00
            value: Any = rng.randbytes(rng.choice([0, 5, 30, 100, 300, 5_000]))
            if i % 97 == 0:
                value = {"not": "plain", "n": i}
            elif i % 89 == 0:
                value = "tëxt" * (i % 70)
            model_b[key] = binary[key] = value
            skey = "k\x00é" * (i % 3) + str(i)
            model_t[skey] = text[skey] = "v" * (i % 300)
        db.commit_wait()
        for i in range(200):  # pending entries over committed ones
            key = rng.randbytes(3)
            model_b[key] = binary[key] = b"pending" * (i % 50)
        check_views(binary, model_b, [b"", b"\x00", b"\x80", b"\xff\xff"])
        check_views(text, model_t, ["", "1", "k", "k\x00", "z"])


def test_views_of_tuple_and_int_keys(tmp_path: Path) -> None:
    with persist.open(str(tmp_path / "s.db"), "pw", **WEAK) as db:
        t = db.table("t")
        model: dict[Any, Any] = {}
        for i in range(-300, 300):
            model[(i, "x")] = t[(i, "x")] = i * 3
        check_views(t, model, [(-1000,), (0, ""), (0, "y"), (299, "x"), (500,)])
        n = db.table("n")
        ints = {i * 7919: b"%d" % i for i in range(-500, 500)}
        for k, v in ints.items():
            n[k] = v
        check_views(n, ints, [-(2**70), -1, 0, 7919, 2**70])


def _churn(
    t: persist.Table, model: dict[bytes, Any], rng: random.Random, writes: int, sizes: list[int]
) -> None:
    """``writes`` random writes to ``t`` and ``model``: deletes of present keys, else puts."""
    for _ in range(writes):
        key = b"%05d" % rng.randrange(20_000)
        if key in model and rng.random() < 0.4:
            del t[key]
            del model[key]
        else:
            model[key] = t[key] = rng.randbytes(rng.choice(sizes))


def test_views_over_trees_log_and_pending_at_once(tmp_path: Path) -> None:
    """A forward iteration takes the trees' leaves as runs of columns and lays the
    root log, then the pending waves, over them: entries of all three layers, with
    overwrites and deletes of each lower layer's keys and blob values among them."""
    rng = random.Random(17)
    with persist.open(str(tmp_path / "s.db"), "pw", **WEAK) as db:
        t = db.table("t")
        model: dict[bytes, Any] = {}
        for _ in range(4_000):
            key = b"%05d" % rng.randrange(20_000)
            model[key] = t[key] = rng.randbytes(rng.choice([3, 40, 300]))  # 300: a blob
        db.commit_wait()
        db._trees.fold()
        assert db._trees.tree("t") is not None and not db._trees.log.tables.get("t")
        for _ in range(6):  # small waves: the root log, over the folded tree
            _churn(t, model, rng, 40, [5, 400])
            db.commit_wait()
        assert db._trees.log.tables.get("t")
        with db.atomic():  # pending: over the log and the tree, not committed yet
            _churn(t, model, rng, 60, [7])
            check_views(t, model, [b"", b"0", b"05", b"10000", b"19999", b"3"])
        db.commit_wait()
        check_views(t, model, [b"", b"07", b"12345", b"3"])
        t.clear()
        db.commit_wait()
        assert list(t.items()) == [] and list(t.items(b"1", b"2")) == []
