"""What format v2 and ``secure_delete`` cost: the same workloads on three builds, one run.

Run by hand (issue 14 asks for it; the main harness has no notion of an older build)::

    git worktree add /tmp/persist-v1 f575c24     # the release before format v2
    python3 -m venv /tmp/persist-v1/.venv
    /tmp/persist-v1/.venv/bin/pip install -e /tmp/persist-v1
    .venv/bin/python -m bench.format_cost --v1 /tmp/persist-v1/.venv/bin/python

Each configuration runs in its own child process, the configurations alternate
within each repeat (so a noisy neighbour hits them alike), and the report gives
each one's median and range and its ratio to format v1 in the same repeat:

* ``v1``: the release before format v2 (count rows, coverage digests);
* ``v2``: this checkout (count trees, pins before folds, ``secure_delete=ON``);
* ``v2-nosd``: this checkout with SQLite's ``secure_delete`` turned off again.

Workloads on SQLite, durable: a bulk load of 200,000 pairs in one atomic block
(16-byte keys, 20-120-byte values), and durable writes at T=1 and T=64 for a
few seconds each (every thread writes a key and commit-waits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, os, random, sys, tempfile, threading, time
import persist
from persist.ebs import KdfParams
config, workload, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if config == "v2-nosd":
    from persist.kvs import sqlite as backend
    original = backend.SQLiteStore._open_writer
    def no_secure_delete(self, **kw):
        conn = original(self, **kw)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn
    backend.SQLiteStore._open_writer = no_secure_delete
d = tempfile.mkdtemp(dir=os.environ.get("BENCH_SCRATCH"))
db = persist.open(
    d + "/b.db", "pw", kdf=KdfParams.weak_for_tests(), allow_weak_kdf=True, freshness=False
)
t = db.table("t")
rng = random.Random(7)
if workload == "bulk":
    pairs = [(rng.randbytes(16), rng.randbytes(rng.randint(20, 120))) for _ in range(200_000)]
    start = time.perf_counter()
    with db.atomic():
        t.update(pairs)
    db.commit_wait()
    elapsed = time.perf_counter() - start
    rate = len(pairs) / elapsed
else:
    threads = int(workload[1:])
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    def writer(n):
        r = random.Random(n)
        while time.perf_counter() < stop:
            t[r.randbytes(16)] = r.randbytes(60)
            db.commit_wait()
            counts[n] += 1
    start = time.perf_counter()
    ts = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for th in ts: th.start()
    for th in ts: th.join()
    rate = sum(counts) / (time.perf_counter() - start)
db.close()
print(json.dumps({"rate": rate}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.format_cost")
    parser.add_argument("--v1", required=True, help="python of a venv with the v1 release")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/format_cost.json"))
    args = parser.parse_args()
    pythons = {"v1": args.v1, "v2": sys.executable, "v2-nosd": sys.executable}
    workloads = ["bulk", "T1", "T64"]
    runs: dict[str, dict[str, list[float]]] = {w: {c: [] for c in pythons} for w in workloads}
    scratch = tempfile.mkdtemp(prefix="persist-format-cost-")
    for repeat in range(args.repeats):
        for workload in workloads:
            for config, python in pythons.items():
                out = subprocess.run(
                    [python, "-c", _CHILD, config, workload, str(args.seconds)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=scratch,
                    env={"BENCH_SCRATCH": scratch, "PATH": "/usr/bin:/bin"},
                )
                rate = json.loads(out.stdout.strip().splitlines()[-1])["rate"]
                runs[workload][config].append(rate)
                print(f"repeat {repeat} {workload:5} {config:8} {rate:10.0f}/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    print("\n| workload | v1 | v2 (ratio to v1) | v2 without secure_delete (ratio to v1) |")
    print("|---|---:|---:|---:|")
    for workload, by in runs.items():
        cells = [f"{statistics.median(by['v1']):,.0f}/s"]
        for config in ("v2", "v2-nosd"):
            ratios = [a / b for a, b in zip(by[config], by["v1"], strict=True)]
            cells.append(
                f"{statistics.median(by[config]):,.0f}/s "
                f"({statistics.median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(f"| {workload} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
