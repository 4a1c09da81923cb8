"""The store commands: init, info, verify, passwd, rekey, dump."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import click

from .. import db as persist_db
from ..db.rekey import TreesRekeyer
from ..db.verify import Issue
from ..ebs import EncryptedStore, KdfParams
from ..ebs import rekey as rotation
from ..errors import IntegrityError, NotAStore, StoreLocked, StoreNotFound, WrongPassphrase
from ..kvs import open_store
from .secrets import Credentials, credential_options, new_passphrase, resolve

__all__ = ["dump", "info", "init", "passwd", "rekey", "verify"]

#: Errors that mean "could not open": exit status 2 (DESIGN §2.7).
CANNOT_OPEN = (WrongPassphrase, StoreNotFound, NotAStore, StoreLocked)


def _freshness(freshness: str | None, no_freshness: bool) -> str | Literal[False] | None:
    if no_freshness and freshness:
        raise click.UsageError("give --freshness or --no-freshness, not both")
    return False if no_freshness else freshness


def _open_options(ctx_opts: dict[str, Any], *, prompt: str = "Passphrase") -> dict[str, Any]:
    creds = resolve(ctx_opts["passphrase_file"], ctx_opts["key_file"], prompt=prompt)
    return {
        **creds.kwargs(),
        "allow_weak_kdf": ctx_opts["allow_weak_kdf"],
        "freshness": _freshness(ctx_opts["freshness"], ctx_opts["no_freshness"]),
    }


@contextmanager
def _database(location: str, opts: dict[str, Any], **kw: Any) -> Iterator[persist_db.Database]:
    db = persist_db.open(location, create=False, **_open_options(opts), **kw)
    try:
        yield db
    finally:
        db.close()


# -- init ----------------------------------------------------------------------


@click.command()
@click.argument("location")
@credential_options
@click.option(
    "--kdf-memory-mib",
    type=int,
    default=256,
    show_default=True,
    help="Argon2id memory cost (64 to 4096 MiB).",
)
@click.option(
    "--kdf-time", type=int, default=3, show_default=True, help="Argon2id passes (3 to 16)."
)
@click.option(
    "--kdf-parallelism", type=int, default=4, show_default=True, help="Argon2id lanes (4 to 16)."
)
@click.option("--weak-kdf-for-tests", is_flag=True, hidden=True)
def init(
    location: str,
    kdf_memory_mib: int,
    kdf_time: int,
    kdf_parallelism: int,
    weak_kdf_for_tests: bool,
    **opts: Any,
) -> None:
    """Create a new, empty encrypted store at LOCATION."""
    if weak_kdf_for_tests:
        kdf = KdfParams.weak_for_tests()
    else:
        kdf = KdfParams(
            time_cost=kdf_time, memory_kib=kdf_memory_mib * 1024, parallelism=kdf_parallelism
        )
    creds = _init_credentials(opts)
    with open_store(location) as store:
        if next(store.scan(), None) is not None:
            raise click.ClickException(f"{store.location} is not empty")
        EncryptedStore.create(
            store,
            creds.passphrase,
            key=creds.key,
            kdf=kdf,
            allow_weak_kdf=weak_kdf_for_tests or opts["allow_weak_kdf"],
            freshness=_freshness(opts["freshness"], opts["no_freshness"]),
        ).close()
    click.echo(f"created an encrypted store at {location}")


def _init_credentials(opts: dict[str, Any]) -> Credentials:
    if opts["passphrase_file"] or opts["key_file"] or not sys.stdin.isatty():
        return resolve(opts["passphrase_file"], opts["key_file"], prompt="Passphrase")
    return Credentials(new_passphrase(None), None)


# -- info ----------------------------------------------------------------------


@click.command()
@click.argument("location")
@credential_options
def info(location: str, **opts: Any) -> None:
    """Show the format, key slots, last commit and tables of LOCATION (no secrets)."""
    with _database(location, opts, read_only=True) as db:
        ebs = db._ebs
        root = ebs.root
        when = datetime.datetime.fromtimestamp(root.timestamp, datetime.UTC)
        click.echo(f"location:     {db.location}")
        click.echo("format:       persist v1 (XAES-256-GCM rows, Merkle B-trees of order 16)")
        click.echo(f"last commit:  #{root.count} at {when:%Y-%m-%d %H:%M:%S} UTC")
        click.echo(f"key epoch:    {root.key_epoch}")
        for slot in ebs.keyslots():
            kdf = slot.kdf
            cost = (
                f"Argon2id t={kdf.time_cost} m={kdf.memory_kib // 1024} MiB p={kdf.parallelism}"
                if kdf
                else "raw key"
            )
            click.echo(
                f"keyslot {slot.index}:    {slot.kind}, {cost}"
                + (" (weak test profile)" if slot.weak_kdf else "")
            )
        rows = size = 0
        for _, value in ebs.kvs.scan():
            rows += 1
            size += len(value)
        click.echo(f"store:        {rows} rows, {size} bytes of ciphertext")
        names = db.tables()
        click.echo(f"tables:       {len(names)}")
        click.echo(f"  (root)      {len(db.root)} entries")
        for name in names:
            click.echo(f"  {name:<11} {len(db.table(name))} entries")


# -- verify --------------------------------------------------------------------

VERIFY_HELP = """Check every row of the store at LOCATION; change nothing.

