"""Scenarios 3 and 4: cost against store size, and verify against a full scan.

Scenario 3 grows one store per system through the sizes of the profile
(10^4, 10^5, 10^6 keys), each step one durable bulk transaction, and at each
size measures warm random point reads and the cost of one durable single-write
commit.  The stores stay open side by side so that the repeats of the systems
interleave.  Growing is done once (it is not what is measured); the
measurements at each size are repeated.

Scenario 4 reuses persist's store at the largest size: ``db.verify()`` against
a full ordered scan of the same table, both after a reopen (cold: every node
read and decrypted from the store, as verify does) and warm.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .measure import clocked, log, rate, read_all, timed
from .peers import KV, ApswKV, PersistKV, SqlcipherKV
from .workload import Dataset, Profile, Scratch, fresh_pairs

#: Systems grown through the sizes: persist and the named peer, plus plain SQLite.
SCALING_STORES = ("persist-sqlite", "sqlcipher3", "apsw")


def _open(sid: str, scratch: Scratch) -> KV:
    directory = scratch.place(f"scaling-{sid}")
    if sid == "persist-sqlite":
        return PersistKV(directory, "sqlite")
    if sid == "sqlcipher3":
        return SqlcipherKV(directory)
    return ApswKV(directory)


def _commit_each(kv: KV, pairs: list[tuple[bytes, bytes]]) -> None:
    """One durable single-write transaction per pair."""
    for key, value in pairs:
        kv.put_durable(key, value)


def scaling(profile: Profile, scratch: Scratch, data: Dataset) -> tuple[dict[str, Any], KV]:
    """Reads and commit cost per size; returns the results and persist's grown store."""
    stores = {sid: _open(sid, scratch) for sid in SCALING_STORES}
    results: dict[str, Any] = {
        "sizes": list(profile.sizes),
        "grow_seconds": {sid: [] for sid in stores},
        "reads": {sid: {} for sid in stores},
        "commit_seconds": {sid: {} for sid in stores},
    }
    done = 0
    for size in profile.sizes:
        pairs = data.pairs(done, size)
        for sid, kv in stores.items():
            log(f"scaling: growing {sid} to {size:,} keys")
            results["grow_seconds"][sid].append(timed(partial(kv.load, pairs)))
        done = size
        keys = data.sample_keys(profile.warm_reads, size, salt=size)
        for r in range(profile.repeats):
            log(f"scaling: {size:,} keys, repeat {r + 1}/{profile.repeats}")
            extra = fresh_pairs(profile.commits, salt=size * 10 + r)
            for sid, kv in stores.items():
                read_all(kv.get, keys)  # warm-up pass
                reads = rate(len(keys), partial(read_all, kv.get, keys))
                results["reads"][sid].setdefault(str(size), []).append(reads)

                per_commit = timed(partial(_commit_each, kv, extra)) / len(extra)
                results["commit_seconds"][sid].setdefault(str(size), []).append(per_commit)
    persist_store = stores.pop("persist-sqlite")
    for kv in stores.values():
        kv.close()
    return results, persist_store


def verify_vs_scan(profile: Profile, kv: KV) -> dict[str, Any]:
    """Entries per second of ``db.verify()`` and of a full scan, on persist's grown store."""
    if not isinstance(kv, PersistKV):
        raise TypeError("verify runs on a persist store")
    entries = len(kv.table)
    series: dict[str, list[float]] = {"verify": [], "scan_cold": [], "scan_warm": []}
    for r in range(profile.repeats):
        log(f"verify: {entries:,} entries, repeat {r + 1}/{profile.repeats}")
        kv.reopen()
        issues, seconds = clocked(kv.db.verify)
        series["verify"].append(entries / seconds)
        if issues:
            raise AssertionError(f"verify found problems: {issues[:5]}")
        kv.reopen()
        series["scan_cold"].append(entries / timed(kv.scan))
        series["scan_warm"].append(entries / timed(kv.scan))
    kv.close()
    return {"entries": entries, "rates": series}
