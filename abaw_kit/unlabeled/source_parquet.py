"""Parquet files with an image-bytes column (Hugging Face ``datasets`` exports and the like).

The column is binary, or a struct with a ``bytes`` field as ``datasets`` writes its Image
feature. The index keeps (file, row group, row): parquet values sit in compressed pages, so
there is no byte offset to keep; the reader decodes one row group and caches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.sources import Candidate, Location, Skip, Source

PREFERRED_COLUMNS = ("image", "jpg", "jpeg", "png", "bytes", "img")
NO_BYTES = "row without image bytes"
UNREADABLE_GROUP = "unreadable row group"
MAX_ROWS_PER_BYTE = 4096


def is_bytes_type(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def is_image_column(kind: pa.DataType) -> bool:
    """Binary, or a struct whose ``bytes`` field is binary (``datasets``' Image feature)."""
    if is_bytes_type(kind):
        return True
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index != -1 and is_bytes_type(kind.field(index).type)
    return False


def choose_column(schema: pa.Schema, column: str | None, where: Path) -> str:
    """The requested column (checked), else a well-known name, else the first binary column."""
    if column is not None:
        if column not in schema.names:
            raise AbawError(f"{where}: no column {column!r}; columns are {', '.join(schema.names)}")
        if not is_image_column(schema.field(column).type):
            raise AbawError(f"{where}: column {column!r} is {schema.field(column).type}; expected "
                            "binary image bytes or a struct with a 'bytes' field")
        return column
    for name in PREFERRED_COLUMNS:
        if name in schema.names and is_image_column(schema.field(name).type):
            return name
    for candidate in schema:
        if is_bytes_type(candidate.type):
            return candidate.name
    for candidate in schema:
        if is_image_column(candidate.type):
            return candidate.name
    raise AbawError(f"{where}: no column holds image bytes (columns: {', '.join(schema.names)});"
                    " pass --column NAME")


def column_values(table: pa.Table, column: str) -> pa.Array:
    """The image bytes of a row group as one binary array (struct columns: their ``bytes``)."""
    values = table.column(column).combine_chunks()
    if pa.types.is_struct(values.type):
        values = values.field("bytes")
    return values


@dataclass
class ParquetSource(Source):
    kind: ClassVar[str] = "parquet"
    column: str | None = None

    def __post_init__(self) -> None:
        if self.path.is_dir():
            self.root = self.path
            self.files = sorted(p.relative_to(self.path).as_posix()
                                for p in self.path.rglob("*.parquet") if p.is_file())
            if not self.files:
                raise AbawError(f"{self.path} holds no .parquet files")
        else:
            self.root = self.path.parent
            self.files = [self.path.name]
        self._chosen: str | None = None
        self._cache: tuple[tuple[int, int], pa.Array | str] | None = None  # str: why unreadable

    def _open(self, index: int) -> pq.ParquetFile:
        path = self.root / self.files[index]
        try:
            handle = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise AbawError(f"{path} is not a readable parquet file ({exc})") from None
        column = choose_column(handle.schema_arrow, self._chosen or self.column, path)
        self._chosen = self._chosen or column
        return handle

    def candidates(self, start: int = 0) -> Iterator[Candidate]:
        item = 0
        for index in range(len(self.files)):
            for group, rows in enumerate(self._row_counts(index)):
                if item + rows <= start:
                    item += rows
                    continue
                for row in range(rows):
                    if item >= start:
                        yield Candidate(item, (index, group, row))
                    item += 1

    def count(self) -> int:
        return sum(sum(self._row_counts(i)) for i in range(len(self.files)))

    def _row_counts(self, index: int) -> list[int]:
        """Rows per row group from the footer, checked against the file size.

        Why: the counts are taken on trust to list candidates and plan the subset, so a
        damaged footer claiming 10**18 rows would loop for ever. The bound is loose (runs of
        empty rows compress to about 500 per byte) and only catches impossible claims.
        """
        meta = self._open(index).metadata
        rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        path = self.root / self.files[index]
        most = path.stat().st_size * MAX_ROWS_PER_BYTE
        if sum(rows) > most or min(rows, default=0) < 0:
            raise AbawError(f"{path}: the parquet footer claims {sum(rows)} rows, more than a "
                            f"file of {path.stat().st_size} bytes can hold; the file is "
                            "damaged; re-download or rewrite it")
        return rows

    def read(self, ref: Any) -> tuple[bytes, Location]:
        index, group, row = ref
        where = f"{self.files[index]} row group {group} row {row}"
        if self._cache is None or self._cache[0] != (index, group):
            handle = self._open(index)
            assert self._chosen is not None
            try:
                table = handle.read_row_group(group, columns=[self._chosen])
                values: pa.Array | str = column_values(table, self._chosen)
            except (pa.ArrowException, OSError) as exc:  # a damaged page: skip its rows
                values = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._cache = ((index, group), values)
        values = self._cache[1]
        if isinstance(values, str):
            raise Skip(UNREADABLE_GROUP, f"{where}: {values}")
        if row >= len(values):  # the footer promised more rows than the page holds
            raise Skip(UNREADABLE_GROUP, f"{where}: the row group holds {len(values)} rows")
        value = values[row].as_py()
        if not value:
            raise Skip(NO_BYTES, where)
        return value, Location(self.files[index], -1, len(value), row_group=group, row=row)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._chosen is None and self.files:
            self._open(0)
        info["column"] = self._chosen
        info["files"] = {name: (self.root / name).stat().st_size for name in self.files}
        return info
