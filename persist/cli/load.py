"""``persist load`` (bulk ingest from CSV or JSON Lines) and ``persist export``.

Theory of operation.  Each FILE is read by a producer thread of its own (at
most ``--producers`` at a time), which parses rows into blocks of
``--block-size`` and writes each block as one atomic block of the database
(``with db.atomic(): table.update(block)``): the multiplexer folds the
producers' blocks into commit waves, and each wave's changes reach the trees
as one sorted batch.  A block lands whole or not at all; blocks of different
files interleave.  The first bad row stops every producer: the blocks already
written stay (they are committed before the command exits) and the message
says which file and line, and how many rows were loaded.  CSV headers are
checked before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

import click

from .commands import _database, location_argument
from .jsonvalues import to_json
from .secrets import credential_options

__all__ = ["export", "load"]

_STDIN = "-"


class LoadError(click.ClickException):
    """A row or a file the load cannot take (exit status 2)."""


def _format_of(path: str, given: str | None) -> str:
    if given is not None:
        return given
    if path != _STDIN and path.lower().endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"


def _open_text(path: str) -> TextIO:
    if path == _STDIN:
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


class _Columns:
    """Which columns make the key and the value."""

    def __init__(self, key: str, values: tuple[str, ...]) -> None:
        self.key = key
        self.values = values

    def check_header(self, path: str, header: list[str]) -> None:
        missing = [c for c in (self.key, *self.values) if c not in header]
        if missing:
            raise LoadError(
                f"{path}: no column {missing[0]!r} (its columns: {', '.join(header) or 'none'})"
            )

    def pair(self, row: dict[str, Any], where: str) -> tuple[Any, Any]:
        if self.key not in row:
            raise LoadError(f"{where}: no {self.key!r} field")
        key = row[self.key]
        if isinstance(key, list):
            key = tuple(key)
        if key is None or isinstance(key, dict | float | bool):
            raise LoadError(f"{where}: the key {key!r} is not a str, an int or a list of them")
        if len(self.values) == 1:
            name = self.values[0]
            if name not in row:
                raise LoadError(f"{where}: no {name!r} field")
            return key, row[name]
        if self.values:
            missing = [c for c in self.values if c not in row]
            if missing:
                raise LoadError(f"{where}: no {missing[0]!r} field")
            return key, {c: row[c] for c in self.values}
        return key, {c: v for c, v in row.items() if c != self.key}


def _rows(path: str, fmt: str, columns: _Columns, stream: TextIO) -> Iterator[tuple[Any, Any]]:
    if fmt == "csv":
        reader = csv.DictReader(stream)
        try:
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise LoadError(f"{path}:{reader.line_num}: the row does not match the header")
                yield columns.pair(row, f"{path}:{reader.line_num}")
        except csv.Error as exc:
            raise LoadError(f"{path}:{reader.line_num}: {exc}") from None
        return
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LoadError(f"{path}:{number}: a line is a JSON object")
        yield columns.pair(row, f"{path}:{number}")


class _Progress:
    """Rows loaded so far, shown on a terminal (stderr) as one updating line."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.rows = 0
        self._lock = threading.Lock()
        self._last = 0.0
        self._start = time.monotonic()

    def add(self, n: int) -> None:
        with self._lock:
            self.rows += n
            now = time.monotonic()
            if self.show and now - self._last >= 0.2:
                self._last = now
                rate = self.rows / max(now - self._start, 1e-9)
                click.echo(f"\rloading: {self.rows:,} rows ({rate:,.0f}/s)", nl=False, err=True)

    def done(self) -> None:
        if self.show:
            click.echo("\r" + " " * 60 + "\r", nl=False, err=True)


LOAD_HELP = """Load rows from CSV or JSON Lines files into TABLE.

Each FILE ("-" is standard input) is read by a producer thread; rows go in
atomic blocks of --block-size rows.  The key is the --key column; the value
is the --value column, or a map of several --value columns, or (no --value)
a map of every other column.  CSV values are text; JSON Lines values keep
their JSON types.  The format follows the file name (.jsonl, .ndjson, .json:
JSON Lines; anything else: CSV) unless --format says.  A bad row stops the
load: the blocks loaded before it stay, and the message names the file and
the line.  Prints the number of rows loaded.
"""


