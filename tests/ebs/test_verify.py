"""verify_rows: collects every problem, explains every row, names orphans."""

from __future__ import annotations

import os

from persist.ebs import EncryptedStore, Problem
from persist.ebs.keyslot import keyslot_key
from persist.ebs.layout import CHUNK_SIZE
from persist.kvs.base import Store

from .conftest import create

BIG = os.urandom(CHUNK_SIZE * 2)


def _populate(ebs: EncryptedStore) -> list[bytes]:
    table = ebs.table(b"tree:t")
    batch = ebs.batch()
    nodes = [b"leaf 1", b"leaf 2", BIG]
    for node in nodes:
        batch.put_node(table, table.node_id(node), node)
    batch.put_row(table, b"refcount", b"\x02")
    batch.put_row(ebs.table(b"meta"), b"big", BIG)
    ebs.commit(batch, {"tree:t": table.node_id(b"leaf 1")})
    return [table.node_id(n) for n in nodes]


def test_a_healthy_store_has_no_problems(kvs: Store) -> None:
    ebs = create(kvs)
    nids = _populate(ebs)
    assert ebs.verify_rows() == []
    assert ebs.verify_rows({ebs.table(b"tree:t"): nids}) == []


def test_every_problem_is_reported_not_just_the_first(mem: Store) -> None:
    ebs = create(mem)
    nids = _populate(ebs)
    table, meta = ebs.table(b"tree:t"), ebs.table(b"meta")
    chunk_of_big_row = ebs.keyring.table(b"meta").chunk_key(meta.row_key(b"big"), 1)
    mem.write(
        {b"\x01" * 32: b"junk from somewhere"},
        [
            nids[0],  # a reachable node goes missing
            table.row_key(b"refcount"),  # a mutable row goes missing
            chunk_of_big_row,  # a chunk of a row goes missing
            keyslot_key(3),  # absent anyway: not a problem
        ],
    )
    mem.write({keyslot_key(5): b"not a keyslot"})
    problems = ebs.verify_rows({table: nids[:1] + nids[2:]})
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["coverage", "keyslot", "node", "orphan", "orphan", "row"]
    by_kind = {p.kind: p for p in problems}
    assert by_kind["node"].storage_key == nids[0].hex()
    assert "missing" in by_kind["node"].description
    assert by_kind["row"].storage_key == meta.row_key(b"big").hex()
    orphans = {p.storage_key: p.description for p in problems if p.kind == "orphan"}
    assert "no key of this store" in orphans[(b"\x01" * 32).hex()]
    assert "unreferenced node" in orphans[nids[1].hex()]
    assert all(isinstance(p, Problem) and str(p) for p in problems)


def test_without_reachability_nodes_are_not_judged(mem: Store) -> None:
    ebs = create(mem)
    _populate(ebs)
    assert ebs.verify_rows(None) == []
    assert {p.kind for p in ebs.verify_rows({})} == {"orphan"}


def test_a_chunk_whose_head_is_gone_is_named(mem: Store) -> None:
    ebs = create(mem)
    nids = _populate(ebs)
    mem.write((), [nids[2]])  # the chunked node's head
    problems = ebs.verify_rows(None)
    assert len(problems) == 2
    assert all("whose head is gone" in p.description for p in problems)


def test_a_stale_previous_root_is_reported(mem: Store) -> None:
    ebs = create(mem)
    _populate(ebs)
    previous = ebs.keyring.root_slot_key((ebs.root.count - 1) % 2)
    stored = mem.get(previous) or b""
    mem.write({previous: stored[:-1] + bytes([stored[-1] ^ 1])})
    (problem,) = ebs.verify_rows(None)
    assert (problem.kind, problem.storage_key) == ("root", previous.hex())
    mem.write((), [previous])
    assert "missing" in ebs.verify_rows(None)[0].description
