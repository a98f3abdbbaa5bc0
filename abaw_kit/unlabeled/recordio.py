"""insightface / MXNet RecordIO (``train.rec`` + ``train.idx``) in pure Python: read, scan, write.

Why pure Python: MS1MV2, Glint360K and WebFace ship as RecordIO, and mxnet is no longer
installable on current Pythons. The layout (dmlc-core ``recordio.h``, mxnet ``recordio.py``):

* a record is ``[uint32 magic][uint32 lrecord][data][zero pad to 4 bytes]`` (little endian);
  ``lrecord`` = ``cflag << 29 | length``. A payload that holds the magic word at a 4-byte
  aligned position is cut there into chunks (cflag 1 = first, 2 = middle, 3 = last, 0 = whole
  record); the magic words themselves are dropped and a reader puts them back between chunks.
* a payload starts with the header ``IfQQ`` (flag, label, id, id2); ``flag > 0`` means ``flag``
  float32 labels follow (the header's own label is then unused); the image bytes come last.
* the ``.idx`` file holds text lines ``key<TAB>offset``. insightface files keep a meta record at
  key 0 with no image and labels ``[first_non_image_key, end_of_identity_records]``: the images
  are keys ``1 .. label[0] - 1`` (identity records follow them and hold no image).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from abaw_kit.errors import AbawError
from abaw_kit.workspace import atomic_path

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_CHUNK = (1 << LENGTH_BITS) - 1
FRAME = struct.Struct("<II")  # magic, lrecord
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3
MIN_RECORD_BYTES = FRAME.size + IR_HEADER.size  # the least a record with a header takes
_RESYNC_BLOCK = 1 << 20

# Why a record could not be read: these strings are the skip categories users see.
NO_MAGIC = "bad record magic"
TRUNCATED = "truncated record"
BROKEN_CHAIN = "broken chunk chain"
BAD_HEADER = "bad record header"


class RecordError(Exception):
    """A record that cannot be read; ``reason`` is one of the categories above."""

    def __init__(self, reason: str, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason} at byte {offset}" + (f" ({detail})" if detail else ""))
        self.reason, self.offset = reason, offset


class IRHeader(NamedTuple):
    """The image-record header; ``label`` is a tuple when the record carries several labels."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


class RecordSpan(NamedTuple):
    """Where one record lies in the file, found from its frame headers alone (no payload read)."""

    offset: int  # first frame header
    end: int  # first byte after the record (padding included)
    data_offset: int  # first payload byte (of the first chunk)
    length: int  # payload length once the chunks are joined
    chunked: bool


class RecordIORecord(NamedTuple):
    """One record as ``iter_recordio`` yields it.

    ``image_offset`` is the absolute offset of the image bytes in the .rec, so a reader can
    fetch them with one read; it is -1 for a record stored in several chunks, whose bytes are
    not contiguous on disk (read those with ``read_image_at(fd, offset)``).
    """

    key: int
    offset: int
    length: int
    header: IRHeader
    image_offset: int
    image_length: int


def pad4(n: int) -> int:
    return (n + 3) & ~3


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:  # pread may return short reads on some file systems
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def locate_record(fd: int, offset: int, file_size: int) -> RecordSpan:
    """Follow the frame headers of the record starting at ``offset``; raise RecordError."""
    pos, length, chunks, data_offset = offset, 0, 0, offset + FRAME.size
    while True:
        if pos + FRAME.size > file_size:
            raise RecordError(TRUNCATED, offset, "file ends inside a frame header")
        magic, lrecord = FRAME.unpack(_pread_exact(fd, FRAME.size, pos))
        if magic != MAGIC:
            if chunks:
                raise RecordError(BROKEN_CHAIN, offset, f"no magic at continuation byte {pos}")
            raise RecordError(NO_MAGIC, offset)
        cflag, chunk_len = lrecord >> LENGTH_BITS, lrecord & MAX_CHUNK
        first = chunks == 0
        if cflag > CFLAG_LAST or (first and cflag in (CFLAG_MIDDLE, CFLAG_LAST)) or (
                not first and cflag in (CFLAG_WHOLE, CFLAG_FIRST)):
            raise RecordError(BROKEN_CHAIN, offset, f"unexpected chunk flag {cflag} at byte {pos}")
        end = pos + FRAME.size + pad4(chunk_len)
        if pos + FRAME.size + chunk_len > file_size:
            raise RecordError(TRUNCATED, offset, "file ends inside the record")
        length += chunk_len + (0 if first else len(MAGIC_BYTES))
        chunks += 1
        pos = end
        if cflag in (CFLAG_WHOLE, CFLAG_LAST):
            return RecordSpan(offset, min(end, file_size), data_offset, length, chunks > 1)


