"""The persist benchmark suite: persist against what a user would otherwise pick.

Run it with one command from the repository root::

    python3 -m venv .venv && .venv/bin/pip install -q -e '.[bench]' && .venv/bin/python -m bench

It writes ``bench/results/latest.json`` (raw measurements), ``docs/benchmarks.md``
(tables, targets, interpretation) and ``docs/benchmarks/*.png`` (plots).
``--quick`` runs every scenario at small sizes as a smoke test.

Modules, one concept each:

* :mod:`bench.workload` -- run profiles, the seeded data set, the scratch directory;
* :mod:`bench.measure` -- timing, repeated samples, ratios to a peer;
* :mod:`bench.peers` -- one small adapter per store (persist and its peers);
* :mod:`bench.writers` -- durable writes from many threads;
* :mod:`bench.pressure` -- peak memory while producers outpace the disk (child process);
* :mod:`bench.scenarios` -- bulk load / reads / scan, open time, the ebs micro-benchmark;
* :mod:`bench.scaling` -- reads and commit cost against store size, verify against a scan;
* :mod:`bench.targets` -- the layer issues' targets, judged on the results;
* :mod:`bench.report` and :mod:`bench.plots` -- ``docs/benchmarks.md`` and its figures.
"""
