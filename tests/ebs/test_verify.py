"""The ebs verifier: collects every problem, explains every row, names orphans.

The caller names what the root reaches (nodes, rows), as the tree layer does
(format v2); everything else is an orphan.
"""

from __future__ import annotations

import os

from persist.ebs import EncryptedStore, Problem, Table
from persist.ebs.keyslot import keyslot_key
from persist.ebs.layout import CHUNK_SIZE
from persist.ebs.verify import check_store
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
    ebs.commit(batch, {"tree:t": table.node_id(b"leaf 1"), "meta": b""})
    return [table.node_id(n) for n in nodes]


def _rows(ebs: EncryptedStore) -> dict[Table, list[bytes]]:
    return {ebs.table(b"tree:t"): [b"refcount"], ebs.table(b"meta"): [b"big"]}


def test_a_healthy_store_has_no_problems(kvs: Store) -> None:
    ebs = create(kvs)
    nids = _populate(ebs)
    assert check_store(ebs, {ebs.table(b"tree:t"): nids}, _rows(ebs)) == []


def test_every_problem_is_reported_not_just_the_first(mem: Store) -> None:
    ebs = create(mem)
    nids = _populate(ebs)
    table, meta = ebs.table(b"tree:t"), ebs.table(b"meta")
    chunk_of_big_row = ebs.keyring.table(b"meta").chunk_key(meta.row_key(b"big"), 1)
    mem.write(
        {b"\x01" * 32: b"junk from somewhere"},
        [
            nids[0],  # a reachable node goes missing
            table.row_key(b"refcount"),  # a named row goes missing
            chunk_of_big_row,  # a chunk of a row goes missing
            keyslot_key(3),  # absent anyway: not a problem
        ],
    )
    mem.write({keyslot_key(5): b"not a keyslot"})
    problems = check_store(ebs, {table: nids[:1] + nids[2:]}, _rows(ebs))
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["keyslot", "node", "orphan", "orphan", "row", "row"]
    node = next(p for p in problems if p.kind == "node")
    assert node.storage_key == nids[0].hex() and "missing" in node.description
    rows = {p.storage_key: p.description for p in problems if p.kind == "row"}
    assert rows[table.row_key(b"refcount").hex()] == "missing"
    assert "missing" in rows[meta.row_key(b"big").hex()]  # its chunk
    orphans = {p.storage_key: p.description for p in problems if p.kind == "orphan"}
    assert "no key of this store" in orphans[(b"\x01" * 32).hex()]
    assert "unreferenced node" in orphans[nids[1].hex()]
    assert all(isinstance(p, Problem) and str(p) for p in problems)


def test_what_nothing_names_is_an_orphan(mem: Store) -> None:
    ebs = create(mem)
    _populate(ebs)
    problems = check_store(ebs)
    assert {p.kind for p in problems} == {"orphan"}
    # three node heads and two rows; their chunks go with their heads
    assert len(problems) == 3 + 2


def test_a_chunk_whose_head_is_gone_is_named(mem: Store) -> None:
    ebs = create(mem)
    nids = _populate(ebs)
    mem.write((), [nids[2]])  # the chunked node's head
    problems = check_store(ebs, {ebs.table(b"tree:t"): nids[:2]}, _rows(ebs))
    assert len(problems) == 2
    assert all("whose head is gone" in p.description for p in problems)


def test_a_stale_previous_root_is_reported(mem: Store) -> None:
    ebs = create(mem)
    nids = _populate(ebs)
    named = {ebs.table(b"tree:t"): nids}
    previous = ebs.keyring.root_slot_key((ebs.root.count - 1) % 2)
    stored = mem.get(previous) or b""
    mem.write({previous: stored[:-1] + bytes([stored[-1] ^ 1])})
    (problem,) = check_store(ebs, named, _rows(ebs))
    assert (problem.kind, problem.storage_key) == ("root", previous.hex())
    mem.write((), [previous])
    assert "missing" in check_store(ebs, named, _rows(ebs))[0].description
