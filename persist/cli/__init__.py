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
from .remote import container, lease

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="persist")
def cli() -> None:
    """persist: encrypted orthogonal persistence for Python."""


for command in (init, info, verify, passwd, rekey, dump, demo, lease, container):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; storage errors become a one-line message and exit 2."""
    try:
        cli.main(args=argv, prog_name="persist", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except PersistError as exc:
        click.echo(f"persist: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