@click.command(help=LOAD_HELP)
@location_argument
@click.argument("table")
@click.argument("files", nargs=-1, required=True)
@click.option("--key", "key_column", required=True, help="The column (field) of the key.")
@click.option("--value", "value_columns", multiple=True, help="A value column (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="The input format.")
@click.option("--block-size", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--producers", type=click.IntRange(1, 64), default=4, show_default=True)
@credential_options
def load(
    location: str,
    table: str,
    files: tuple[str, ...],
    key_column: str,
    value_columns: tuple[str, ...],
    fmt: str | None,
    block_size: int,
    producers: int,
    **opts: Any,
) -> None:
    if files.count(_STDIN) > 1:
        raise click.BadParameter("standard input ('-') can be read once", param_hint="FILES")
    for path in files:
        if path != _STDIN and not os.path.isfile(path):
            raise click.BadParameter(f"no file {path!r}", param_hint="FILES")
    columns = _Columns(key_column, value_columns)
    streams: dict[str, TextIO] = {}
    try:
        for path in files:
            streams[path] = _open_text(path)
        headers_checked(files, fmt, columns, streams)
        with _database(location, opts) as db:
            try:
                target = db.table(table)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="TABLE") from None
            progress = _Progress(sys.stderr.isatty())
            failure = _run_producers(
                db, target, files, fmt, columns, streams, block_size, producers, progress
            )
            progress.done()
        if failure is not None:
            raise LoadError(f"{failure.format_message()} ({progress.rows:,} rows loaded before)")
        click.echo(f"loaded {progress.rows:,} rows into {table}")
    finally:
        for stream in streams.values():
            stream.close()


def headers_checked(
    files: tuple[str, ...], fmt: str | None, columns: _Columns, streams: dict[str, TextIO]
) -> None:
    """Check every CSV header before anything is written (stdin: only peeked at)."""
    for path in files:
        if _format_of(path, fmt) != "csv":
            continue
        stream = streams[path]
        first = stream.readline()
        header = next(csv.reader([first]), [])
        columns.check_header(path, header)
        streams[path] = _Rejoined(first, stream)  # type: ignore[assignment]


class _Rejoined(io.TextIOBase):
    """A text stream whose first line was read already (to check the header)."""

    def __init__(self, first: str, rest: TextIO) -> None:
        self._first: str | None = first
        self._rest = rest

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._rest

    def close(self) -> None:
        self._rest.close()


def _run_producers(
    db: Any,
    target: Any,
    files: tuple[str, ...],
    fmt: str | None,
    columns: _Columns,
    streams: dict[str, TextIO],
    block_size: int,
    producers: int,
    progress: _Progress,
) -> LoadError | None:
    stop = threading.Event()
    errors: list[LoadError] = []
    unexpected: list[BaseException] = []
    queue = list(files)
    queue_lock = threading.Lock()

    def produce() -> None:
        while not stop.is_set():
            with queue_lock:
                if not queue:
                    return
                path = queue.pop(0)
            block: dict[Any, Any] = {}
            try:
                for key, value in _rows(path, _format_of(path, fmt), columns, streams[path]):
                    block[key] = value
                    if len(block) >= block_size:
                        _write(db, target, block, progress)
                        block = {}
                        if stop.is_set():
                            return
                if block:
                    _write(db, target, block, progress)
            except LoadError as exc:
                errors.append(exc)
                stop.set()
            except BaseException as exc:
                unexpected.append(exc)
                stop.set()

    threads = [
        threading.Thread(target=produce, name=f"persist-load-{i}")
        for i in range(min(producers, len(files)))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if unexpected:
        raise unexpected[0]
    return errors[0] if errors else None


def _write(db: Any, target: Any, block: dict[Any, Any], progress: _Progress) -> None:
    with db.atomic():
        target.update(block)
    progress.add(len(block))


@click.command()
@location_argument
@click.argument("table")
@credential_options
def export(location: str, table: str, **opts: Any) -> None:
    """Write TABLE as JSON Lines: {"key": ..., "value": ...} per entry, in key order.

    The output loads back with: persist load LOCATION TABLE FILE.jsonl --key key --value value
    """
    with _database(location, opts, read_only=True) as db:
        try:
            db.table(table)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TABLE") from None
        if table not in db.tables():
            raise click.BadParameter(f"no table named {table!r}", param_hint="TABLE")
        out = sys.stdout
        for key, value in db.table(table).items():
            line = {"key": to_json(key), "value": to_json(value)}
            out.write(json.dumps(line, allow_nan=False) + "\n")
        out.flush()
