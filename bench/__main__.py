"""``python -m bench``: run the benchmark suite and write its report.

    .venv/bin/python -m bench                 # the full run (about 9 minutes on 2 cores)
    .venv/bin/python -m bench --quick         # every scenario at small sizes (about a minute)
    .venv/bin/python -m bench --max-size 100000   # skip the 10^6-key step
    .venv/bin/python -m bench --report-only   # re-render docs from bench/results/latest.json

The full run writes bench/results/latest.json, docs/benchmarks.md and
docs/benchmarks/*.png; ``--quick`` writes bench/results/quick.{json,md} and
bench/results/quick/*.png instead, and ``--only`` or ``--max-size``
bench/results/partial.*, so that only a complete run replaces the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import plots, report, scaling, scenarios
from .measure import log
from .workload import (
    BENCH_DIR,
    DEFAULT_SCRATCH,
    FULL,
    QUICK,
    REPO_DIR,
    Dataset,
    Profile,
    Scratch,
    machine_facts,
)

Step = Callable[[Profile, Scratch, Dataset], dict[str, Any]]


def _scaling_and_verify(profile: Profile, scratch: Scratch, data: Dataset) -> dict[str, Any]:
    grown, store = scaling.scaling(profile, scratch, data)
    return {"scaling": grown, "verify": scaling.verify_vs_scan(profile, store)}


#: The scenarios in the order they run; each returns its part of the results.
STEPS: dict[str, Step] = {
    "bulk": lambda p, s, d: {"bulk": scenarios.bulk(p, s, d)},
    "writes": lambda p, s, d: {"writes": scenarios.durable_writes(p, s)},
    "pressure": lambda p, s, d: {"pressure": scenarios.memory_pressure(p, s)},
    "scaling": _scaling_and_verify,
    "open": lambda p, s, d: {"open": scenarios.open_times(p, s)},
    "ebs": lambda p, s, d: {"ebs": scenarios.ebs_micro(p)},
    "postgres": lambda p, s, d: _postgres().step(p, s, d),
}


def _postgres() -> Any:
    """bench/postgres.py, imported only when used (it needs psycopg and a server)."""
    from . import postgres

    return postgres


def _paths(quick: bool, partial: bool) -> tuple[Path, Path, Path]:
    """(results JSON, report Markdown, plot directory) for the kind of run.

    Only a full run of every scenario writes the committed report; a quick or
    partial run writes beside it under bench/results/ (ignored by git).
    """
    results = BENCH_DIR / "results"
    if quick or partial:
        name = "quick" if quick else "partial"
        return results / f"{name}.json", results / f"{name}.md", results / name
    docs = REPO_DIR / "docs"
    return results / "latest.json", docs / "benchmarks.md", docs / "benchmarks"


def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = (QUICK if args.quick else FULL).capped(args.max_size)
    only = args.only.split(",") if args.only else list(STEPS)
    unknown = set(only) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scratch = Scratch(args.scratch)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "profile": asdict(profile),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        results["machine"] = machine_facts(scratch.root)
        log(f"profile {profile.name}; fsync {results['machine']['fsync_seconds'] * 1e3:.3f} ms")
        data = Dataset(max(profile.pairs, *profile.sizes))
        durations: dict[str, float] = {}
        for name in (n for n in STEPS if n in only):
            t0 = time.perf_counter()
            results.update(STEPS[name](profile, scratch, data))
            durations[name] = time.perf_counter() - t0
            log(f"{name} done in {durations[name]:.0f} s")
        results["durations"] = durations
    finally:
        scratch.remove()
    results["seconds"] = time.perf_counter() - started
    return results


def render(results: dict[str, Any], markdown: Path, plot_dir: Path) -> None:
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = plots.draw_all(results, plot_dir)
    rel = {name: path.relative_to(markdown.parent).as_posix() for name, path in figures.items()}
    text = report.render(results, rel)
    if "postgres" in results:
        text = _postgres().splice(text, _postgres().section(results))
    markdown.write_text(text, encoding="utf-8")
    log(f"wrote {markdown} and {len(figures)} plots in {plot_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--max-size", type=int, help="skip scaling steps above this many keys")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(STEPS)}")
    parser.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH, help="scratch directory")
    parser.add_argument("--report-only", action="store_true", help="re-render from saved JSON")
    args = parser.parse_args()
    json_path, markdown, plot_dir = _paths(args.quick, bool(args.only or args.max_size))
    if args.report_only:
        results = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        results = run(args)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(json_path)
        log(f"wrote {json_path} after {results['seconds']:.0f} s")
    render(results, markdown, plot_dir)


if __name__ == "__main__":
    main()
