"""What is measured, on what data, where: run profiles, the seeded data set, scratch space.

Every scenario uses 16-byte keys and 100-byte values drawn from one seeded
generator, so every store sees the same pairs in the same order, and a rerun
sees them again.  Stores live in a scratch directory on the disk that holds the
repository (not ``/tmp``, which may be a RAM disk where ``fsync`` costs nothing).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KEY_SIZE = 16
VALUE_SIZE = 100
SEED = 20_240_508

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_SCRATCH = BENCH_DIR / ".scratch"

#: Distributions whose versions go into the results.
PACKAGES = (
    "persist",
    "apsw",
    "plyvel",
    "cryptography",
    "argon2-cffi",
    "cbor2",
    "sqlcipher3-binary",
    "sqlitedict",
    "ZODB",
    "BTrees",
    "matplotlib",
    "psutil",
)


@dataclass(frozen=True)
class Profile:
    """The sizes of one run; ``FULL`` is the documented one, ``QUICK`` a smoke test."""

    name: str
    pairs: int  # scenario 1: pairs bulk-loaded
    warm_reads: int  # random point reads per warm measurement
    cold_reads: int  # random point reads right after reopening
    repeats: int  # every measurement is repeated this often
    threads: tuple[int, ...]  # scenario 2: commit-waiting threads
    write_seconds: float  # scenario 2: length of one timed window
    pressure_seconds: float  # producers outpacing the disk
    sizes: tuple[int, ...]  # scenario 3: store sizes
    commits: int  # scenario 3: single-write commits per measurement
    ebs_ops: int  # bench_ebs.py: row operations per timed loop

    def capped(self, max_size: int | None) -> Profile:
        """This profile without the store sizes above ``max_size``."""
        if max_size is None:
            return self
        sizes = tuple(s for s in self.sizes if s <= max_size) or (min(self.sizes),)
        return Profile(**{**asdict(self), "sizes": sizes})


FULL = Profile(
    name="full",
    pairs=200_000,
    warm_reads=20_000,
    cold_reads=5_000,
    repeats=3,
    threads=(1, 4, 16, 64),
    write_seconds=2.0,
    pressure_seconds=6.0,
    sizes=(10_000, 100_000, 1_000_000),
    commits=200,
    ebs_ops=20_000,
)

QUICK = Profile(
    name="quick",
    pairs=20_000,
    warm_reads=4_000,
    cold_reads=1_000,
    repeats=2,
    threads=(1, 4, 16, 64),
    write_seconds=0.4,
    pressure_seconds=1.5,
    sizes=(1_000, 10_000, 50_000),
    commits=40,
    ebs_ops=2_000,
)


class Dataset:
    """``n`` distinct random pairs, and reproducible random picks among them."""

    def __init__(self, n: int, seed: int = SEED) -> None:
        rng = random.Random(seed)
        keys: dict[bytes, None] = {}
        while len(keys) < n:
            keys[rng.randbytes(KEY_SIZE)] = None
        self.keys = list(keys)
        self.values = [rng.randbytes(VALUE_SIZE) for _ in range(n)]
        self.seed = seed

    def pairs(self, start: int = 0, stop: int | None = None) -> list[tuple[bytes, bytes]]:
        stop = len(self.keys) if stop is None else stop
        return list(zip(self.keys[start:stop], self.values[start:stop], strict=True))

    def sample_keys(self, count: int, among: int, salt: int = 0) -> list[bytes]:
        """``count`` keys drawn uniformly (with replacement) from the first ``among``."""
        rng = random.Random(self.seed * 1_000 + salt)
        return [self.keys[rng.randrange(among)] for _ in range(count)]


def fresh_pairs(count: int, salt: int) -> list[tuple[bytes, bytes]]:
    """Pairs with new random keys (for writes into an existing store)."""
    rng = random.Random(SEED * 7 + salt)
    return [(rng.randbytes(KEY_SIZE), rng.randbytes(VALUE_SIZE)) for _ in range(count)]


class Scratch:
    """A scratch directory; :meth:`place` hands out fresh, empty sub-directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._serial = 0
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

    def place(self, label: str) -> Path:
        self._serial += 1
        path = self.root / f"{self._serial:04d}-{label}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def space(self, label: str) -> Iterator[Path]:
        """A fresh sub-directory, removed when the block ends."""
        path = self.place(label)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fsync_latency(directory: Path, rounds: int = 200) -> float:
    """Median seconds of one 4 KiB append + ``fdatasync`` in ``directory``."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    samples = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(fd, b"\0" * 4096)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return samples[len(samples) // 2]


def thread_round_trip(rounds: int = 2000) -> float:
    """Median seconds for one thread to wake another and be woken back (two locks).

    The least a hand-off to a persistence thread and back can cost here: a
    lone writer's commit-wait pays it on every commit.
    """
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def other() -> None:
        for _ in range(rounds):
            ping.acquire()
            pong.release()

    partner = threading.Thread(target=other, name="bench-round-trip")
    partner.start()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        ping.release()
        pong.acquire()
        samples.append(time.perf_counter() - start)
    partner.join()
    samples.sort()
    return samples[len(samples) // 2]


def revision() -> str:
    """The repository's commit, marked when persist/ has uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "persist"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} with uncommitted changes in persist/" if dirty else head


def machine_facts(scratch: Path) -> dict[str, Any]:
    """What the ratios were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    import apsw
    import plyvel

    versions["SQLite (apsw)"] = apsw.sqlite_lib_version()
    versions["LevelDB"] = str(plyvel.__leveldb_version__)
    with contextlib.suppress(ImportError):
        from sqlcipher3 import dbapi2

        conn = dbapi2.connect(":memory:")
        versions["SQLCipher"] = str(conn.execute("PRAGMA cipher_version").fetchone()[0])
        conn.close()
    return {
        "revision": revision(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fsync_seconds": fsync_latency(scratch),
        "round_trip_seconds": thread_round_trip(),
        "versions": versions,
    }
