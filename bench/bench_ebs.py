"""Benchmark of the encrypted byte store; run by hand, results in docs/benchmarks-ebs.md.

    .venv/bin/python bench/bench_ebs.py [--quick]

Measures, in one run so that the machine's speed cancels out of the ratios:

1. Encrypt + decrypt of one row of 100 bytes and of 4 KiB:
   * plain AES-256-GCM (random 96-bit nonce, the AD only) -- the baseline;
   * XAES-256-GCM alone (the per-nonce key derivation is the difference);
   * the ebs row codec: locator hash, framing, Padmé padding, XAES-256-GCM,
     associated data, then open and parse (``rows.seal`` / ``rows.open_head``);
   * the same through a memory kvs store: ``commit`` of 100 rows (each an
     overwrite, so the previous row is read and its coverage element
     subtracted) and ``Table.read_row`` of each, per row.
2. Open time with the default Argon2id parameters (t=3, m=256 MiB, p=4) and
   with a raw 32-byte key.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persist.ebs import EncryptedStore, KdfParams, RowKind
from persist.ebs.keys import KeyRing
from persist.ebs.layout import associated_data
from persist.ebs.rows import open_head, seal
from persist.ebs.xaes import XAES256GCM
from persist.kvs.memory import MemoryStore

ROWS_PER_COMMIT = 100


def per_op(fn: Callable[[], object], ops: int, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timed loops of ``ops`` calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(ops):
            fn()
        samples.append((time.perf_counter() - start) / ops)
    return statistics.median(samples)


def row_costs(size: int, ops: int) -> dict[str, float]:
    value = os.urandom(size)
    key = os.urandom(32)
    ad = associated_data(RowKind.ROW, bytes(32), bytes(32))

    aesgcm = AESGCM(key)

    def plain() -> None:
        nonce = os.urandom(12)
        aesgcm.decrypt(nonce, aesgcm.encrypt(nonce, value, ad), ad)

    xaes = XAES256GCM(key)

    def xaes_only() -> None:
        nonce = os.urandom(24)
        xaes.decrypt(nonce, xaes.encrypt(nonce, value, ad), ad)

    table = KeyRing(os.urandom(32)).table(b"tree:bench")

    def codec() -> None:
        storage_key = table.row_key(b"logical key")
        ((_, stored),) = seal(table, RowKind.ROW, storage_key, b"logical key", value, os.urandom)
        open_head(table, RowKind.ROW, storage_key, stored)

    ebs = EncryptedStore.create(MemoryStore(), key=os.urandom(32), freshness=False)
    handle = ebs.table(b"tree:bench")
    keys = [b"logical key %d" % i for i in range(ROWS_PER_COMMIT)]

    def store() -> None:
        batch = ebs.batch()
        for key in keys:
            batch.put_row(handle, key, value)
        ebs.commit(batch, {})
        for key in keys:
            handle.read_row(key)

    return {
        "AES-256-GCM": per_op(plain, ops),
        "XAES-256-GCM": per_op(xaes_only, ops),
        "ebs row codec": per_op(codec, ops),
        "ebs commit+read": per_op(store, max(ops // ROWS_PER_COMMIT // 4, 1)) / ROWS_PER_COMMIT,
    }


def open_costs(repeats: int) -> dict[str, float]:
    passphrase_store, key_store, key = MemoryStore(), MemoryStore(), os.urandom(32)
    EncryptedStore.create(passphrase_store, "benchmark passphrase", freshness=False)
    EncryptedStore.create(key_store, key=key, freshness=False)
    assert (
        KdfParams.default()
        == EncryptedStore.open(passphrase_store, "benchmark passphrase", freshness=False)
        .keyslots()[0]
        .kdf
    )

    def by_passphrase() -> None:
        EncryptedStore.open(passphrase_store, "benchmark passphrase", freshness=False)

    def by_key() -> None:
        EncryptedStore.open(key_store, key=key, freshness=False)

    return {
        "passphrase (Argon2id t=3 m=256MiB p=4)": per_op(by_passphrase, 1, repeats),
        "raw 32-byte key": per_op(by_key, 200, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    ops = 2_000 if args.quick else 20_000
    print("| row size | path | us per encrypt+decrypt | x AES-256-GCM |")
    print("|---|---|---:|---:|")
    for size in (100, 4096):
        costs = row_costs(size, ops)
        base = costs["AES-256-GCM"]
        for name, cost in costs.items():
            print(f"| {size} B | {name} | {cost * 1e6:.2f} | {cost / base:.2f} |")
    print()
    opens = open_costs(3 if args.quick else 5)
    base = opens["raw 32-byte key"]
    print("| open with | ms | x raw key |")
    print("|---|---:|---:|")
    for name, cost in opens.items():
        print(f"| {name} | {cost * 1e3:.2f} | {cost / base:.0f} |")


if __name__ == "__main__":
    main()