\b
Checked: every row's authentication (AEAD), every node's content address,
tree order, bounds, fill and subtree counts, every reference count, orphan
rows, both root slots and their chain, the coverage digests over the rows
outside the trees (count rows), keyslot format, and the freshness record.

\b
Not checked: whether a genuine write was wanted (the holder of the key can
write anything); whether an old but genuine keyslot was put back (it opens
only with the old passphrase); rollbacks of the whole store when no
freshness record exists (trust on first use).

\b
Exit status: 0 intact, 1 problems found (all listed), 2 could not open
(usage, wrong passphrase, missing store).
"""


@click.command(help=VERIFY_HELP)
@click.argument("location")
@credential_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify(location: str, as_json: bool, **opts: Any) -> None:
    open_opts = _open_options(opts)
    issues: list[Issue]
    try:
        db = persist_db.open(location, create=False, read_only=True, **open_opts)
    except CANNOT_OPEN:
        raise
    except IntegrityError as exc:  # damage found while opening: a finding, not a failure
        issues = [Issue(type(exc).__name__, "", str(exc))]
    else:
        try:
            issues = _verify_with_progress(db, show=not as_json and sys.stderr.isatty())
        finally:
            db.close()
    _report(location, issues, as_json)
    sys.exit(1 if issues else 0)


class _Bars:
    """Draws verify's phases on the terminal: a bar when the total is known."""

    def __init__(self) -> None:
        self._bar: Any = None

    def phase(self, name: str, total: int | None) -> None:
        self.close()
        if total is None:
            click.echo(f"{name} ...", err=True)
        else:
            self._bar = click.progressbar(length=total, label=name, file=sys.stderr)
            self._bar.__enter__()

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _verify_with_progress(db: persist_db.Database, *, show: bool) -> list[Issue]:
    if not show:
        return db.verify()
    bars = _Bars()
    try:
        return db.verify(bars)
    finally:
        bars.close()


def _report(location: str, issues: list[Issue], as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "location": location,
                    "intact": not issues,
                    "problems": [dataclasses.asdict(i) for i in issues],
                },
                indent=2,
            )
        )
        return
    for issue in issues:
        click.echo(str(issue))
    click.echo(f"{location}: intact" if not issues else f"{location}: {len(issues)} problems")


# -- passwd and rekey -----------------------------------------------------------


