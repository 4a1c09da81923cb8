"""The remote commands that need no key: ``persist lease ...`` and ``persist container ...``.

They read and copy ciphertext and lease records only (docs/remote.md).  TARGET
is a kvs location or ``dir:///abs/path``, naming a container as
``TARGET#name`` (the default container without ``#name``).

Exit status, as ``verify``'s: **0** done; **1** refused because of the data
(the lease is held by another holder, or lost; the container holds a
database; a lease record or the target's metadata is malformed); **2** usage,
or could not open (no such target or container, a store locked too long).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from .. import remote
from ..errors import ContainerExists, IntegrityError, LeaseError
from ..kvs import display_location
from ..remote import LeaseRecord

__all__ = ["container", "lease"]

HOLDER_ENV = "PERSIST_LEASE_HOLDER"

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")


def _shown(location: str) -> str:
    """A location fit to print: never its password."""
    return display_location(location)


def _emit(as_json: bool, text: str, report: dict[str, Any]) -> None:
    click.echo(json.dumps(report, indent=2) if as_json else text)


@contextlib.contextmanager
def _refusals(location: str, as_json: bool) -> Iterator[None]:
    """Refusals because of the data exit 1 (with a JSON report when asked);
    a malformed location or argument is a usage error (exit 2)."""
    try:
        yield
    except (LeaseError, ContainerExists, IntegrityError) as exc:
        report: dict[str, Any] = {"location": _shown(location), "refused": type(exc).__name__}
        report["message"] = str(exc)
        record = getattr(exc, "record", None)
        if isinstance(record, LeaseRecord):
            report["lease"] = record.describe()
        if as_json:
            click.echo(json.dumps(report, indent=2))
        click.echo(f"persist: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _when(unix_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _describe(record: LeaseRecord | None) -> str:
    if record is None:
        return "no lease"
    if not record.held:
        return (
            f"released by {record.holder} (generation {record.generation}) "
            f"at {_when(record.written_ms)}"
        )
    return (
        f"held by {record.holder} (generation {record.generation}, serial {record.serial}), "
        f"lease {record.lease_time:g} s, renewed at {_when(record.written_ms)}; "
        f"expires at {_when(record.expires_ms)} by the holder's clock (informative only)"
    )


# -- persist lease ---------------------------------------------------------------------


@click.group()
def lease() -> None:
    """The single-writer lease of a remote container (no key needed).

    \b
    The holder's clock rules: a holder is valid for the lease time minus the
    margin from just before it ran acquire (or renew), on its own clock, and
    must not write after that; a contender waits a full lease time of
    unchanged lease record before it takes a lease over (docs/remote.md).
    Holder ids come from --holder or $PERSIST_LEASE_HOLDER; acquire's default
    is host:pid:random, which the target's host can read.
    """


holder_option = click.option(
    "--holder",
    envvar=HOLDER_ENV,
    default=None,
    help=f"Holder id (printable ASCII, no spaces; also ${HOLDER_ENV}).",
)
lease_time_option = click.option(
    "--lease",
    "lease_time",
    type=click.FloatRange(0.001, 86_400),
    default=remote.DEFAULT_LEASE_TIME,
    show_default=True,
    help="Lease time in seconds.",
)
generation_option = click.option(
    "--generation", type=click.IntRange(min=1), default=None, help="Only this generation."
)


@lease.command("acquire")
@click.argument("target")
@holder_option
@lease_time_option
@click.option("--margin", type=float, default=None, help="Seconds the holder stops early.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for a held lease (taking one over waits a lease time).",
)
@json_option
def acquire(
    target: str,
    holder: str | None,
    lease_time: float,
    margin: float | None,
    wait: float,
    as_json: bool,
) -> None:
    """Acquire the lease of TARGET; exit 1 if another holder keeps it."""
    with _refusals(target, as_json), remote.open_container(target) as c:
        got = remote.acquire(c, holder=holder, lease_time=lease_time, margin=margin, timeout=wait)
        left = got.remaining()
        _emit(
            as_json,
            f"acquired the lease of {_shown(c.location)} as {got.holder}, generation "
            f"{got.generation}; valid for {left:.3f} s on this machine's clock "
            f"(renew before then: persist lease renew {_shown(c.location)} --holder {got.holder})",
            {
                "location": _shown(c.location),
                "lease": got.record.describe(),
                "valid_for_seconds": left,
                "margin_seconds": got.margin,
            },
        )


@lease.command("renew")
@click.argument("target")
@holder_option
@generation_option
@click.option(
    "--lease",
    "lease_time",
    type=click.FloatRange(0.001, 86_400),
    default=None,
    help="New lease time in seconds (default: the lease's own).",
)
@json_option
def renew(
    target: str,
    holder: str | None,
    generation: int | None,
    lease_time: float | None,
    as_json: bool,
) -> None:
    """Renew the lease of TARGET for --holder; exit 1 if it is not theirs.

    The holder is valid for the lease time minus its margin from before this
    command started, on the holder's own clock."""
    if holder is None:
        raise click.UsageError(f"give --holder (or ${HOLDER_ENV})")
    with _refusals(target, as_json), remote.open_container(target) as c:
        record = remote.renew_lease(c, holder, generation=generation, lease_time=lease_time)
        _emit(
            as_json,
            f"renewed the lease of {_shown(c.location)}: {_describe(record)}",
            {"location": _shown(c.location), "lease": record.describe()},
        )


