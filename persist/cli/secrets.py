"""Where the command line gets key material: never from a plain argument.

Order: ``--passphrase-file`` (first line, newline stripped), ``--key-file``
(a raw 32-byte key or 64 hex digits), the ``PERSIST_PASSPHRASE`` environment
variable, then a hidden interactive prompt on a terminal.  Without any of
them and without a terminal, the command stops with exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..ebs.keyslot import load_key

__all__ = ["Credentials", "credential_options", "new_passphrase", "read_key_file", "resolve"]

ENV = "PERSIST_PASSPHRASE"
F = TypeVar("F", bound=Callable[..., Any])


class Credentials:
    """The key material for opening a store: exactly one of passphrase and key."""

    def __init__(self, passphrase: str | None, key: bytes | None) -> None:
        self.passphrase = passphrase
        self.key = key

    def kwargs(self) -> dict[str, Any]:
        return {"passphrase": self.passphrase, "key": self.key}

    def __repr__(self) -> str:  # never show the secret
        return "<Credentials>"


def _read_first_line(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    line = text.splitlines()[0] if text else ""
    if not line:
        raise click.UsageError(f"passphrase file {path} is empty")
    return line


def read_key_file(path: str) -> bytes:
    """The raw key in ``path``; a usage error (exit 2) when it holds none."""
    try:
        return load_key(path)
    except OSError as exc:
        raise click.UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise click.UsageError(f"key file {path}: {exc}") from None


def resolve(passphrase_file: str | None, key_file: str | None, *, prompt: str) -> Credentials:
    if passphrase_file and key_file:
        raise click.UsageError("give --passphrase-file or --key-file, not both")
    if key_file:
        return Credentials(None, read_key_file(key_file))
    if passphrase_file:
        return Credentials(_read_first_line(passphrase_file), None)
    env = os.environ.get(ENV)
    if env:
        return Credentials(env, None)
    if sys.stdin.isatty():
        return Credentials(click.prompt(prompt, hide_input=True), None)
    raise click.UsageError(
        f"no passphrase: use --passphrase-file, --key-file or {ENV}, or run on a terminal"
    )


def new_passphrase(new_passphrase_file: str | None) -> str:
    """A new passphrase: from a file, or typed twice at a hidden prompt."""
    if new_passphrase_file:
        return _read_first_line(new_passphrase_file)
    if not sys.stdin.isatty():
        raise click.UsageError("no new passphrase: use --new-passphrase-file or a terminal")
    value: str = click.prompt("New passphrase", hide_input=True, confirmation_prompt=True)
    return value


def credential_options(func: F) -> F:
    """The options every command that opens a store takes."""
    func = click.option(
        "--key-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="File holding a raw 32-byte key (or 64 hex digits) instead of a passphrase.",
    )(func)
    func = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False),
        default=None,
        help=f"File whose first line is the passphrase (else ${ENV}, else a prompt).",
    )(func)
    func = click.option(
        "--freshness",
        type=click.Path(dir_okay=False),
        default=None,
        help="Freshness record to check and update (default: the user's state directory).",
    )(func)
    func = click.option(
        "--no-freshness",
        is_flag=True,
        help="Use no freshness record (trust on first use).",
    )(func)
    func = click.option("--allow-weak-kdf", is_flag=True, hidden=True)(func)  # tests only
    return func
