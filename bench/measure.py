"""Timing, repeated samples and ratios to a named peer.

A measurement is repeated; the results keep every repeat (``list[float]``), and
the report shows the median with the range of the repeats.  Runs of persist
and of its peer are interleaved (repeat 1 of each, then repeat 2 of each, ...)
so that a drift of the machine hits both; a ratio is therefore computed per
repeat, persist's repeat *i* against the peer's repeat *i*, and reported as the
median and range of those per-repeat ratios.

Every ratio is a *speed* ratio: above 1 means persist is faster (more
operations per second, or less time).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, stamped with the time since the run started."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.perf_counter() - _START


def clocked(fn: Callable[[], T]) -> tuple[T, float]:
    """What one call of ``fn`` returns, and the seconds it takes.

    Garbage left by earlier steps is collected first; the collector stays on
    during the call, since an application runs with it on too.
    """
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (see :func:`clocked`)."""
    return clocked(fn)[1]


def rate(count: int, fn: Callable[[], object]) -> float:
    """Operations per second when one call of ``fn`` performs ``count`` operations."""
    return count / timed(fn)


def read_all(get: Callable[[bytes], object], keys: Iterable[bytes]) -> None:
    """Point-read every key; a missing key is a bug in the adapter, so it raises."""
    for key in keys:
        if get(key) is None:
            raise AssertionError(f"key {key.hex()} missing")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def speed_ratios(ours: list[float], peer: list[float], *, higher_is_better: bool) -> list[float]:
    """Per-repeat speed ratios of ours over the peer (above 1: ours is faster)."""
    pairs = list(zip(ours, peer, strict=False))
    if higher_is_better:
        return [a / b for a, b in pairs]
    return [b / a for a, b in pairs]


def ratio_summary(
    ours: list[float], peer: list[float], *, higher_is_better: bool = True
) -> dict[str, float]:
    return summary(speed_ratios(ours, peer, higher_is_better=higher_is_better))


def collect(results: dict[str, list[float]], name: str, value: float) -> None:
    """Append one repeat's ``value`` to the series ``name``."""
    results.setdefault(name, []).append(value)


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_rate(value: float) -> str:
    """Operations per second, to three significant figures, with a k/M suffix."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def fmt_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def fmt_spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)`` of repeated values."""
    s = summary(values)
    if len(values) == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def fmt_ratio(r: dict[str, Any] | None) -> str:
    """``1.23x (1.10-1.31)``; a dash when there is no ratio."""
    if not r:
        return "-"
    if r["min"] == r["max"]:
        return f"{r['median']:.2f}x"
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
