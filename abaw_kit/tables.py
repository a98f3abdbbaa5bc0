"""Every rich table the CLI prints is built here: key/value tables, column tables, a stack.

Cell texts are formatted in one place (:func:`cell`): text as is, floats with ``digits``
decimals when a table asks for them (metrics: 4), anything else through ``str``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from rich.console import RenderableType
from rich.table import Table

Justify = Literal["left", "center", "right"]
Column = str | tuple[str, Justify]
"""A column: its header (left-aligned), or ``(header, "right")``."""

METRIC_DIGITS = 4
"""Decimals of an F1, an accuracy... in a table."""


def cell(value: Any, digits: int | None = None) -> str:
    """The text of one cell: a float with ``digits`` decimals when given, else ``str``."""
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return value if isinstance(value, str) else str(value)


def count(value: int | None) -> str:
    """A count with thousands separators; ``-`` when unknown."""
    return "-" if value is None else f"{value:,}"


def rate(value: float) -> str:
    """A rate (images/s) as a whole number with thousands separators."""
    return f"{value:,.0f}"


def human_bytes(n: int) -> str:
    """``1,234.5 MiB``-style sizes (bytes as a whole number)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def kv_table(title: str, rows: Mapping[str, Any] | Iterable[tuple[str, Any]], *,
             headers: tuple[str, str] = ("what", "value"), show_header: bool = False,
             value_justify: Justify = "left", digits: int | None = None) -> Table:
    """Two columns, key (bold) and value; ``rows`` a mapping or (key, value) pairs (a key may
    repeat)."""
    table = Table(title=title, show_header=show_header)
    table.add_column(headers[0], style="bold")
    table.add_column(headers[1], justify=value_justify)
    for key, value in (rows.items() if isinstance(rows, Mapping) else rows):
        table.add_row(cell(key), cell(value, digits))
    return table


def rows_table(title: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]], *,
               title_justify: Justify = "center", digits: int | None = None) -> Table:
    """A header row of ``columns`` (each left-aligned or ``(name, justify)``) and ``rows``."""
    table = Table(title=title, title_justify=title_justify)
    for column in columns:
        name, justify = (column, "left") if isinstance(column, str) else column
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*(cell(value, digits) for value in row))
    return table


def right(*names: str) -> list[Column]:
    """Right-aligned columns (numbers): ``["split", *right("videos", "frames")]``."""
    return [(name, "right") for name in names]


def stack(*tables: Table | None) -> RenderableType:
    """Tables one above the other with a blank line between; ``None`` is left out."""
    layout = Table.grid(padding=(1, 0))
    for table in tables:
        if table is not None:
            layout.add_row(table)
    return layout
