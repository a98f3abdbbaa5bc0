"""insightface RecordIO sources (MS1MV2, Glint360K, WebFace ``train.rec`` + ``train.idx``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled import recordio as rio
from abaw_kit.unlabeled.images import MAX_IMAGE_BYTES, TOO_LARGE
from abaw_kit.unlabeled.sources import Candidate, Location, Skip, Source

IDX_MISMATCH = "idx offset mismatch"
NO_IMAGE = "record without image bytes"
PREFLIGHT_ENTRIES = 64
META_MAX_BYTES = 1 << 16  # a meta record is a header and a few labels


class _TooLarge(Exception):
    """A record far larger than any image ingest accepts."""


@dataclass
class RecordIOSource(Source):
    kind: ClassVar[str] = "recordio"

    def __post_init__(self) -> None:
        self.rec_path, self.idx_path = _resolve_files(self.path)
        self.root = self.rec_path.parent
        self._fd: int | None = None
        self._size = 0
        self._image_end: int | None = None  # meta record: images are keys 1 .. end - 1
        self._checked = False
        self._idx_sorted: bool | None = None

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._size = os.fstat(self._fd).st_size
        if not self._checked:
            self._checked = True
            if self._size == 0:
                raise AbawError(f"{self.rec_path} is empty; expected an insightface RecordIO file")
            if self.idx_path is None and os.pread(self._fd, 4, 0) != rio.MAGIC_BYTES:
                raise AbawError(f"{self.rec_path} is not a RecordIO file: no record magic "
                                "0xced7230a at byte 0")
            if self.idx_path is not None:
                self._preflight_idx()
            self._image_end = self._find_meta()
        return self._fd

    def _preflight_idx(self) -> None:
        """Refuse an .idx that belongs to another .rec before reading millions of records."""
        assert self._fd is not None
        checked = bad = 0
        for _, offset in self._idx_entries():
            checked += 1
            bad += os.pread(self._fd, 4, offset) != rio.MAGIC_BYTES
            if checked >= PREFLIGHT_ENTRIES:
                break
        if checked == 0:
            raise AbawError(f"{self.idx_path} lists no records; expected 'key<TAB>offset' lines")
        if bad * 2 > checked:
            raise AbawError(f"{self.idx_path}: the .idx does not match the .rec "
                            f"{self.rec_path.name} ({bad} of the first {checked} offsets "
                            "point at no record); "
                            "rebuild the .idx, or move it away to scan the .rec without it")

    def _find_meta(self) -> int | None:
        """insightface's key-0 meta record (no image, labels [end, ...]) -> end; else None."""
        assert self._fd is not None
        offset = 0
        if self.idx_path is not None:
            first = next(self._idx_entries(), None)
            if first is None or first[0] != 0:
                return None
            offset = first[1]
        try:
            span = rio.locate_record(self._fd, offset, self._size)
            if span.length > META_MAX_BYTES:
                return None  # an image (im2rec keeps no meta record), or damage: not read
            header, start = rio.parse_header(rio.read_payload(self._fd, span), offset)
        except rio.RecordError:
            return None
        if span.length == start and header.flag >= 1:
            return self._image_end_from(header.label[0])  # type: ignore[index]
        return None

    def _image_end_from(self, claim: float) -> int | None:
        """The meta record's label[0] (1 + the image count), checked against the file size.

        Why: without an .idx the count is taken on trust to plan the subset and the verify
        sample, so a damaged claim of 10**18 images would loop for ever.
        """
        damaged = "the file is damaged; re-download it"
        if not math.isfinite(claim):
            raise AbawError(f"{self.rec_path}: the meta record (key 0) has label[0] = {claim}; "
                            f"expected 1 + the number of images; {damaged}")
        end, most = int(claim), self._size // rio.MIN_RECORD_BYTES
        if end - 1 > most:
            raise AbawError(f"{self.rec_path}: the meta record (key 0) claims {end - 1} images, "
                            f"but a file of {self._size} bytes holds at most {most} (a record "
                            f"takes {rio.MIN_RECORD_BYTES} bytes or more); {damaged}")
        return end if end >= 1 else None

    def _idx_entries(self) -> Iterator[tuple[int, int]]:
        """(key, offset) in key order: streamed when the .idx is sorted (insightface's are)."""
        assert self.idx_path is not None
        if self._idx_sorted is None:
            keys = (key for _, key, _ in rio.iter_idx(self.idx_path))
            previous = -1
            self._idx_sorted = True
            for key in keys:
                if key <= previous:
                    self._idx_sorted = False
                    break
                previous = key
        if self._idx_sorted:
            for _, key, offset in rio.iter_idx(self.idx_path):
                yield key, offset
            return
        # Unsorted or repeated keys: load two int64 columns (16 bytes per record) and sort.
        pairs = np.array([(k, o) for _, k, o in rio.iter_idx(self.idx_path)], dtype=np.int64)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        keys_sorted = pairs[:, 0]
        first = np.concatenate(([True], keys_sorted[1:] != keys_sorted[:-1]))  # first one wins
        for key, offset in pairs[first]:
            yield int(key), int(offset)

    def _is_image_key(self, key: int) -> bool:
        if self._image_end is None:
            return True
        return 1 <= key < self._image_end

    # -- Source interface ------------------------------------------------------------------
    def candidates(self, start: int = 0) -> Iterator[Candidate]:
        self._open()
        if self.idx_path is not None:
            yield from self._idx_candidates(start)
        else:
            yield from self._scan_candidates(start)

    def _idx_candidates(self, start: int) -> Iterator[Candidate]:
        item = 0
        for key, offset in self._idx_entries():
            if not self._is_image_key(key):
                continue
            if item >= start:
                yield Candidate(item, (key, offset))
            item += 1

    def _scan_candidates(self, start: int) -> Iterator[Candidate]:
        assert self._fd is not None
        item, key = 0, 0
        for span in rio.scan_spans(self._fd, self._size):
            if isinstance(span, rio.RecordError):
                if item >= start:
                    yield Candidate(item, None, span.reason)
                item += 1
                continue
            if key == 0 and self._image_end is not None:
                key += 1  # the meta record
                continue
            if self._image_end is not None and key >= self._image_end:
                return  # identity records follow the images
            if item >= start:
                yield Candidate(item, (key, span))
            item += 1
            key += 1

    def count(self) -> int:
        self._open()
        if self.idx_path is None and self._image_end is not None:
            return self._image_end - 1
        return super().count()

    def read(self, ref: Any) -> tuple[bytes, Location]:
        fd = self._open()
        key, where = ref
        try:
            span = where if isinstance(where, rio.RecordSpan) else self._locate(where)
            if span.length > MAX_IMAGE_BYTES + rio.IR_HEADER.size:
                raise _TooLarge(f"record of {span.length} bytes")  # not read into memory
            payload = rio.read_payload(fd, span)
            _, start = rio.parse_header(payload, span.offset)
        except rio.RecordError as err:
            raise Skip(err.reason, f"{self.rec_path.name} key {key}: {err}") from None
        except _TooLarge as err:
            raise Skip(TOO_LARGE, f"{self.rec_path.name} key {key}: {err}") from None
        image = payload[start:]
        if not image:
            raise Skip(NO_IMAGE, f"{self.rec_path.name} key {key}")
        if span.chunked:
            return image, Location(self.rec_path.name, span.offset, len(image), chunked=True)
        return image, Location(self.rec_path.name, span.data_offset + start, len(image))

    def _locate(self, offset: int) -> rio.RecordSpan:
        """The record an .idx offset points at; tell a stale .idx from one damaged record."""
        assert self._fd is not None
        try:
            return rio.locate_record(self._fd, offset, self._size)
        except rio.RecordError as err:
            if err.reason == rio.NO_MAGIC and not self._framing_holds(offset):
                raise rio.RecordError(IDX_MISMATCH, offset) from None
            raise

    def _framing_holds(self, offset: int) -> bool:
        """Whether bytes at ``offset`` look like a record whose magic alone was damaged."""
        assert self._fd is not None
        if offset + rio.FRAME.size > self._size:
            return False
        lrecord = rio.FRAME.unpack(os.pread(self._fd, rio.FRAME.size, offset))[1]
        if lrecord >> rio.LENGTH_BITS not in (rio.CFLAG_WHOLE, rio.CFLAG_FIRST):
            return False
        end = offset + rio.FRAME.size + rio.pad4(lrecord & rio.MAX_CHUNK)
        return end == self._size or os.pread(self._fd, 4, end) == rio.MAGIC_BYTES

    def image_size(self) -> tuple[int, int] | None:
        return self._property_size

    @cached_property
    def _property_size(self) -> tuple[int, int] | None:
        """insightface's ``property`` file: ``num_classes,height,width`` (read once)."""
        return _read_property(self.root / "property")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["files"] = {self.rec_path.name: self.rec_path.stat().st_size}
        info["idx"] = self.idx_path.name if self.idx_path else None
        return info

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _resolve_files(path: Path) -> tuple[Path, Path | None]:
    """A folder with one ``.rec`` (``train.rec`` preferred), a ``.rec``, or an ``.idx``."""
    if path.is_dir():
        recs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".rec" and p.is_file())
        named = [p for p in recs if p.name == "train.rec"]
        if named:
            rec = named[0]
        elif len(recs) == 1:
            rec = recs[0]
        elif not recs:
            raise AbawError(f"{path} holds no .rec file")
        else:
            raise AbawError(f"{path} holds several .rec files ({', '.join(p.name for p in recs)});"
                            " pass the one to ingest")
    elif path.suffix.lower() == ".idx":
        rec = path.with_suffix(".rec")
        if not rec.is_file():
            raise AbawError(f"{path}: no {rec.name} beside this .idx")
        return rec, path
    else:
        rec = path
    idx = rec.with_suffix(".idx")
    return rec, idx if idx.is_file() else None


def _read_property(path: Path) -> tuple[int, int] | None:
    try:
        fields = path.read_text(encoding="ascii").strip().split(",")
        height, width = int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return (width, height) if width > 0 and height > 0 else None
