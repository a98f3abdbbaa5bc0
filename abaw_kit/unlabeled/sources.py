"""The interface every unlabelled-data format implements, its registry and format detection.

A source lists its candidates in a stable order (cheaply: no image bytes are read) and reads
one candidate's bytes on demand. That split is what makes sharding, sampling and resuming
cheap: a candidate another shard owns, or one before the resume point, is never read.
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from abaw_kit.errors import AbawError


class Skip(Exception):
    """An item ingest cannot use; ``reason`` is the category counted in the summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (f": {detail}" if detail else ""))
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class Location:
    """Where an image's bytes lie, relative to its source's root: what the index stores."""

    file: str
    offset: int = 0
    length: int = 0
    member: str = ""
    row_group: int = -1
    row: int = -1
    chunked: bool = False
    kind: str | None = None  # None: the source's kind; "aligned" for crops ingest wrote


class Candidate(NamedTuple):
    item: int  # position in the source's stable order (sharding, sampling, resuming use it)
    ref: Any  # what ``Source.read`` needs
    problem: str | None = None  # a reason to skip known without reading the bytes


@dataclass
class Source(ABC):
    """One input given to ``ingest`` (a .rec, a folder, tar shards, parquet files)."""

    sid: int
    path: Path
    kind: ClassVar[str]
    root: Path = field(init=False)  # every Location.file is relative to this folder

    @abstractmethod
    def candidates(self, start: int = 0) -> Iterator[Candidate]:
        """Candidates with ``item >= start``, in the stable order."""

    @abstractmethod
    def read(self, ref: Any) -> tuple[bytes, Location]:
        """The image bytes of one candidate and where they lie; raise Skip when unusable."""

    def count(self) -> int:
        """Number of candidates (subclasses answer from metadata when they can)."""
        return sum(1 for _ in self.candidates())

    def image_size(self) -> tuple[int, int] | None:
        """The size every image has, when the format records it (insightface ``property``)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the index reader needs to find the bytes again (saved in sources.json)."""
        return {"id": self.sid, "kind": self.kind, "path": str(self.path), "root": str(self.root)}

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold no descriptor
        """Release open files (sources may keep descriptors between reads)."""


FORMATS: dict[str, str] = {
    "recordio": "abaw_kit.unlabeled.source_recordio:RecordIOSource",
    "folder": "abaw_kit.unlabeled.source_folder:FolderSource",
    "tar": "abaw_kit.unlabeled.source_tar:TarSource",
    "parquet": "abaw_kit.unlabeled.source_parquet:ParquetSource",
}
ALIASES = {"rec": "recordio", "mxnet": "recordio", "insightface": "recordio", "images": "folder",
           "webdataset": "tar", "wds": "tar"}
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def resolve_format(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        close = difflib.get_close_matches(name.lower(), [*FORMATS, *ALIASES], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AbawError(f"unknown source format {name!r}: choose one of "
                        f"{', '.join(FORMATS)}{hint}")
    return key


def detect_format(path: Path) -> str:
    """The format of one source path, from its name or its folder's top-level entries."""
    name = path.name.lower()
    if name.endswith(COMPRESSED_TAR):
        raise AbawError(f"{path}: compressed tar shards cannot be read in place; "
                        "decompress them to plain .tar first")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".rec", ".idx"):
            return "recordio"
        if suffix == ".tar":
            return "tar"
        if suffix == ".parquet":
            return "parquet"
        raise AbawError(f"cannot tell the format of {path}: expected a .rec, .tar or .parquet "
                        "file or a folder; pass --format recordio|folder|tar|parquet")
    if not path.is_dir():
        raise AbawError(f"unlabelled source {path} does not exist")
    suffixes = {entry.suffix.lower() for entry in path.iterdir() if entry.is_file()}
    if ".rec" in suffixes:
        return "recordio"
    if ".tar" in suffixes:
        return "tar"
    if ".parquet" in suffixes or any((path / "data").glob("*.parquet")):
        return "parquet"
    return "folder"


def open_source(sid: int, path: str | Path, format: str | None = None,
                column: str | None = None) -> Source:
    """Build the reader for one source path (format detected unless given)."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise AbawError(f"unlabelled source {path} does not exist")
    key = resolve_format(format) if format else detect_format(path)
    module_name, class_name = FORMATS[key].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(sid, path, column=column) if key == "parquet" else cls(sid, path)
