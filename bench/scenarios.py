"""Scenarios 1, 2 and 5, the memory experiment, and the encrypted-byte-store micro-benchmark.

Each function returns plain data (lists of repeats), ready for JSON; the
report derives medians, spreads and ratios from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import apsw

import persist
from persist.ebs import KdfParams
from persist.mux import MuxConfig

from .measure import clocked, log, rate, read_all, timed
from .peers import PASSPHRASE, RAW_KEY, SQL_SCHEMA, STORES, disk_bytes
from .workload import Dataset, Profile, Scratch
from .writers import SYSTEMS, drive

# -- scenario 1: bulk load, warm and cold point reads, full scan ------------------------------


def bulk(profile: Profile, scratch: Scratch, data: Dataset) -> dict[str, Any]:
    """Every store of :data:`bench.peers.STORES`, ``profile.repeats`` times, interleaved."""
    pairs = data.pairs(0, profile.pairs)
    warm_keys = data.sample_keys(profile.warm_reads, profile.pairs, salt=1)
    cold_keys = data.sample_keys(profile.cold_reads, profile.pairs, salt=2)
    series: dict[str, dict[str, list[float]]] = {
        sid: {"load": [], "warm": [], "cold": [], "scan": [], "disk": [], "disk_as_left": []}
        for sid in STORES
    }
    for r in range(profile.repeats):
        for sid, (_, _, factory) in STORES.items():
            log(f"bulk: {sid}, repeat {r + 1}/{profile.repeats}")
            s = series[sid]
            with scratch.space(sid) as directory:
                kv = factory(directory)
                try:
                    s["load"].append(rate(len(pairs), partial(kv.load, pairs)))
                    read_all(kv.get, warm_keys)  # warm-up pass
                    s["warm"].append(rate(len(warm_keys), partial(read_all, kv.get, warm_keys)))
                    counted, seconds = clocked(kv.scan)
                    if counted != len(pairs):
                        raise AssertionError(f"{sid} scanned {counted}, not {len(pairs)} pairs")
                    s["scan"].append(len(pairs) / seconds)
                    kv.reopen()
                    s["cold"].append(rate(len(cold_keys), partial(read_all, kv.get, cold_keys)))
                finally:
                    kv.close()
                s["disk_as_left"].append(disk_bytes(directory) / len(pairs))
                s["disk"].append(kv.resting_bytes() / len(pairs))
    return {"pairs": len(pairs), "warm_reads": len(warm_keys), "cold_reads": len(cold_keys)} | {
        "stores": series
    }


# -- scenario 2: durable writes from T threads ----------------------------------------------


def durable_writes(profile: Profile, scratch: Scratch) -> dict[str, Any]:
    """Durable writes per second for every system of :data:`bench.writers.SYSTEMS` and T."""
    rates: dict[str, dict[str, list[float]]] = {sid: {} for sid in SYSTEMS}
    facts: dict[str, dict[str, list[dict[str, Any]]]] = {sid: {} for sid in SYSTEMS}
    for r in range(profile.repeats):
        for threads in profile.threads:
            for sid, (_, factory) in SYSTEMS.items():
                with scratch.space(f"{sid}-{threads}") as directory:
                    window = drive(factory(directory, threads), profile.write_seconds, salt=r)
                rates[sid].setdefault(str(threads), []).append(window.rate)
                facts[sid].setdefault(str(threads), []).append(window.facts)
            log(
                f"writes: T={threads}, repeat {r + 1}/{profile.repeats}: "
                + ", ".join(f"{sid} {rates[sid][str(threads)][-1]:.0f}/s" for sid in SYSTEMS)
            )
    return {
        "threads": list(profile.threads),
        "seconds": profile.write_seconds,
        "rates": rates,
        "facts": facts,
    }


#: Wave caps of the memory experiment: the default, and small caps that fill the queue.
#: name -> (wave_max_writes, node cache in MiB), None for the default
PRESSURE_CAPS: dict[str, tuple[int | None, int | None]] = {
    "default caps": (None, None),
    "wave_max_writes=10,000": (10_000, None),
    "wave_max_writes=10,000, cache_bytes=16 MiB": (10_000, 16),
}


def memory_pressure(profile: Profile, scratch: Scratch, threads: int = 4) -> dict[str, Any]:
    """Run :mod:`bench.pressure` in a child process per wave cap; return what each printed."""
    runs: dict[str, Any] = {}
    for name, (cap, cache_mib) in PRESSURE_CAPS.items():
        log(f"pressure: {threads} producers, {name}")
        with scratch.space("pressure") as directory:
            argv = [sys.executable, "-m", "bench.pressure", str(directory)]
            argv += [str(profile.pressure_seconds), str(threads)]
            if cap or cache_mib:
                argv.append(str(cap or MuxConfig().wave_max_writes))
            if cache_mib:
                argv.append(str(cache_mib))
            out = subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        runs[name] = json.loads(out.stdout)
    return runs


# -- scenario 5: open time ------------------------------------------------------------------

OPENS_PER_SAMPLE = 20  # raw-key opens take about a millisecond: time a batch of them
PROBE_KEY, PROBE_VALUE = b"k" * 16, b"v" * 100


def _persist_open(location: Path, freshness: Path, **keying: Any) -> None:
    with persist.open(location, freshness=freshness, **keying) as db:
        if db.table("bench").get(PROBE_KEY) != PROBE_VALUE:
            raise AssertionError("persist lost the probe key")


def _sqlcipher_open(path: Path, pragma: str) -> None:
    from sqlcipher3 import dbapi2

    conn = dbapi2.connect(str(path), isolation_level=None)
    conn.execute(pragma)  # SQLCipher derives the key at the first read, timed here too
    if conn.execute("SELECT v FROM kv WHERE k = ?", (PROBE_KEY,)).fetchone() is None:
        raise AssertionError("sqlcipher3 lost the probe key")
    conn.close()


def _apsw_open(path: Path) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("SELECT v FROM kv WHERE k = ?", (PROBE_KEY,)).fetchone()
    conn.close()


def _make_sql_store(path: Path, pragma: str | None) -> None:
    """A one-pair ``kv`` table, encrypted by SQLCipher under ``pragma`` (None: plain SQLite)."""
    if pragma is None:
        conn: Any = apsw.Connection(str(path))
    else:
        from sqlcipher3 import dbapi2

        conn = dbapi2.connect(str(path), isolation_level=None)
        conn.execute(pragma)
    conn.execute(SQL_SCHEMA)
    conn.execute("INSERT INTO kv VALUES (?, ?)", (PROBE_KEY, PROBE_VALUE))
    conn.close()


def _per_open(fn: Callable[[], None]) -> float:
    """Seconds per call of ``fn``, timed over a batch of calls."""

    def batch() -> None:
        for _ in range(OPENS_PER_SAMPLE):
            fn()

    return timed(batch) / OPENS_PER_SAMPLE


def open_times(profile: Profile, scratch: Scratch) -> dict[str, Any]:
    """Seconds from nothing to one point read answered, by passphrase and by raw key."""
    by_pass = f"PRAGMA key = '{PASSPHRASE}'"
    by_key = f"PRAGMA key = \"x'{RAW_KEY.hex()}'\""
    with scratch.space("open") as d:
        pass_db, key_db = d / "pass.db", d / "key.db"
        pass_fresh, key_fresh = d / "pass-freshness.json", d / "key-freshness.json"
        with persist.open(pass_db, PASSPHRASE, kdf=KdfParams.default(), freshness=pass_fresh) as db:
            db.table("bench")[PROBE_KEY] = PROBE_VALUE
        with persist.open(key_db, key=RAW_KEY, freshness=key_fresh) as db:
            db.table("bench")[PROBE_KEY] = PROBE_VALUE
        _make_sql_store(d / "cipher-pass.db", by_pass)
        _make_sql_store(d / "cipher-key.db", by_key)
        _make_sql_store(d / "plain.db", None)
        # The KDF makes one passphrase open long enough to time alone; the rest are batched.
        cases: dict[str, Callable[[], float]] = {
            "persist-passphrase": partial(
                timed, partial(_persist_open, pass_db, pass_fresh, passphrase=PASSPHRASE)
            ),
            "sqlcipher3-passphrase": partial(
                timed, partial(_sqlcipher_open, d / "cipher-pass.db", by_pass)
            ),
            "persist-key": partial(
                _per_open, partial(_persist_open, key_db, key_fresh, key=RAW_KEY)
            ),
            "sqlcipher3-key": partial(
                _per_open, partial(_sqlcipher_open, d / "cipher-key.db", by_key)
            ),
            "apsw": partial(_per_open, partial(_apsw_open, d / "plain.db")),
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(profile.repeats):
            log(f"open: repeat {r + 1}/{profile.repeats}")
            for name, case in cases.items():
                seconds[name].append(case())
    return {"seconds": seconds}


# -- issue 3: the encrypted byte store micro-benchmark (bench/bench_ebs.py) -----------------


def ebs_micro(profile: Profile) -> dict[str, Any]:
    """Per-row costs from ``bench/bench_ebs.py`` (median of its five timed loops)."""
    from . import bench_ebs

    out: dict[str, Any] = {}
    for size in (100, 4096):
        log(f"ebs: rows of {size} bytes")
        out[str(size)] = bench_ebs.row_costs(size, profile.ebs_ops)
    return {"seconds_per_row": out}