def read_payload(fd: int, span: RecordSpan) -> bytes:
    """The record's payload, its chunks joined by the magic words the writer took out."""
    if not span.chunked:
        return _pread_exact(fd, span.length, span.data_offset)
    parts: list[bytes] = []
    pos = span.offset
    while True:
        _, lrecord = FRAME.unpack(_pread_exact(fd, FRAME.size, pos))
        cflag, chunk_len = lrecord >> LENGTH_BITS, lrecord & MAX_CHUNK
        parts.append(_pread_exact(fd, chunk_len, pos + FRAME.size))
        pos += FRAME.size + pad4(chunk_len)
        if cflag == CFLAG_LAST:
            return MAGIC_BYTES.join(parts)


def parse_header(payload: bytes, offset: int = -1) -> tuple[IRHeader, int]:
    """Split a payload into its IfQQ header and the position where the image bytes start."""
    if len(payload) < IR_HEADER.size:
        raise RecordError(BAD_HEADER, offset, f"payload of {len(payload)} bytes has no header")
    flag, label, id1, id2 = IR_HEADER.unpack_from(payload)
    start = IR_HEADER.size
    if flag > 0:
        if start + 4 * flag > len(payload):
            raise RecordError(BAD_HEADER, offset, f"flag {flag} labels do not fit the payload")
        label = struct.unpack_from(f"<{flag}f", payload, start)
        start += 4 * flag
    return IRHeader(flag, label, id1, id2), start


def read_image_at(fd: int, offset: int, file_size: int | None = None) -> bytes:
    """The image bytes of the record at ``offset`` (any chunking); raises RecordError."""
    size = os.fstat(fd).st_size if file_size is None else file_size
    span = locate_record(fd, offset, size)
    payload = read_payload(fd, span)
    _, start = parse_header(payload, offset)
    return payload[start:]


def pack_payload(image: bytes, label: float | Sequence[float] = 0.0, id1: int = 0,
                 id2: int = 0) -> bytes:
    """Header + image bytes, as mxnet's ``recordio.pack`` lays them out."""
    if isinstance(label, (int, float)):
        return IR_HEADER.pack(0, float(label), id1, id2) + bytes(image)
    values = [float(v) for v in label]
    return (IR_HEADER.pack(len(values), 0.0, id1, id2) + struct.pack(f"<{len(values)}f", *values)
            + bytes(image))


def split_chunks(payload: bytes, chunk_size: int | None = None) -> list[tuple[int, bytes]]:
    """Cut a payload at every 4-byte aligned magic word (dropped): ``[(cflag, data), ...]``.

    RecordIO can only cut where the payload holds the magic word, since readers put it back
    between chunks. ``chunk_size`` caps the length of a chunk (default: the format's 2**29 - 1);
    a longer magic-free stretch raises ValueError rather than writing a file readers misread.
    """
    limit = MAX_CHUNK if chunk_size is None else min(int(chunk_size), MAX_CHUNK)
    if limit < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    pieces: list[bytes] = []
    start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            pieces.append(payload[start:pos])
            start = pos + len(MAGIC_BYTES)
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    pieces.append(payload[start:])
    longest = max(len(p) for p in pieces)
    if longest > limit:
        raise ValueError(f"a payload stretch of {longest} bytes without a magic word exceeds "
                         f"the chunk limit of {limit} bytes; RecordIO cannot split it")
    if len(pieces) == 1:
        return [(CFLAG_WHOLE, pieces[0])]
    flags = [CFLAG_FIRST] + [CFLAG_MIDDLE] * (len(pieces) - 2) + [CFLAG_LAST]
    return list(zip(flags, pieces, strict=True))


def encode_record(payload: bytes, chunk_size: int | None = None) -> bytes:
    """The on-disk bytes of one record (all its chunks, each padded to 4 bytes)."""
    out = bytearray()
    for cflag, data in split_chunks(payload, chunk_size):
        out += FRAME.pack(MAGIC, (cflag << LENGTH_BITS) | len(data))
        out += data
        out += b"\0" * (pad4(len(data)) - len(data))
    return bytes(out)


