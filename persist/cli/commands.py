"""The store commands: init, info, verify, passwd, rekey, dump."""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import click

from .. import db as persist_db
from ..db.rekey import TreesRekeyer
from ..db.values import Undecodable
from ..db.verify import Issue
from ..ebs import EncryptedStore, KdfParams
from ..ebs import rekey as rotation
from ..ebs.keyslot import parse_keyslot, read_keyslots
from ..errors import (
    CorruptStore,
    IntegrityError,
    NotAStore,
    StoreLocked,
    StoreNotFound,
    WrongPassphrase,
)
from ..kvs import display_location, open_store, parse_location
from .jsonvalues import to_json
from .replicas import is_target_location, verify_target
from .secrets import Credentials, credential_options, new_passphrase, resolve

__all__ = ["dump", "info", "init", "passwd", "rekey", "verify"]

#: Errors that mean "could not open": exit status 2 (DESIGN §2.7).
CANNOT_OPEN = (WrongPassphrase, StoreNotFound, NotAStore, StoreLocked)


def _check_location(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A LOCATION the kvs layer can parse (else a usage error, exit 2)."""
    try:
        parse_location(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


location_argument = click.argument("location", callback=_check_location)


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
@location_argument
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
@click.option(
    "--replace",
    is_flag=True,
    help="Make a new database even where the freshness record saw one (an emptied store "
    "is otherwise refused as a rollback).",
)
@click.option("--weak-kdf-for-tests", is_flag=True, hidden=True)
def init(
    location: str,
    kdf_memory_mib: int,
    kdf_time: int,
    kdf_parallelism: int,
    replace: bool,
    weak_kdf_for_tests: bool,
    **opts: Any,
) -> None:
    """Create a new, empty encrypted store at LOCATION.

    Every option is checked before anything is created: a refused init
    leaves nothing behind.  A location whose freshness record names a
    database that is gone is refused (RollbackDetected, exit 2) unless
    --replace.
    """
    if weak_kdf_for_tests:
        kdf = KdfParams.weak_for_tests()
    else:
        kdf = KdfParams(
            time_cost=kdf_time, memory_kib=kdf_memory_mib * 1024, parallelism=kdf_parallelism
        )
    allow_weak = weak_kdf_for_tests or opts["allow_weak_kdf"]
    reason = kdf.refusal(allow_weak=allow_weak)
    if reason is not None:
        raise click.UsageError(reason.replace("allow_weak_kdf=True", "the test flag"))
    freshness = _freshness(opts["freshness"], opts["no_freshness"])
    if freshness:
        _check_writable_file(freshness, "--freshness")
    creds = _init_credentials(opts)
    with open_store(location) as store:
        if next(store.scan(), None) is not None:
            raise click.ClickException(f"{store.location} is not empty")
        EncryptedStore.create(
            store,
            creds.passphrase,
            key=creds.key,
            kdf=kdf,
            allow_weak_kdf=allow_weak,
            freshness=freshness,
            replace=replace,
        ).close()
        shown = store.location
    click.echo(f"created an encrypted store at {shown}")


def _check_writable_file(path: str, option: str) -> None:
    """A file init will write: a probe file must be creatable beside it."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write in {parent}: {exc.strerror}", param_hint=option
        ) from None


def _init_credentials(opts: dict[str, Any]) -> Credentials:
    if opts["passphrase_file"] or opts["key_file"] or not sys.stdin.isatty():
        return resolve(opts["passphrase_file"], opts["key_file"], prompt="Passphrase")
    return Credentials(new_passphrase(None), None)


# -- info ----------------------------------------------------------------------


