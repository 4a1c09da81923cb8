"""The ``persist`` command line (DESIGN §2.7).

Exit codes: 0 success, 1 problems found (``verify``), 2 could not run (usage,
missing store, wrong passphrase, locked store).
"""

from __future__ import annotations

import sys

import click

from ..errors import PersistError
from .commands import dump, info, init, passwd, rekey, verify
from .demo import demo
from .load import export, load
from .remote import container, lease
from .replicas import poll, pull, push, restore

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="persist-store")
def cli() -> None:
    """persist: encrypted orthogonal persistence for Python."""


for command in (
    init,
    info,
    verify,
    passwd,
    rekey,
    dump,
    demo,
    push,
    pull,
    poll,
    restore,
    lease,
    container,
    load,
    export,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Run the command line.  Whatever stops a command is one line on stderr
    and exit status 2, never a traceback: a usage error (click's, or a
    ValueError of the library: an argument it refused), a storage error, a
    file the environment refuses (OSError), or a missing backend driver (an
    ImportError naming its extra)."""
    try:
        cli.main(args=argv, prog_name="persist", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(2)
    except click.UsageError as exc:  # one line, not click's usage banner
        where = exc.ctx.command_path if exc.ctx is not None else "persist"
        click.echo(f"{where}: error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"persist: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except PersistError as exc:
        click.echo(f"persist: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    except (ValueError, ImportError) as exc:
        click.echo(f"persist: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the environment: a file that cannot be written, say
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"persist: error:{where}: {exc.strerror or exc}", err=True)
        sys.exit(2)
