"""WebDataset-style tar shards, read in place: members are never extracted to disk.

A sample is the group of consecutive members sharing a key (the path up to the first dot of
the file name, as WebDataset defines it); ingest takes the sample's first image member and
records where its bytes start inside the tar (``TarInfo.offset_data``), so training reads them
with one positioned read.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO, ClassVar

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.images import MAX_IMAGE_BYTES, TOO_LARGE, is_image_name
from abaw_kit.unlabeled.sources import Candidate, Location, Skip, Source

UNSAFE_MEMBER = "unsafe member name"
NO_IMAGE_MEMBER = "sample without an image member"
UNREADABLE_TAR = "unreadable tar"
TRUNCATED_TAR = "truncated tar"
DAMAGED_HEADER = "damaged tar header"


@dataclass
class TarSource(Source):
    kind: ClassVar[str] = "tar"

    def __post_init__(self) -> None:
        if self.path.is_dir():
            self.root = self.path
            self.files = sorted(p.relative_to(self.path).as_posix()
                                for p in self.path.rglob("*") if p.suffix.lower() == ".tar"
                                and p.is_file())
            if not self.files:
                raise AbawError(f"{self.path} holds no .tar shards")
        else:
            self.root = self.path.parent
            self.files = [self.path.name]
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}

    def candidates(self, start: int = 0) -> Iterator[Candidate]:
        item = 0
        for name in self.files:
            for ref, problem in self._samples(name):
                if item >= start:
                    yield Candidate(item, ref, problem)
                item += 1

    def _samples(self, name: str) -> Iterator[tuple[Any, str | None]]:
        """One (ref, problem) per sample of one shard; members' data are seeked over, not read.

        ``ignore_zeros`` makes tarfile step over a damaged header to the next good one instead
        of ending the shard there in silence; the bytes it stepped over count as a problem.
        """
        path = self.root / name
        try:
            archive = tarfile.open(path, mode="r:", ignore_zeros=True)  # noqa: SIM115 - below
        except (tarfile.TarError, OSError, ValueError):
            yield None, UNREADABLE_TAR
            return
        key: str | None = None
        image: tarfile.TarInfo | None = None
        expected = 0  # where the next header starts when nothing is damaged
        with archive, open(path, "rb") as raw:
            while True:
                try:
                    member = archive.next()
                except (tarfile.TarError, OSError, EOFError, ValueError):
                    member, truncated = None, True
                else:
                    truncated = False
                archive.members = []  # tarfile keeps every header otherwise: memory grows
                skipped_to = member.offset if member is not None else None
                if not truncated and _holds_data(raw, expected, skipped_to):
                    yield None, DAMAGED_HEADER
                if member is None:
                    if key is not None:
                        yield self._sample(name, image)
                    if truncated:
                        yield None, TRUNCATED_TAR
                    return
                expected = archive.offset  # after this member's data (sparse ones too)
                if member.isdir():
                    continue
                if not _safe_name(member.name) or not member.isreg():
                    yield None, UNSAFE_MEMBER
                    continue
                member_key = _sample_key(member.name)
                if member_key != key:
                    if key is not None:
                        yield self._sample(name, image)
                    key, image = member_key, None
                if image is None and is_image_name(member.name):
                    image = member

    @staticmethod
    def _sample(name: str, image: tarfile.TarInfo | None) -> tuple[Any, str | None]:
        if image is None:
            return None, NO_IMAGE_MEMBER
        return (name, image.name, image.offset_data, image.size), None

    def read(self, ref: Any) -> tuple[bytes, Location]:
        name, member, offset, size = ref
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self.root / name, os.O_RDONLY)
            self._sizes[name] = os.fstat(fd).st_size
        # The size comes from the member's header: check it before allocating that much.
        if offset + size > self._sizes[name]:
            raise Skip(TRUNCATED_TAR, f"{name}: member {member} claims {size} bytes at byte "
                                      f"{offset}, past the end of the archive")
        if size > MAX_IMAGE_BYTES:
            raise Skip(TOO_LARGE, f"{name}: member {member} holds {size} bytes")
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise Skip(TRUNCATED_TAR, f"{name}: {member}")
        return data, Location(name, offset, size, member=member)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["files"] = {name: (self.root / name).stat().st_size for name in self.files}
        return info

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _holds_data(raw: BinaryIO, start: int, end: int | None) -> bool:
    """Whether bytes ``start:end`` (``end`` None: to the end) are not all zero padding."""
    if end is not None and end <= start:
        return False
    raw.seek(start)
    left = -1 if end is None else end - start
    while left != 0:
        block = raw.read(1 << 20 if left < 0 else min(left, 1 << 20))
        if not block:
            return False
        if block.count(0) != len(block):
            return True
        left = -1 if left < 0 else left - len(block)
    return False


def _safe_name(name: str) -> bool:
    """No absolute path, no ``..``: a member name must stay inside the archive's own tree."""
    if not name or name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute():
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts and not (len(parts[0]) == 2 and parts[0][1] == ":")


def _sample_key(name: str) -> str:
    """WebDataset's key: the member path up to the first dot of its file name."""
    folder, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem
