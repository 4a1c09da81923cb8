"""``persist demo``: the README's main job, on the embedded SQLite default.

It creates an encrypted store (real Argon2id defaults), runs several mutator
threads that make atomic transfers between accounts and commit-wait after
each, shows progress and a summary (waves, writes per wave, throughput),
reopens the store, checks that the total balance is unchanged, and verifies
every row.  Exit status 0 when all of that holds, 1 otherwise.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

import click

from .. import db as persist_db
from ..ebs import KdfParams

ACCOUNTS = 200
START_BALANCE = 1_000
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a demo; real ones come from a prompt


@click.command()
@click.option(
    "--location",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file to create (default: a new temporary file).  Its freshness "
    "record goes where every store's does: the user's state directory.",
)
@click.option("--threads", default=8, show_default=True, help="Mutator threads.")
@click.option("--transfers", default=250, show_default=True, help="Transfers per thread.")
@click.option("--fast-kdf", is_flag=True, help="Use the weak test KDF profile (tests only).")
def demo(location: str | None, threads: int, transfers: int, fast_kdf: bool) -> None:
    """Atomic, durable transfers between accounts in an encrypted store."""
    # The freshness record must not live beside the store: whoever can roll the
    # store back could roll the record back with it.  A store of the user's
    # keeps it in the user's state directory (the default); a temporary store
    # gets a temporary state directory of its own, elsewhere.
    tmp = state = None
    freshness: str | None = None
    if location is None:
        tmp = tempfile.TemporaryDirectory(prefix="persist-demo-")
        state = tempfile.TemporaryDirectory(prefix="persist-demo-state-")
        location = str(Path(tmp.name) / "demo.db")
        freshness = str(Path(state.name) / "freshness.json")
    kdf = KdfParams.weak_for_tests() if fast_kdf else KdfParams.default()
    opts: dict[str, object] = {"allow_weak_kdf": fast_kdf, "freshness": freshness}
    try:
        ok = _run(location, kdf, opts, threads, transfers)
    finally:
        for directory in (tmp, state):
            if directory is not None:
                directory.cleanup()
    if not ok:
        raise SystemExit(1)


def _run(
    location: str, kdf: KdfParams, opts: dict[str, object], threads: int, transfers: int
) -> bool:
    click.echo(
        f"creating an encrypted store at {location} (Argon2id t={kdf.time_cost}, "
        f"{kdf.memory_kib // 1024} MiB, p={kdf.parallelism})"
    )
    t0 = time.perf_counter()
    db = persist_db.open(location, PASSPHRASE, kdf=kdf, **opts)  # type: ignore[arg-type]
    click.echo(f"opened in {time.perf_counter() - t0:.2f} s")
    accounts = db.table("accounts")
    with db.atomic():
        for i in range(ACCOUNTS):
            accounts[i] = START_BALANCE
    db.commit_wait()
    expected = ACCOUNTS * START_BALANCE
    locks = [threading.Lock() for _ in range(ACCOUNTS)]
    done = [0]

    def mutator(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(transfers):
            a, b = sorted(rng.sample(range(ACCOUNTS), 2))
            amount = rng.randint(1, 50)
            with locks[a], locks[b], db.atomic():  # locks: the read-modify-write
                accounts[a] -= amount
                accounts[b] += amount
            db.commit_wait()  # durable before we count it
            done[0] += 1

    workers = [threading.Thread(target=mutator, args=(s,)) for s in range(threads)]
    before = db.metrics()
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    with click.progressbar(length=threads * transfers, label="transfers") as bar:
        seen = 0
        while any(w.is_alive() for w in workers):
            time.sleep(0.05)
            bar.update(done[0] - seen)
            seen = done[0]
        bar.update(done[0] - seen)
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    m = db.metrics()
    waves = m.waves_committed - before.waves_committed
    writes = m.writes_committed - before.writes_committed
    click.echo(
        f"{done[0]} durable transfers by {threads} threads in {elapsed:.2f} s: "
        f"{done[0] / elapsed:.0f} transfers/s"
    )
    click.echo(
        f"{waves} commit waves, {writes / max(waves, 1):.1f} writes per wave, "
        f"mean commit {1000 * m.mean_commit_seconds:.1f} ms"
    )
    db.close()

    db = persist_db.open(location, PASSPHRASE, **opts)  # type: ignore[arg-type]
    total = sum(db.table("accounts").values())
    click.echo(
        f"after reopening: total balance {total} (expected {expected}): "
        + ("unchanged" if total == expected else "CHANGED")
    )
    issues = db.verify()
    db.close()
    for issue in issues:
        click.echo(f"verify: {issue}")
    click.echo(
        "verify: every row authenticated, every tree and count checked: intact"
        if not issues
        else f"verify: {len(issues)} problems"
    )
    return total == expected and not issues
