"""The replica commands: ``persist push | pull | poll | restore``, and verify of a TARGET.

TARGET is a kvs location or ``dir:///abs/path``, naming a container as
``TARGET#name`` (docs/remote.md).  They open the local store with its key
(``--passphrase-file``, ``--key-file``, ``$PERSIST_PASSPHRASE`` or a prompt):
the diff follows the encrypted trees.

Exit status, as ``verify``'s: **0** done; **1** refused because of the data
(the replica went back or forked, holds another database, fails
authentication; the lease is held or lost); **2** usage, or could not open
(no such store or container, wrong passphrase, a store locked too long).
Locations are printed without passwords.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from .. import db as persist_db
from .. import remote
from ..db.verify import Issue
from ..ebs import EncryptedStore
from ..errors import (
    CorruptStore,
    IntegrityError,
    LeaseError,
    StoreExists,
    StoreNotFound,
)
from ..kvs import display_location
from ..remote.sync import replica_record_path
from .secrets import credential_options, resolve

__all__ = ["is_target_location", "poll", "pull", "push", "restore", "verify_target"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")


def is_target_location(location: str) -> bool:
    """Whether ``location`` names a replica container rather than a plain store."""
    return location.startswith("dir://") or "#" in location


def _credentials(opts: dict[str, Any]) -> dict[str, Any]:
    creds = resolve(opts["passphrase_file"], opts["key_file"], prompt="Passphrase")
    if opts["no_freshness"] and opts["freshness"]:
        raise click.UsageError("give --freshness or --no-freshness, not both")
    return {
        **creds.kwargs(),
        "allow_weak_kdf": opts["allow_weak_kdf"],
        "freshness": False if opts["no_freshness"] else opts["freshness"],
    }


@contextlib.contextmanager
def _refusals(location: str, as_json: bool) -> Iterator[None]:
    """Refusals because of the data exit 1; a bad argument is a usage error."""
    try:
        yield
    except CorruptStore:
        raise  # the backend cannot open its own files: could not open (exit 2)
    except (IntegrityError, LeaseError) as exc:
        if as_json:
            report = {
                "location": display_location(location),
                "refused": type(exc).__name__,
                "message": str(exc),
            }
            click.echo(json.dumps(report, indent=2))
        click.echo(f"persist: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


class _Bar:
    """Progress on a terminal: one bar per phase (remote.sync's Progress)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._phase: str | None = None
        self._bar: Any = None
        self._done = 0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.show:
            return
        if phase != self._phase:
            self.close()
            self._phase = phase
            if total is None:
                click.echo(f"{phase} ...", err=True)
            else:
                self._bar = click.progressbar(length=max(total, 1), label=phase, file=sys.stderr)
                self._bar.__enter__()
                self._done = 0
        if self._bar is not None and done > self._done:
            self._bar.update(done - self._done)
            self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextlib.contextmanager
def _progress(as_json: bool) -> Iterator[_Bar]:
    bar = _Bar(not as_json and sys.stderr.isatty())
    try:
        yield bar
    finally:
        bar.close()


def _emit(as_json: bool, text: str, report: dict[str, Any]) -> None:
    click.echo(json.dumps(report, indent=2) if as_json else text)


@click.command()
@click.argument("location")
@click.argument("target")
@credential_options
@click.option(
    "--replace", is_flag=True, help="Overwrite a replica of another database (or before a rekey)."
)
@click.option(
    "--sweep", is_flag=True, help="Walk the whole store and delete every row it does not reach."
)
@json_option
def push(
    location: str, target: str, replace: bool, sweep: bool, as_json: bool, **opts: Any
) -> None:
    """Bring the replica TARGET to the committed state of the store at LOCATION.

    Writes only the rows the replica lacks, then switches its root, then
    deletes what the new root no longer reaches.  Exit 1 if the replica is
    newer or forked (pull first), holds another database, or its lease is
    held by someone else.

    When LOCATION is itself a replica (dir://... or TARGET#name), no key is
    asked for: TARGET becomes an exact copy of it, row for row (reads both
    in full, writes what differs; it cannot tell which one is newer)."""
    if is_target_location(location):
        if sweep:
            raise click.UsageError("--sweep is for a push from a store; a replica's is a copy")
        with _refusals(target, as_json), _progress(as_json) as bar:
            mirrored = remote.mirror(location, target, replace=replace, progress=bar)
        shown = display_location(target)
        text = (
            f"{shown}: already a copy of {mirrored.source}"
            if mirrored.up_to_date
            else f"copied {mirrored.source} to {shown}: {mirrored.written} rows written, "
            f"{mirrored.deleted} deleted, {mirrored.unchanged} unchanged"
        )
        _emit(as_json, text, {**dataclasses.asdict(mirrored), "up_to_date": mirrored.up_to_date})
        return
    kw = _credentials(opts)
    with _refusals(target, as_json), _progress(as_json) as bar:
        result = remote.push(location, target, replace=replace, sweep=sweep, progress=bar, **kw)
    shown = display_location(target)
    text = (
        f"{shown}: up to date at transaction {result.count}"
        if result.up_to_date
        else f"pushed transaction {result.count} to {shown}: {result.written} rows written, "
        f"{result.deleted} deleted" + (" (swept)" if result.swept else "")
    )
    _emit(as_json, text, {**dataclasses.asdict(result), "target": shown})


@click.command()
@click.argument("location")
@click.argument("target")
@credential_options
@json_option
def poll(location: str, target: str, as_json: bool, **opts: Any) -> None:
    """Say whether the replica TARGET holds a newer root than LOCATION (reads its root only)."""
    kw = _credentials(opts)
    with _refusals(target, as_json):
        seen = remote.poll(location, target, **kw)
    shown = display_location(target)
    if seen.replica is None:
        text = f"{shown}: holds no database yet"
    elif seen.newer:
        text = f"{shown}: newer (transaction {seen.replica}; the store is at {seen.local})"
    elif seen.replica == seen.local:
        text = f"{shown}: the same transaction {seen.local}"
    else:
        text = f"{shown}: older (transaction {seen.replica}; the store is at {seen.local})"
    _emit(as_json, text, {**dataclasses.asdict(seen), "target": shown})


@click.command()
@click.argument("location")
@click.argument("target")
@credential_options
@json_option
def pull(location: str, target: str, as_json: bool, **opts: Any) -> None:
    """Bring the store at LOCATION to the replica TARGET's newer root.

    Fetches only the rows the store lacks, authenticating each, in one atomic
    batch.  Exit 1 if the replica is older, forked, damaged or of another
    database."""
    kw = _credentials(opts)
    with _refusals(target, as_json), _progress(as_json) as bar:
        result = remote.pull(location, target, progress=bar, **kw)
    shown = display_location(location)
    text = (
        f"{shown}: up to date at transaction {result.count}"
        if result.up_to_date
        else f"pulled transaction {result.count} into {shown}: {result.written} rows "
        f"written, {result.deleted} deleted"
    )
    _emit(as_json, text, {**dataclasses.asdict(result), "location": shown})


@click.command()
@click.argument("target")
@click.argument("location")
@credential_options
@click.option("--overwrite", is_flag=True, help="Replace a store that exists at LOCATION.")
@json_option
def restore(target: str, location: str, overwrite: bool, as_json: bool, **opts: Any) -> None:
    """Rebuild a store at LOCATION from the replica TARGET, authenticating every row.

    Refuses (exit 1) an existing store unless --overwrite, and a damaged,
    rolled back or forked replica."""
    kw = _credentials(opts)
    with _refusals(target, as_json), _progress(as_json) as bar:
        try:
            result = remote.restore(target, location, overwrite=overwrite, progress=bar, **kw)
        except StoreExists as exc:
            raise IntegrityError(str(exc)) from None
    shown = display_location(location)
    _emit(
        as_json,
        f"restored transaction {result.count} of {display_location(target)} into {shown} "
        f"({result.rows} rows)",
        {**dataclasses.asdict(result), "location": shown},
    )


# -- verify TARGET ---------------------------------------------------------------------


def verify_target(
    location: str, open_opts: dict[str, Any], run: Callable[[persist_db.Database], list[Issue]]
) -> list[Issue]:
    """Every problem of the replica at ``location`` (a container), as ``persist verify``
    reports a store's.  StoreNotFound when there is no such container or database."""
    container = remote.open_container(location, read_only=True)
    with remote.ContainerStore(container, owns=True) as store:
        freshness = open_opts["freshness"]
        if freshness is not False:
            freshness = replica_record_path(freshness, container) or False
        try:
            ebs = EncryptedStore.open(
                store,
                open_opts["passphrase"],
                key=open_opts["key"],
                allow_weak_kdf=open_opts["allow_weak_kdf"],
                freshness=freshness,
            )
        except StoreNotFound:
            raise StoreNotFound(f"no database in {display_location(location)}") from None
        except CorruptStore:
            raise
        except IntegrityError as exc:
            return [Issue(type(exc).__name__, "", str(exc))]
        database = persist_db.Database(ebs, read_only=True)
        try:
            return run(database)
        finally:
            database.close()
            ebs.close()
