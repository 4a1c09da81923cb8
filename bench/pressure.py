"""Peak memory while producers outpace the disk (issue 5).

Runs in a child process of its own, so that the peak resident set size belongs
to this experiment alone::

    python -m bench.pressure DIRECTORY SECONDS THREADS [WAVE_MAX_WRITES [CACHE_MIB]]

Producer threads write fresh random pairs into one persist table as fast as
they can, never waiting for durability, for SECONDS; then one ``commit_wait``
drains the queue.  A sampler records the resident set size and the queue of
sealed waves every few milliseconds.  Writes are accepted faster than waves
commit, so the queue fills up to ``max_queued_waves`` and the multiplexer's
back-pressure blocks the producers: memory must stay bounded by the wave caps,
not grow with the amount written.  With the default caps a wave may hold
100,000 writes, so a short run may end before the queue fills; a smaller
WAVE_MAX_WRITES shows the back-pressure at work, and a small CACHE_MIB (the node
cache's byte bound, ``persist.open(cache_bytes=...)``) makes the configured bound
small enough that the commit's own working set shows against it.  Prints one JSON
object.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

import persist
from persist.db.treestore import DEFAULT_CACHE_BYTES
from persist.mux import MuxConfig

from .peers import RAW_KEY
from .workload import KEY_SIZE, SEED, VALUE_SIZE

SAMPLE_SECONDS = 0.005


def high_water_rss() -> int | None:
    """The kernel's peak resident set size of this process (Linux ``VmHWM``), in bytes."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def run(
    directory: Path,
    seconds: float,
    threads: int,
    config: MuxConfig,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> dict[str, Any]:
    proc = psutil.Process()
    db = persist.open(
        str(directory / "store.db"),
        key=RAW_KEY,
        freshness=directory / "freshness.json",
        config=config,
        cache_bytes=cache_bytes,
    )
    table = db.table("bench")
    first = proc.memory_info()
    baseline, baseline_anon = first.rss, first.rss - first.shared
    peak, peak_anon, max_depth = baseline, baseline_anon, 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_anon, max_depth
        while not stop.is_set():
            info = proc.memory_info()
            peak = max(peak, info.rss)
            # anonymous memory alone: the heaps, not pages of mapped files
            peak_anon = max(peak_anon, info.rss - info.shared)
            max_depth = max(max_depth, db.metrics().queue_depth)
            time.sleep(SAMPLE_SECONDS)

    counts = [0] * threads

    def produce(i: int, deadline: float) -> None:
        rng, n = random.Random(SEED * 17 + i), 0
        while time.perf_counter() < deadline:
            for _ in range(100):
                table[rng.randbytes(KEY_SIZE)] = rng.randbytes(VALUE_SIZE)
            n += 100
        counts[i] = n

    sampler = threading.Thread(target=sample, name="bench-sampler")
    sampler.start()
    start = time.perf_counter()
    producers = [
        threading.Thread(target=produce, args=(i, start + seconds), name=f"bench-producer-{i}")
        for i in range(threads)
    ]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    produced = time.perf_counter() - start
    db.commit_wait()
    total = time.perf_counter() - start
    stop.set()
    sampler.join()
    metrics = db.metrics()
    high_water = high_water_rss()
    db.close()
    writes = sum(counts)
    return {
        "threads": threads,
        "writes": writes,
        "bytes_written": writes * (KEY_SIZE + VALUE_SIZE),
        "produce_seconds": produced,
        "drain_seconds": total - produced,
        "accepted_per_second": writes / produced,
        "committed_per_second": writes / total,
        "baseline_rss": baseline,
        "peak_rss": max(peak, high_water or 0),
        "sampled_peak_rss": peak,
        "baseline_anon_rss": baseline_anon,
        "sampled_peak_anon_rss": peak_anon,
        "max_queue_depth": max_depth,
        "waves": metrics.waves_committed,
        "max_writes_per_wave": metrics.max_writes_per_wave,
        "config": {
            "wave_max_writes": config.wave_max_writes,
            "wave_max_bytes": config.wave_max_bytes,
            "max_queued_waves": config.max_queued_waves,
            "max_delay": config.max_delay,
            "cache_bytes": cache_bytes,
        },
    }


def main() -> None:
    directory, seconds, threads = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    config = MuxConfig(wave_max_writes=int(sys.argv[4])) if len(sys.argv) > 4 else MuxConfig()
    cache = int(sys.argv[5]) * 2**20 if len(sys.argv) > 5 else DEFAULT_CACHE_BYTES
    print(json.dumps(run(directory, seconds, threads, config, cache)))


if __name__ == "__main__":
    main()