@lease.command("release")
@click.argument("target")
@holder_option
@generation_option
@json_option
def release(target: str, holder: str | None, generation: int | None, as_json: bool) -> None:
    """Release the lease of TARGET held by --holder; exit 1 if another holds it."""
    if holder is None:
        raise click.UsageError(f"give --holder (or ${HOLDER_ENV})")
    with _refusals(target, as_json), remote.open_container(target) as c:
        record = remote.release_lease(c, holder, generation=generation)
        _emit(
            as_json,
            f"released the lease of {_shown(c.location)}",
            {"location": _shown(c.location), "lease": record.describe()},
        )


@lease.command("show")
@click.argument("target")
@json_option
def show(target: str, as_json: bool) -> None:
    """Show the lease record of TARGET (its times are the holder's clock)."""
    with _refusals(target, as_json), remote.open_container(target, read_only=True) as c:
        record = remote.read_lease(c)
        _emit(
            as_json,
            f"{_shown(c.location)}: {_describe(record)}",
            {
                "location": _shown(c.location),
                "lease": None if record is None else record.describe(),
            },
        )


# -- persist container -------------------------------------------------------------------


@click.group()
def container() -> None:
    """Containers: the databases a remote target holds (no key needed)."""


@container.command("create")
@click.argument("target")
@json_option
def create(target: str, as_json: bool) -> None:
    """Create the container TARGET#name (and the target); exit 1 if it holds a database."""
    with _refusals(target, as_json):
        remote.create_container(target)
    _emit(as_json, f"created {_shown(target)}", {"location": _shown(target), "created": True})


@container.command("delete")
@click.argument("target")
@click.option("--force", is_flag=True, help="Delete it even while its lease is held.")
@json_option
def delete(target: str, force: bool, as_json: bool) -> None:
    """Delete the container TARGET#name: its rows and its lease.

    The default container (TARGET alone) is emptied.  Exit 1 if its lease is
    held, unless --force: the holder's next fenced write then fails."""
    with _refusals(target, as_json):
        remote.delete_container(target, force=force)
    _emit(as_json, f"deleted {_shown(target)}", {"location": _shown(target), "deleted": True})


@container.command("copy")
@click.argument("source")
@click.argument("dest")
@json_option
def copy(source: str, dest: str, as_json: bool) -> None:
    """Copy the rows of SOURCE into DEST, as ciphertext (TARGET#name each).

    DEST is created when missing; exit 1 if it holds a database or its lease
    is held.  The lease is not copied.  Copy a source nobody writes meanwhile
    (a kvs source is read from one snapshot in any case)."""
    show_progress = not as_json and sys.stderr.isatty()

    def progress(rows: int) -> None:
        click.echo(f"\rcopied {rows} rows", nl=False, err=True)

    with _refusals(dest, as_json):
        rows = remote.copy_container(source, dest, progress=progress if show_progress else None)
    if show_progress:
        click.echo(err=True)
    _emit(
        as_json,
        f"copied {rows} rows from {_shown(source)} to {_shown(dest)}",
        {"from": _shown(source), "to": _shown(dest), "rows": rows},
    )


@container.command("list")
@click.argument("target")
@json_option
def list_(target: str, as_json: bool) -> None:
    """List the named containers of TARGET, and whether its default one holds rows."""
    with _refusals(target, as_json), remote.open_target(target, read_only=True) as t:
        names = t.list_containers()
        default_rows = t.container().holds_rows()
    shown = _shown(t.location)
    lines = [f"{shown}#{name}" for name in names]
    if default_rows:
        lines.insert(0, f"{shown} (the default container holds rows)")
    _emit(
        as_json,
        "\n".join(lines) if lines else f"{shown}: no containers",
        {"location": shown, "containers": names, "default_holds_rows": default_rows},
    )


list_.name = "list"
