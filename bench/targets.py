"""The performance targets of the layer issues, judged on one run's results.

A target compares a speed ratio (median of the per-repeat ratios, see
:mod:`bench.measure`) with a threshold; "report" targets have no threshold
and only state a figure.  The reasons for a miss are written in the report
(:mod:`bench.report`), next to the measurements that explain them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from persist.db.treestore import DEFAULT_CACHE_BYTES

from .measure import ratio_summary, summary
from .workload import KEY_SIZE, VALUE_SIZE

#: Python's memory per pending write besides its key and value: the wave's dictionary
#: entry (measured with tracemalloc over 100,000 entries of 16 + 100 bytes).
WAVE_ENTRY_OVERHEAD = 118
#: The back-pressure run whose configured bound is small enough to judge against.
SMALL_CAPS = "wave_max_writes=10,000, cache_bytes=16 MiB"


def configured_bound(run: dict[str, Any]) -> float:
    """What a back-pressure run's configuration bounds, in bytes: ``max_queued_waves``
    sealed waves and the open one, each at its cap (writes, or payload bytes) at the
    real cost of a pending write, plus the node cache's byte bound."""
    cfg = run["config"]
    payload = KEY_SIZE + VALUE_SIZE
    writes = min(cfg["wave_max_writes"], cfg["wave_max_bytes"] / payload)
    waves = (cfg["max_queued_waves"] + 1) * writes * (payload + WAVE_ENTRY_OVERHEAD)
    # (results recorded before the cache was reported ran with the default)
    return float(waves + cfg.get("cache_bytes", DEFAULT_CACHE_BYTES))


@dataclass(frozen=True)
class Verdict:
    key: str
    issue: int
    target: str
    ratio: dict[str, float] | None  # median/min/max; None for report-only figures
    threshold: float | None
    figure: str = ""  # a measured figure for report-only targets

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.threshold is None:
            return None
        return self.ratio["median"] >= self.threshold


def _bulk_ratio(results: dict[str, Any], metric: str) -> dict[str, float]:
    stores = results["bulk"]["stores"]
    return ratio_summary(stores["persist-sqlite"][metric], stores["sqlcipher3"][metric])


def _writes_ratio(results: dict[str, Any], ours: str, peer: str, threads: int) -> dict[str, float]:
    rates = results["writes"]["rates"]
    return ratio_summary(rates[ours][str(threads)], rates[peer][str(threads)])


def judge(results: dict[str, Any]) -> list[Verdict]:
    """Every target whose scenario ran."""
    out: list[Verdict] = []
    if "bulk" in results:
        stores = results["bulk"]["stores"]
        n = results["bulk"]["pairs"]
        out += [
            Verdict(
                "bulk",
                4,
                f"bulk load of {n:,} pairs ≥ 2.5x sqlcipher3",
                _bulk_ratio(results, "load"),
                2.5,
            ),
            Verdict(
                "warm", 4, "warm point reads ≥ 2x sqlcipher3", _bulk_ratio(results, "warm"), 2.0
            ),
            Verdict("scan", 4, "full scan ≥ 1x sqlcipher3", _bulk_ratio(results, "scan"), 1.0),
        ]
        ours = summary(stores["persist-sqlite"]["disk"])["median"]
        peer = summary(stores["sqlcipher3"]["disk"])["median"]
        out.append(
            Verdict(
                "disk",
                4,
                "bytes on disk per pair, against sqlcipher3",
                None,
                None,
                f"{ours:.0f} B vs {peer:.0f} B ({ours / peer:.2f}x)",
            )
        )
    if "scaling" in results:
        sizes = results["scaling"]["sizes"]
        reads = results["scaling"]["reads"]["persist-sqlite"]
        small, large = str(sizes[0]), str(sizes[-1])
        out.append(
            Verdict(
                "reads-scale",
                4,
                f"point reads/s at {int(large):,} keys ≥ 0.6x those at {int(small):,}",
                ratio_summary(reads[large], reads[small]),
                0.6,
            )
        )
    if "writes" in results:
        threads = results["writes"]["threads"]
        top, one = max(threads), min(threads)
        out += [
            Verdict(
                "t64-apsw",
                5,
                f"T={top}: persist (SQLite) ≥ 3x naive apsw",
                _writes_ratio(results, "persist-sqlite", "apsw", top),
                3.0,
            ),
            Verdict(
                "t64-zodb",
                5,
                f"T={top}: persist (SQLite) ≥ 20x ZODB",
                _writes_ratio(results, "persist-sqlite", "zodb", top),
                20.0,
            ),
            Verdict(
                "t64-leveldb",
                5,
                f"T={top}: persist (LevelDB) ≥ 0.5x LevelDB group commit",
                _writes_ratio(results, "persist-leveldb", "plyvel-group", top),
                0.5,
            ),
            Verdict(
                "t1-apsw",
                5,
                f"T={one}: persist (SQLite) ≥ 0.7x naive apsw",
                _writes_ratio(results, "persist-sqlite", "apsw", one),
                0.7,
            ),
        ]
    if "pressure" in results:
        p = next(iter(results["pressure"].values()))  # the default configuration
        grown = (p["peak_rss"] - p["baseline_rss"]) / 2**20
        out.append(
            Verdict(
                "memory",
                5,
                "peak memory while producers outpace the disk",
                None,
                None,
                f"+{grown:.0f} MiB while {p['bytes_written'] / 2**20:.0f} MiB were written "
                "(default caps; see scenario 2)",
            )
        )
    small = results.get("pressure", {}).get(SMALL_CAPS)
    if small is not None:
        grown = small["peak_rss"] - small["baseline_rss"]
        bound = configured_bound(small)
        headroom = bound / max(grown, 1)  # >= 0.5: the growth is within 2x of the bound
        out.append(
            Verdict(
                "pressure_bound",
                17,
                "peak growth under back-pressure ≤ ~2x the configured bound "
                "(10,000-write waves, 16 MiB node cache)",
                {"median": headroom, "min": headroom, "max": headroom},
                0.5,
                f"+{grown / 2**20:.0f} MiB over a {bound / 2**20:.0f} MiB bound "
                f"({grown / bound:.2f}x)",
            )
        )
    if "verify" in results:
        rates = results["verify"]["rates"]
        out.append(
            Verdict(
                "verify",
                7,
                f"verify of {results['verify']['entries']:,} entries ≥ 0.5x a full "
                "ordered scan (cold)",
                ratio_summary(rates["verify"], rates["scan_cold"]),
                0.5,
            )
        )
    return out