@contextmanager
def _encrypted_store(location: str, open_opts: dict[str, Any]) -> Iterator[EncryptedStore]:
    """The encrypted store itself, for commands that change keys rather than data."""
    with open_store(location) as store:
        ebs = EncryptedStore.open(
            store,
            open_opts["passphrase"],
            key=open_opts["key"],
            allow_weak_kdf=open_opts["allow_weak_kdf"],
            freshness=open_opts["freshness"],
        )
        try:
            yield ebs
        finally:
            ebs.close()


@click.command()
@click.argument("location")
@credential_options
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File whose first line is the new passphrase (else a prompt, twice).",
)
@click.option("--weak-kdf-for-tests", is_flag=True, hidden=True)
def passwd(
    location: str, new_passphrase_file: str | None, weak_kdf_for_tests: bool, **opts: Any
) -> None:
    """Change the passphrase of LOCATION (rewrites one keyslot row)."""
    open_opts = _open_options(opts, prompt="Current passphrase")
    new = new_passphrase(new_passphrase_file)
    kdf = KdfParams.weak_for_tests() if weak_kdf_for_tests else KdfParams.default()
    with _encrypted_store(location, open_opts) as ebs:
        old = open_opts["passphrase"] if open_opts["passphrase"] is not None else open_opts["key"]
        index = ebs.change_passphrase(old, new, kdf=kdf, allow_weak_kdf=weak_kdf_for_tests)
    click.echo(f"keyslot {index} now opens with the new passphrase; the old one no longer does")


@click.command()
@click.argument("location")
@credential_options
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Passphrase of the new keyslot (default: keep the current passphrase).",
)
@click.option("--weak-kdf-for-tests", is_flag=True, hidden=True)
def rekey(
    location: str, new_passphrase_file: str | None, weak_kdf_for_tests: bool, **opts: Any
) -> None:
    """Re-encrypt every row of LOCATION under a new random master key (crash-safe).

    Revokes anyone who learned the old master key.  Other keyslots (recovery
    keys) are dropped: add them again afterwards.  An interrupted rotation is
    finished by the next writable open or by running this command again.
    """
    open_opts = _open_options(opts)
    new = _new_or_current(new_passphrase_file, open_opts)
    kdf = KdfParams.weak_for_tests() if weak_kdf_for_tests else KdfParams.default()
    with _encrypted_store(location, open_opts) as ebs:
        if ebs.rekey_phase is not None:
            rotation.resume_rekey(ebs, TreesRekeyer(), new["passphrase"], key=new["key"])
            click.echo("finished an interrupted rotation")
        rotation.rekey(
            ebs,
            new["passphrase"],
            key=new["key"],
            kdf=kdf,
            allow_weak_kdf=weak_kdf_for_tests,
            rekeyer=TreesRekeyer(),
        )
    click.echo("every row is now encrypted under a new master key")


def _new_or_current(new_file: str | None, open_opts: dict[str, Any]) -> dict[str, Any]:
    if new_file:
        return {"passphrase": new_passphrase(new_file), "key": None}
    return {"passphrase": open_opts["passphrase"], "key": open_opts["key"]}


# -- dump ----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return {"$set": sorted((_jsonable(v) for v in value), key=repr)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _jsonable(v) for k, v in value.items()}
        return {"$map": [[_jsonable(k), _jsonable(v)] for k, v in value.items()]}
    if isinstance(value, persist_db.Persistent):
        return {"$object": value._p_oid, "$class": type(value).__qualname__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$record": type(value).__qualname__, **fields}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return {"$repr": repr(value)}


@click.command()
@click.argument("location")
@click.argument("table", required=False)
@credential_options
def dump(location: str, table: str | None, **opts: Any) -> None:
    """Print TABLE (default: the root map) of LOCATION as JSON lines, decrypted."""
    with _database(location, opts, read_only=True) as db:
        t = db.table(table) if table else db.root
        for key, value in t.items():
            click.echo(json.dumps({"key": _jsonable(key), "value": _jsonable(value)}))
