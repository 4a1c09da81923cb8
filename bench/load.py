"""Bulk ingest: ``persist load`` of ROWS rows from 4 CSV files against the peers.

    .venv/bin/python -m bench.load [ROWS] [REPEATS]

The same 4 CSV files (``id,name,n``; ROWS rows in all, default 1,000,000) are
loaded, in one run, by:

* ``persist load`` (in process, through ``persist.cli.main``): 4 producer
  threads, atomic blocks of 10,000 rows, a raw key (no Argon2id); the time
  includes parsing the CSV and the final commit;
* ``sqlite3`` (the standard library) ``executemany`` of the same rows,
  parsed beforehand (parsing not timed), one transaction, WAL,
  ``synchronous=FULL``: plain SQLite's own bulk path;
* ``sqlcipher3``: the same ``executemany``, SQLCipher 4 defaults (its key
  derivation not timed).

Printed as a Markdown table of rows/s per repeat and the ratios.  Not part
of ``python -m bench``; its output goes into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import csv
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .peers import PASSPHRASE, RAW_KEY
from .workload import DEFAULT_SCRATCH

FILES = 4
SCHEMA = "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID"


def write_files(directory: Path, rows: int) -> list[Path]:
    paths = []
    per = rows // FILES
    for f in range(FILES):
        path = directory / f"part{f}.csv"
        with path.open("w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["id", "name", "n"])
            for i in range(f * per, (f + 1) * per):
                w.writerow([f"{(i * 2654435761) % (1 << 32):010d}-{i}", f"name {i}", i])
        paths.append(path)
    return paths


def parsed(paths: list[Path]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in paths:
        with path.open(newline="") as f:
            out.extend((row["id"], row["name"]) for row in csv.DictReader(f))
    return out


def persist_load(directory: Path, paths: list[Path]) -> float:
    import persist
    from persist.cli import main

    key_file = directory / "key"
    key_file.write_bytes(RAW_KEY)
    with persist.open(str(directory / "p.db"), key=RAW_KEY, freshness=False):
        pass
    argv = ["load", str(directory / "p.db"), "t", *map(str, paths), "--key", "id"]
    argv += ["--value", "name", "--key-file", str(key_file), "--no-freshness"]
    start = time.perf_counter()
    main(argv)
    return time.perf_counter() - start


def sql_load(conn: object, rows: list[tuple[str, str]]) -> float:
    c = conn
    c.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]
    c.execute("PRAGMA synchronous=FULL")  # type: ignore[attr-defined]
    c.execute(SCHEMA)  # type: ignore[attr-defined]
    start = time.perf_counter()
    c.execute("BEGIN")  # type: ignore[attr-defined]
    c.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", rows)  # type: ignore[attr-defined]
    c.execute("COMMIT")  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    c.close()  # type: ignore[attr-defined]
    return elapsed


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    DEFAULT_SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="load-", dir=DEFAULT_SCRATCH) as tmp:
        base = Path(tmp)
        paths = write_files(base, rows)
        data = parsed(paths)
        rates: dict[str, list[float]] = {"persist": [], "sqlite3": [], "sqlcipher3": []}
        for r in range(repeats):
            for name in rates:
                d = base / f"{name}-{r}"
                d.mkdir()
                if name == "persist":
                    secs = persist_load(d, paths)
                elif name == "sqlite3":
                    secs = sql_load(sqlite3.connect(d / "s.db", isolation_level=None), data)
                else:
                    from sqlcipher3 import dbapi2

                    conn = dbapi2.connect(str(d / "s.db"), isolation_level=None)
                    conn.execute(f"PRAGMA key = '{PASSPHRASE}'")
                    conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
                    secs = sql_load(conn, data)
                rates[name].append(len(data) / secs)
                print(f"repeat {r + 1}: {name} {len(data) / secs:,.0f} rows/s", file=sys.stderr)
    print("| system | rows/s (median, range) | persist ÷ system |")
    print("| --- | ---: | ---: |")
    for name, rs in rates.items():
        ratios = [p / s for p, s in zip(rates["persist"], rs, strict=True)]
        print(
            f"| {name} | {statistics.median(rs):,.0f} ({min(rs):,.0f}-{max(rs):,.0f}) | "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )


if __name__ == "__main__":
    main()
