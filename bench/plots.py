"""The report's figures (matplotlib, Agg backend): throughput against threads and store size.

Each point is the median of the repeats; the error bars span the fastest and
the slowest repeat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from .measure import summary
from .peers import label
from .writers import SYSTEMS

#: Persist in strong colours and solid lines, peers dashed.
STYLE: dict[str, dict[str, Any]] = {
    "persist-sqlite": {"color": "#d62728", "marker": "o"},
    "persist-sqlite-nofresh": {"color": "#ff9896", "marker": "o"},
    "persist-leveldb": {"color": "#1f77b4", "marker": "s"},
    "persist-mux": {"color": "#ff7f0e", "marker": "o", "linestyle": ":"},
    "apsw": {"color": "#7f7f7f", "marker": "^", "linestyle": "--"},
    "sqlcipher3": {"color": "#2ca02c", "marker": "D", "linestyle": "--"},
    "plyvel": {"color": "#9467bd", "marker": "v", "linestyle": "--"},
    "plyvel-group": {"color": "#17becf", "marker": "P", "linestyle": "--"},
    "zodb": {"color": "#8c564b", "marker": "x", "linestyle": "--"},
    "sqlitedict": {"color": "#bcbd22", "marker": "*", "linestyle": "--"},
}


def _legend_below(ax: Axes, columns: int) -> None:
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=columns)


def _series(ax: Axes, xs: list[int], runs: list[list[float]], sid: str, name: str) -> None:
    stats = [summary(r) for r in runs]
    mid = [s["median"] for s in stats]
    low = [s["median"] - s["min"] for s in stats]
    high = [s["max"] - s["median"] for s in stats]
    ax.errorbar(xs, mid, yerr=[low, high], label=name, capsize=3, **STYLE.get(sid, {}))


def writes_vs_threads(results: dict[str, Any], path: Path) -> None:
    w = results["writes"]
    threads = w["threads"]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    for sid, by_t in w["rates"].items():
        _series(ax, threads, [by_t[str(t)] for t in threads], sid, SYSTEMS[sid][0])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(threads, [str(t) for t in threads])
    ax.set_xlabel("threads, each waiting for its write to be durable")
    ax.set_ylabel("durable writes per second")
    ax.set_title("Durable writes against threads (16-byte keys, 100-byte values)")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(ax, 3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_vs_size(results: dict[str, Any], path: Path) -> None:
    s = results["scaling"]
    sizes = s["sizes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    for sid, by_size in s["reads"].items():
        _series(left, sizes, [by_size[str(n)] for n in sizes], sid, label(sid))
    for sid, by_size in s["commit_seconds"].items():
        runs = [[1 / x for x in by_size[str(n)]] for n in sizes]
        _series(right, sizes, runs, sid, label(sid))
    for ax, title, ylabel in (
        (left, "Warm random point reads", "reads per second"),
        (right, "Single-write durable commits, one thread", "commits per second"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("keys in the store")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bulk_ratios(results: dict[str, Any], path: Path) -> None:
    stores = results["bulk"]["stores"]
    peer = stores["sqlcipher3"]
    metrics = (
        ("load", "bulk load"),
        ("warm", "warm reads"),
        ("cold", "cold reads"),
        ("scan", "full scan"),
    )
    ids = [sid for sid in stores if sid != "sqlcipher3"]
    fig, ax = plt.subplots(figsize=(8.5, 5.4))
    width = 0.8 / len(ids)
    for i, sid in enumerate(ids):
        mids = [summary(stores[sid][m])["median"] / summary(peer[m])["median"] for m, _ in metrics]
        xs = [j + (i - (len(ids) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, mids, width, label=label(sid), color=STYLE[sid]["color"])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(metrics)), [name for _, name in metrics])
    ax.set_ylabel("speed relative to sqlcipher3 (log scale)")
    ax.set_title(f"{results['bulk']['pairs']:,} pairs: speed relative to sqlcipher3")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    _legend_below(ax, 3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Draw every figure whose scenario ran; return their paths by name."""
    figures: dict[str, Path] = {}
    for name, scenario, draw in (
        ("bulk", "bulk", bulk_ratios),
        ("threads", "writes", writes_vs_threads),
        ("size", "scaling", throughput_vs_size),
    ):
        if scenario in results:
            path = directory / f"{name}.png"
            draw(results, path)
            figures[name] = path
    return figures
