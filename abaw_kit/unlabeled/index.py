"""Random access to ingested unlabelled images, for training's DataLoader workers.

The index is columns of numbers (offsets, lengths) plus one Arrow string column, so a copy per
worker stays small; file descriptors are opened lazily in each process (a forked worker never
shares its parent's file position, and positioned reads need none anyway).

Path safety (no path from the index escapes its source's root, symlinks included) is checked
once per process where a path is first met, not on every read: a container (.rec, .tar,
.parquet) when it is opened, a folder of an image folder when one of its files is first read
(its files are then opened without following a final symlink; a linked file is resolved and
checked itself). Resolving two paths on every read cost about as much as the read.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled import recordio as rio
from abaw_kit.unlabeled.images import to_rgb_image
from abaw_kit.unlabeled.parts import FINGERPRINT_KEY
from abaw_kit.unlabeled.source_parquet import column_values
from abaw_kit.workspace import safe_join

_COLUMNS = ["source", "kind", "file", "offset", "length", "row_group", "row", "chunked"]
_ROW_GROUP_CACHE = 4
_FOLDER_CACHE = 1 << 17  # checked folders remembered per process (an image folder may hold
# one folder per identity)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class BrokenImage(AbawError):
    """An indexed image whose bytes are there but do not decode: ``ingest --verify sample``
    decodes only a share of the images, so training meets the rest. Training skips these;
    bytes that cannot be read at all (the data changed) stay a plain AbawError."""


class UnlabeledIndex:
    """The images ``abaw ingest`` indexed in ``out_dir``; ``image(i)`` -> uint8 [112,112,3]."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        index_path, sources_path = self.out_dir / "index.parquet", self.out_dir / "sources.json"
        missing = f"no unlabelled index in {self.out_dir}; run `abaw ingest SOURCE`"
        if not index_path.is_file() or not sources_path.is_file():
            raise AbawError(missing)
        try:
            meta = json.loads(sources_path.read_text())
            table = pq.read_table(index_path, columns=_COLUMNS, read_dictionary=["kind", "file"])
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise AbawError(f"{index_path} cannot be read ({exc}); rerun `abaw ingest`") from None
        stamp = (table.schema.metadata or {}).get(FINGERPRINT_KEY, b"").decode()
        if stamp != meta.get("fingerprint"):
            raise AbawError(f"{index_path} and {sources_path.name} come from different ingests; "
                            "rerun `abaw ingest`")
        if table.num_rows == 0:
            raise AbawError(missing)
        self._sources = {int(s["id"]): s for s in meta["sources"]}
        self._aligned_root = self.out_dir / meta.get("aligned_dir", "aligned")
        # Compact columns: ~22 bytes per image for a .rec (Glint360K's 17M: under 400 MB),
        # shared copy-on-write by forked DataLoader workers.
        table = table.unify_dictionaries()
        self._source = _compact_ints(table.column("source"))
        kinds, self._kind = _dictionary(table.column("kind"))
        self._kind_names = [str(k) for k in kinds.to_pylist()]
        self._file_names, self._file = _dictionary(table.column("file"))
        self._offset = table.column("offset").to_numpy()
        self._length = _compact_ints(table.column("length"))
        self._chunked = table.column("chunked").to_numpy(zero_copy_only=False)
        has_parquet = "parquet" in self._kind_names
        self._row_group = _compact_ints(table.column("row_group")) if has_parquet else None
        self._row = _compact_ints(table.column("row")) if has_parquet else None
        self._reset_handles()

    # -- per-process state ---------------------------------------------------------------
    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._fds: dict[tuple[int, str], int] = {}  # by (source id, file)
        self._groups: OrderedDict[tuple[int, str, int], pa.Array] = OrderedDict()
        self._paths: dict[tuple[int, str], Path] = {}  # checked container paths
        self._folders: dict[tuple[int, str], str] = {}  # checked folders of image files

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_fds", "_groups", "_paths", "_folders"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._reset_handles()

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()

    # -- access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._source)

    def location(self, i: int) -> str:
        """Where image ``i`` comes from, for messages: ``<source path>:<file>@<offset>``."""
        i = self._check(i)
        source = self._sources[int(self._source[i])]
        where = self._file_name(i)
        kind = self._kind_names[self._kind[i]]
        if kind == "parquet":
            where += f" row group {self._row_group[i]} row {self._row[i]}"
        elif kind in ("recordio", "tar"):
            where += f"@{self._offset[i]}"
        if kind == "aligned":
            return f"{self._aligned_root}/{where}"
        return f"{source['path']}: {where}"

    def read_bytes(self, i: int) -> bytes:
        """The stored image file's bytes (JPEG/PNG/...), read in place from the source."""
        i = self._check(i)
        if self._pid != os.getpid():
            self._reset_handles()  # a forked worker: open its own descriptors
        kind = self._kind_names[self._kind[i]]
        source = self._sources[int(self._source[i])]
        rel = self._file_name(i)
        try:
            if kind == "aligned":
                return self._file_bytes(-1, self._aligned_root, rel)
            if kind == "folder":
                return self._file_bytes(int(source["id"]), source["root"], rel)
            if kind == "parquet":
                return self._parquet_value(source, rel, i)
            fd = self._container(source, rel)
            if kind == "recordio" and self._chunked[i]:
                return rio.read_image_at(fd, int(self._offset[i]))
            length = int(self._length[i])
            data = os.pread(fd, length, int(self._offset[i]))
            if len(data) != length:
                raise OSError(f"short read: {len(data)} of {length} bytes")
            return data
        except (OSError, rio.RecordError, pa.ArrowException) as exc:
            raise AbawError(f"unlabelled image {i} ({self.location(i)}) cannot be read ({exc}); "
                            "did the data change since `abaw ingest`? rerun it") from None

    def image(self, i: int, size: int = 112) -> np.ndarray:
        """Image ``i`` as uint8 RGB [size, size, 3] (JPEG draft mode when much larger)."""
        return np.array(self.pil_image(i, size), dtype=np.uint8)

    def pil_image(self, i: int, size: int = 112) -> Image.Image:
        """Image ``i`` as a size x size RGB PIL image: what the training views work on, so the
        decoded image is not converted to an array and back."""
        data = self.read_bytes(i)
        try:
            return to_rgb_image(data, size)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error,
                UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise BrokenImage(f"unlabelled image {i} ({self.location(i)}) does not decode "
                              f"({exc}); ingest with verify='full' to skip broken images") from None

    # -- helpers -------------------------------------------------------------------------
    def _file_name(self, i: int) -> str:
        return str(self._file_names[int(self._file[i])].as_py())

    def _check(self, i: int) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"unlabelled image {i} out of range (index holds {len(self)})")
        return i % len(self)

    def _file_bytes(self, sid: int, root: str | Path, rel: str) -> bytes:
        """An image file's bytes; its folder is checked once, the file not followed if a link."""
        parent, _, name = rel.rpartition("/")
        if not _NOFOLLOW or name in ("", ".", ".."):
            return safe_join(Path(root), rel).read_bytes()
        folder = self._folders.get((sid, parent))
        if folder is None:
            if len(self._folders) >= _FOLDER_CACHE:
                self._folders.clear()
            folder = self._folders[(sid, parent)] = str(safe_join(Path(root), parent or "."))
        try:
            fd = os.open(f"{folder}/{name}", os.O_RDONLY | _NOFOLLOW)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EMLINK):
                raise
            return safe_join(Path(root), rel).read_bytes()  # a link: resolved and checked
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def _checked_path(self, source: dict[str, Any], rel: str) -> Path:
        key = (int(source["id"]), rel)
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = safe_join(Path(source["root"]), rel)
        return path

    def _container(self, source: dict[str, Any], rel: str) -> int:
        key = (int(source["id"]), rel)
        fd = self._fds.get(key)
        if fd is None:
            path = self._checked_path(source, rel)
            fd = os.open(path, os.O_RDONLY)
            expected = source.get("files", {}).get(rel)
            size = os.fstat(fd).st_size
            if expected is not None and size != expected:
                os.close(fd)
                raise AbawError(f"{path} changed since `abaw ingest` ({size} bytes, was "
                                f"{expected}); rerun `abaw ingest`")
            self._fds[key] = fd
        return fd

    def _parquet_value(self, source: dict[str, Any], rel: str, i: int) -> bytes:
        assert self._row_group is not None and self._row is not None
        key = (int(source["id"]), rel, int(self._row_group[i]))
        values = self._groups.get(key)
        if values is None:
            column = source["column"]
            path = self._checked_path(source, rel)
            table = pq.ParquetFile(path).read_row_group(key[2], columns=[column])
            values = self._groups[key] = column_values(table, column)
            while len(self._groups) > _ROW_GROUP_CACHE:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        value = values[int(self._row[i])].as_py()
        if not value:
            raise OSError("the row holds no image bytes")
        return bytes(value)

    def __repr__(self) -> str:
        return f"UnlabeledIndex({str(self.out_dir)!r}, images={len(self)})"


def _compact_ints(column: pa.ChunkedArray) -> np.ndarray:
    """The column as the smallest signed integer type that holds its values."""
    values = column.to_numpy()
    for kind in (np.int16, np.int32):
        info = np.iinfo(kind)
        if len(values) == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(kind)
    return values.astype(np.int64)


def _dictionary(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(distinct values, per-row codes) of a dictionary-encoded column."""
    combined = column.combine_chunks()
    if not pa.types.is_dictionary(combined.type):
        combined = combined.dictionary_encode()
    return combined.dictionary, _compact_ints(pa.chunked_array([combined.indices]))