def write_recordio(rec_path: Path, idx_path: Path, images: Sequence[bytes],
                   labels: Sequence[float] | None = None, *,
                   chunk_size: int | None = None) -> None:
    """Write an insightface-style .rec/.idx pair: key 0 = meta record, keys 1..N = images.

    The meta record carries labels ``[N + 1, N + 1]`` (images are keys 1..N, no identity
    records), so insightface's loaders and ours find the same N images. Both files are written
    atomically. ``chunk_size``: see ``split_chunks``.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    count = len(images)
    with atomic_path(rec_path, suffix=".rec") as rec_tmp, \
            atomic_path(idx_path, suffix=".idx") as idx_tmp, \
            open(rec_tmp, "wb") as rec, open(idx_tmp, "w", encoding="ascii") as idx:
        offset = 0
        for key in range(count + 1):
            if key == 0:
                payload = pack_payload(b"", (float(count + 1), float(count + 1)))
            else:
                label = 0.0 if labels is None else float(labels[key - 1])
                payload = pack_payload(images[key - 1], label, key)
            data = encode_record(payload, chunk_size)
            rec.write(data)
            idx.write(f"{key}\t{offset}\n")
            offset += len(data)


def iter_idx(idx_path: Path) -> Iterator[tuple[int, int, int]]:
    """``(line_number, key, offset)`` for every line of a .idx; AbawError on a malformed line."""
    with open(idx_path, encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                key, offset = int(fields[0]), int(fields[1])
                if len(fields) != 2 or key < 0 or offset < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise AbawError(f"{idx_path} line {line_no}: expected 'key<TAB>offset' with two "
                                f"non-negative integers, got {line.strip()[:60]!r}") from None
            yield line_no, key, offset


def scan_spans(fd: int, file_size: int) -> Iterator[RecordSpan | RecordError]:
    """Walk a .rec from byte 0 without an index; after a bad frame, resynchronise.

    Resynchronising means searching the next aligned magic word that starts a record (cflag 0
    or 1), as dmlc's record splitter does. A truncated tail ends the walk.
    """
    pos = 0
    while pos < file_size:
        try:
            span = locate_record(fd, pos, file_size)
        except RecordError as err:
            yield err
            if err.reason == TRUNCATED:
                return
            pos = _next_record_start(fd, pos + 4, file_size)
            continue
        yield span
        pos = span.end


def _next_record_start(fd: int, pos: int, file_size: int) -> int:
    pos = pad4(pos)
    while pos < file_size:
        block = _pread_exact(fd, _RESYNC_BLOCK + FRAME.size, pos)
        hit = block.find(MAGIC_BYTES)
        while hit != -1:
            if hit % 4 == 0 and hit + FRAME.size <= len(block):
                cflag = FRAME.unpack_from(block, hit)[1] >> LENGTH_BITS
                if cflag in (CFLAG_WHOLE, CFLAG_FIRST):
                    return pos + hit
            hit = block.find(MAGIC_BYTES, hit + 1)
        pos += _RESYNC_BLOCK
    return file_size


def _record(fd: int, key: int, span: RecordSpan) -> RecordIORecord:
    payload = read_payload(fd, span)
    header, start = parse_header(payload, span.offset)
    image_offset = -1 if span.chunked else span.data_offset + start
    return RecordIORecord(key, span.offset, span.length, header, image_offset,
                          len(payload) - start)


def iter_recordio(rec_path: str | Path,
                  idx_path: str | Path | None = None) -> Iterator[RecordIORecord]:
    """Every record of a .rec (meta record included), in key order when a .idx is given.

    Strict: a record that cannot be read raises AbawError naming the file and byte offset.
    ``abaw ingest`` uses the lower-level functions instead, to count and skip bad records.
    """
    rec_path = Path(rec_path)
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if idx_path is not None:
            entries = sorted((key, offset) for _, key, offset in iter_idx(Path(idx_path)))
            walk: Iterator[tuple[int, RecordSpan | RecordError]] = (
                (key, _safe_locate(fd, offset, size)) for key, offset in entries)
        else:
            walk = enumerate(scan_spans(fd, size))
        for key, span in walk:
            if isinstance(span, RecordError):
                raise AbawError(f"{rec_path}: record {key}: {span}")
            try:
                yield _record(fd, key, span)
            except RecordError as err:
                raise AbawError(f"{rec_path}: record {key}: {err}") from None
    finally:
        os.close(fd)


def _safe_locate(fd: int, offset: int, size: int) -> RecordSpan | RecordError:
    try:
        return locate_record(fd, offset, size)
    except RecordError as err:
        return err
