"""``persist demo``: a short, real demonstration on the embedded SQLite default.

Until the application API exists this demonstrates the key-value store layer:
several threads write durable atomic batches ("transfers" that move value
between two account rows in one batch), readers scan consistent snapshots
meanwhile, a second writer is locked out, and after reopening the total is
checked to be unchanged.
"""

from __future__ import annotations

import random
import struct
import tempfile
import threading
import time
from pathlib import Path

import click

from ..errors import StoreLocked
from ..kvs import Store, open_store

ACCOUNTS = 100
START_BALANCE = 1_000


def _balance(store: Store, key: bytes) -> int:
    raw = store.get(key)
    assert raw is not None
    return int(struct.unpack(">q", raw)[0])


def _total(store: Store) -> int:
    return sum(struct.unpack(">q", v)[0] for _, v in store.scan(b"acct/", b"acct0"))


@click.command()
@click.option(
    "--location",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file to use (default: a new temporary file).",
)
@click.option("--threads", default=4, show_default=True, help="Writer threads.")
@click.option("--transfers", default=400, show_default=True, help="Transfers per thread.")
def demo(location: str | None, threads: int, transfers: int) -> None:
    """Demonstrate durable atomic batches on the embedded SQLite store."""
    tmp = None
    if location is None:
        tmp = tempfile.TemporaryDirectory(prefix="persist-demo-")
        location = str(Path(tmp.name) / "demo.db")
    click.echo(f"store: {location} (SQLite, WAL, synchronous=FULL)")
    with open_store(location) as store:
        store.write({b"acct/%04d" % i: struct.pack(">q", START_BALANCE) for i in range(ACCOUNTS)})
        expected = _total(store)
        lock = threading.Lock()  # a read-modify-write needs one; the mux will provide it
        done = [0]
        torn: list[int] = []

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(transfers):
                a, b = (b"acct/%04d" % i for i in rng.sample(range(ACCOUNTS), 2))
                amount = rng.randint(1, 50)
                with lock:
                    puts = {
                        a: struct.pack(">q", _balance(store, a) - amount),
                        b: struct.pack(">q", _balance(store, b) + amount),
                    }
                    store.write(puts)  # one atomic, durable batch
                    done[0] += 1

        def auditor(stop: threading.Event) -> None:
            while not stop.is_set():
                if (t := _total(store)) != expected:  # a snapshot never shows half a transfer
                    torn.append(t)

        stop = threading.Event()
        workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
        audit = threading.Thread(target=auditor, args=(stop,))
        t0 = time.perf_counter()
        audit.start()
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
        stop.set()
        audit.join()
        elapsed = time.perf_counter() - t0
        click.echo(
            f"{done[0]} durable transfers by {threads} threads in {elapsed:.2f} s "
            f"({done[0] / elapsed:.0f}/s); snapshots read meanwhile: all consistent"
            if not torn
            else f"TORN SNAPSHOTS SEEN: {torn[:5]}"
        )
        try:
            open_store(location)
        except StoreLocked as exc:
            click.echo(f"a second writer is refused: {exc}")
    with open_store(location, read_only=True) as store:
        total = _total(store)
    ok = total == expected and not torn
    click.echo(
        f"after reopening: total balance {total} (expected {expected}): "
        + ("unchanged" if ok else "CHANGED")
    )
    if tmp is not None:
        tmp.cleanup()
    if not ok:
        raise SystemExit(1)