@click.command()
@location_argument
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
LOCATION may be a replica TARGET (dir:///abs/path, or TARGET#name): its
rows are checked the same way (docs/remote.md).

\b
Exit status: 0 intact, 1 problems found (all listed), 2 could not open
(usage, wrong passphrase, missing store).
"""


def _check_store_or_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A LOCATION, or a replica TARGET (``dir://...`` or ``TARGET#name``)."""
    if is_target_location(value):
        return value
    return _check_location(ctx, param, value)


@click.command(help=VERIFY_HELP)
@click.argument("location", callback=_check_store_or_target)
@credential_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify(location: str, as_json: bool, **opts: Any) -> None:
    open_opts = _open_options(opts)
    issues: list[Issue]
    if is_target_location(location):  # a replica: its container read as a store
        show = not as_json and sys.stderr.isatty()
        issues = verify_target(location, open_opts, lambda db: _verify_with_progress(db, show=show))
        _report(display_location(location), issues, as_json)
        sys.exit(1 if issues else 0)
    try:
        db = persist_db.open(location, create=False, read_only=True, **open_opts)
    except CANNOT_OPEN:
        raise
    except CorruptStore:  # the backend cannot open its own files: could not open (exit 2)
        raise
    except IntegrityError as exc:  # damage found while opening: a finding, not a failure
        if not open_opts["allow_weak_kdf"] and _only_weak_keyslots(location, open_opts):
            raise click.UsageError(
                "the store's keyslots use the weak KDF profile meant for tests; "
                "it is refused without the test flag"
            ) from None
        issues = [Issue(type(exc).__name__, "", str(exc))]
    else:
        try:
            issues = _verify_with_progress(db, show=not as_json and sys.stderr.isatty())
        finally:
            db.close()
    _report(display_location(location), issues, as_json)
    sys.exit(1 if issues else 0)


def _only_weak_keyslots(location: str, open_opts: dict[str, Any]) -> bool:
    """Whether every readable keyslot of the credential's kind uses the weak test
    profile: then the KDF policy refused the open, and nothing is damaged."""
    kind = "passphrase" if open_opts["passphrase"] is not None else "raw key"
    with open_store(location, read_only=True) as store:
        infos = []
        for index, row in read_keyslots(store.get).items():
            try:
                infos.append(parse_keyslot(index, row).info)
            except IntegrityError:
                return False  # a damaged keyslot is a finding
    mine = [i for i in infos if i.kind == kind]
    return bool(mine) and all(i.weak_kdf for i in mine)


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
    with open_store(location, create=False) as store:
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
@location_argument
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
    """Change the passphrase of LOCATION (rewrites one keyslot row).

    The keyslot the current passphrase (or --key-file) opens is rewritten for
    the new passphrase.  The master key stays: whoever kept an old copy of
    the keyslot can still open it with the old passphrase.  To revoke old
    passphrases and keys, use `persist rekey`.
    """
    open_opts = _open_options(opts, prompt="Current passphrase")
    new = new_passphrase(new_passphrase_file)
    kdf = KdfParams.weak_for_tests() if weak_kdf_for_tests else KdfParams.default()
    old: str | bytes = (
        open_opts["passphrase"] if open_opts["passphrase"] is not None else open_opts["key"]
    )
    with _encrypted_store(location, open_opts) as ebs:
        index = ebs.change_passphrase(old, new, kdf=kdf, allow_weak_kdf=weak_kdf_for_tests)
    click.echo(
        f"keyslot {index} now opens with the new passphrase.  The master key is unchanged, "
        "so a copy of the old keyslot (a backup, or the storage host's) still opens with "
        "the old one: run `persist rekey` to revoke it."
    )


@click.command()
@location_argument
@credential_options
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Passphrase of the new keyslot (default: keep the current passphrase).",
)
@click.option(
    "--abort",
    is_flag=True,
    help="Abandon a rotation that a crash interrupted before it switched keys.",
)
@click.option("--weak-kdf-for-tests", is_flag=True, hidden=True)
def rekey(
    location: str,
    new_passphrase_file: str | None,
    abort: bool,
    weak_kdf_for_tests: bool,
    **opts: Any,
) -> None:
    """Re-encrypt every row of LOCATION under a new random master key (crash-safe).

    Revokes anyone who learned the old master key or an old passphrase: no
    byte the old key opens carries the new key or later data.  Other
    keyslots (recovery keys) are dropped: add them again afterwards.  A
    rotation a crash interrupted is finished by running this command again
    with the same new passphrase (the new master key is wrapped under it;
    before the key switch nothing else can finish it), or abandoned with
    --abort.  A format-v1 store is upgraded first.
    """
    open_opts = _open_options(opts)
    new = _new_or_current(new_passphrase_file, open_opts)
    kdf = KdfParams.weak_for_tests() if weak_kdf_for_tests else KdfParams.default()
    _upgrade_first(location, open_opts)
    with _encrypted_store(location, open_opts) as ebs:
        if abort:
            if ebs.rekey_phase != "copy":
                raise click.UsageError("no rotation awaits abandoning (--abort)")
            rotation.abort_rekey(ebs)
            click.echo("abandoned the interrupted rotation; the old keys still open the store")
            return
        if ebs.rekey_phase == "cleanup":
            # The interrupted rotation had switched keys already: the credential
            # this command opened the store with is its new one.  Finishing the
            # cleanup applies no other credential, so a new one asked for here
            # (a different --new-passphrase-file) takes a rotation of its own.
            rotation.resume_rekey(ebs, TreesRekeyer())
            click.echo(
                "finished the cleanup of an interrupted rotation (its keys had switched "
                "already): the passphrase or key this command opened the store with opens it"
            )
            if _same_credential(new, open_opts):
                return
        elif ebs.rekey_phase is not None:
            try:
                rotation.resume_rekey(ebs, TreesRekeyer(), new["passphrase"], key=new["key"])
            except WrongPassphrase:
                raise click.UsageError(
                    "the interrupted rotation was to another passphrase or key: give it "
                    "with --new-passphrase-file (or abandon the rotation with --abort)"
                ) from None
            click.echo("finished an interrupted rotation: the new passphrase opens the store")
            return
        rotation.rekey(
            ebs,
            new["passphrase"],
            key=new["key"],
            kdf=kdf,
            allow_weak_kdf=weak_kdf_for_tests,
            rekeyer=TreesRekeyer(),
        )
    click.echo("every row is now encrypted under a new master key")


