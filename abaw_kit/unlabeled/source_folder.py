"""Image folders, walked recursively in sorted order; symlinks followed but never in a loop."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.images import MAX_IMAGE_BYTES, NOT_A_FILE, TOO_LARGE, is_image_name
from abaw_kit.unlabeled.sources import Candidate, Location, Skip, Source

NOT_IMAGE_FILE = "not an image file"
SYMLINK_LOOP = "symlink loop"
LINK_OUTSIDE = "link outside the source"
BROKEN_LINK = "broken link"
UNREADABLE = "unreadable file"
UNREADABLE_DIR = "unreadable folder"


@dataclass
class FolderSource(Source):
    kind: ClassVar[str] = "folder"

    def __post_init__(self) -> None:
        if not self.path.is_dir():
            raise AbawError(f"{self.path} is not a folder of images")
        self.root = self.path
        self._real_root = self.path.resolve()

    def candidates(self, start: int = 0) -> Iterator[Candidate]:
        top = os.stat(self._real_root)
        for item, (rel, problem) in enumerate(self._walk(self._real_root, "", {_key(top)})):
            if item >= start:
                yield Candidate(item, rel, problem)

    def _walk(self, real_dir: Path, rel_dir: str,
              ancestors: set[tuple[int, int]]) -> Iterator[tuple[str, str | None]]:
        """(relative path, problem) for every file under ``real_dir``, depth first, by name."""
        try:
            entries = sorted(os.scandir(real_dir), key=lambda e: e.name)
        except OSError:
            yield rel_dir or ".", UNREADABLE_DIR
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not target.exists():
                    yield rel, BROKEN_LINK
                    continue
                if target != self._real_root and self._real_root not in target.parents:
                    yield rel, LINK_OUTSIDE
                    continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                yield rel, UNREADABLE
                continue
            if is_dir:
                key = _key(entry.stat())
                if key in ancestors:
                    yield rel, SYMLINK_LOOP
                    continue
                yield from self._walk(Path(entry.path), rel, ancestors | {key})
            elif is_image_name(entry.name):
                yield rel, None
            else:
                yield rel, NOT_IMAGE_FILE

    def read(self, ref: Any) -> tuple[bytes, Location]:
        """The file's bytes; the size is checked first, and a FIFO or device named like an
        image is refused (reading one would block or never end)."""
        try:
            fd = os.open(self._real_root / ref, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise Skip(NOT_A_FILE, ref)
                if info.st_size > MAX_IMAGE_BYTES:
                    raise Skip(TOO_LARGE, f"{ref}: {info.st_size} bytes")
                with os.fdopen(os.dup(fd), "rb") as handle:
                    data = handle.read(MAX_IMAGE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise Skip(UNREADABLE, f"{ref}: {exc.strerror or exc}") from None
        if len(data) > MAX_IMAGE_BYTES:  # grew since the fstat
            raise Skip(TOO_LARGE, ref)
        return data, Location(ref, 0, len(data))


def _key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino
