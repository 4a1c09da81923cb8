"""Reads from many threads while one thread commits."""

from __future__ import annotations

import threading

from persist.ebs.layout import CHUNK_SIZE
from persist.ebs.verify import check_store
from persist.kvs.base import Store

from .conftest import create


def test_concurrent_reads_during_commits(kvs: Store) -> None:
    ebs = create(kvs)
    table = ebs.table(b"tree:t")
    stable = {b"node %d" % i: table.node_id(b"node %d" % i) for i in range(50)}
    batch = ebs.batch()
    for node, nid in stable.items():
        batch.put_node(table, nid, node)
    for i in range(50):
        batch.put_row(table, b"row %d" % i, b"value %d" % i)
    ebs.commit(batch, {})
    stop = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for node, nid in stable.items():
                    assert table.read_node(nid) == node
                for i in range(50):
                    assert table.read_row(b"row %d" % i) in (b"value %d" % i, b"new %d" % i)
        except BaseException as exc:  # reported below
            failures.append(exc)

    def writer() -> None:
        try:
            for round_ in range(20):
                batch = ebs.batch()
                for i in range(0, 50, 3):
                    batch.put_row(table, b"row %d" % i, b"new %d" % i)
                extra = b"extra %d" % round_
                batch.put_node(table, table.node_id(extra), extra)
                ebs.commit(batch, {"round": b"%d" % round_})
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    write = threading.Thread(target=writer)
    write.start()
    write.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert failures == []
    assert ebs.root.count == 21
    rows = [b"row %d" % i for i in range(50)]
    nodes = [*stable.values(), *(table.node_id(b"extra %d" % r) for r in range(20))]
    assert check_store(ebs, {table: nodes}, {table: rows}) == []


def test_reads_of_a_chunked_row_that_a_commit_rewrites(mem: Store) -> None:
    """Head and chunks are separate gets; a rewrite between them must not look like tampering."""
    ebs = create(mem)
    table = ebs.table(b"meta")
    versions = [bytes([i]) * (2 * CHUNK_SIZE + 1) for i in range(2)]
    batch = ebs.batch()
    batch.put_row(table, b"big", versions[0])
    ebs.commit(batch, {})
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                assert table.read_row(b"big") in versions
                reads[0] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for round_ in range(150):
        batch = ebs.batch()
        batch.put_row(table, b"big", versions[round_ % 2])
        ebs.commit(batch, {})
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == [] and reads[0] > 0