def _upgrade_first(location: str, open_opts: dict[str, Any]) -> None:
    """A rotation needs format v2: a writable open upgrades a v1 store (and finishes
    a rotation that had switched keys already)."""
    with open_store(location, create=False, read_only=True) as store:
        ebs = EncryptedStore.open(
            store,
            open_opts["passphrase"],
            key=open_opts["key"],
            allow_weak_kdf=open_opts["allow_weak_kdf"],
            freshness=False,
        )
        current = ebs.version >= 2
        ebs.close()
    if not current:
        persist_db.open(location, create=False, **open_opts).close()


def _same_credential(new: dict[str, Any], open_opts: dict[str, Any]) -> bool:
    """Whether the new credential is the one the store was opened with."""
    if new["key"] is not None or open_opts["key"] is not None:
        return new["key"] is open_opts["key"]
    a, b = new["passphrase"], open_opts["passphrase"]
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _new_or_current(new_file: str | None, open_opts: dict[str, Any]) -> dict[str, Any]:
    if new_file:
        return {"passphrase": new_passphrase(new_file), "key": None}
    return {"passphrase": open_opts["passphrase"], "key": open_opts["key"]}


# -- dump ----------------------------------------------------------------------


DUMP_HELP = """Print TABLE (default: the root map) of LOCATION as JSON lines, decrypted.

\b
One line per entry, {"key": KEY, "value": VALUE}, in key order.  Nothing of
the application is imported: records and persistent objects are shown as
stored.  Every line is strict JSON (no NaN); types JSON lacks are objects
with one "$" member:
  {"$bytes": base64}  {"$tuple": [...]}  {"$set": [...]}  {"$frozenset": [...]}
  {"$map": [[key, value], ...]}  (a dict with a non-str or "$"-prefixed key)
  {"$float": "NaN" | "Infinity" | "-Infinity"}  {"$decimal": "1.10"}
  {"$fraction": "1/3"}  {"$complex": [re, im]}  {"$datetime": ISO 8601}
  {"$date": ISO 8601}  {"$uuid": str}  {"$ip": str}
  {"$record": type name, "fields": {...}}
  {"$object": oid, "class": "module:qualname"}
  {"$tag": number, "value": ...}  (a CBOR tag persist does not know)
  {"$undecodable": reason}  (exit status 1 at the end)

\b
Exit status: 0 printed, 1 some value did not decode, 2 could not open the
store, or TABLE is reserved or does not exist.
"""


@click.command(help=DUMP_HELP)
@location_argument
@click.argument("table", required=False)
@credential_options
def dump(location: str, table: str | None, **opts: Any) -> None:
    with _database(location, opts, read_only=True) as db:
        if table is not None:
            try:
                db.table(table)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="TABLE") from None
            if table not in db.tables():
                raise click.BadParameter(
                    f"no table named {table!r} in {display_location(location)}", param_hint="TABLE"
                )
        failed = False
        for key, value in db.inspect(table):
            line = {"key": to_json(key), "value": to_json(value)}
            failed = failed or isinstance(value, Undecodable)
            click.echo(json.dumps(line, allow_nan=False))
    if failed:
        sys.exit(1)
