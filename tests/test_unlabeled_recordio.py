"""insightface RecordIO: our writer's bytes follow the format, and our readers undo the chunking.

Also home of the small image/RecordIO builders the other unlabelled-data tests import.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.recordio import (
    MAGIC_BYTES,
    iter_recordio,
    read_image_at,
    split_chunks,
    write_recordio,
)

MAGIC = 0xCED7230A
HEADER_BYTES = 24  # IfQQ


def make_jpeg(seed: int, size: int = 24, quality: int = 90) -> bytes:
    """A distinct small JPEG per seed (random pixels, so no two seeds give the same bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_with_magic(seed: int, words: int, gap: int = 12) -> bytes:
    """A valid JPEG whose comment segment holds ``words`` magic words, each at a position that
    is 4-byte aligned in the record payload (image bytes start after the 24-byte header)."""
    base = make_jpeg(seed)
    body = bytearray(b"\0\0")  # the comment's data starts at image byte 6: pad to 8
    for _ in range(words):
        body += MAGIC_BYTES + bytes(range(gap))
    segment = b"\xff\xfe" + struct.pack(">H", len(body) + 2) + bytes(body)
    return base[:2] + segment + base[2:]


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def frames(rec_path: Path) -> list[tuple[int, int, int]]:
    """(offset, cflag, length) of every frame, parsed straight from the format description."""
    data = rec_path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        magic, lrecord = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC, f"frame at {pos} lacks the magic"
        length = lrecord & ((1 << 29) - 1)
        out.append((pos, lrecord >> 29, length))
        pos += 8 + (length + 3) // 4 * 4
    assert pos == len(data)
    return out


def test_writer_follows_the_format_and_readers_get_the_images_back(tmp_path):
    images = [make_jpeg(0), jpeg_with_magic(1, words=1), make_jpeg(2), jpeg_with_magic(3, 5)]
    assert all(decode(img).shape == (24, 24, 3) for img in images)  # the planted JPEGs are valid
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, images, labels=[7.0, 8.0, 9.0, 10.0])

    found = frames(rec)
    flags = [cflag for _, cflag, _ in found]
    # meta, whole, (first, last), whole, (first, middle x4, last)
    assert flags == [0, 0, 1, 3, 0, 1, 2, 2, 2, 2, 3]
    assert all(offset % 4 == 0 for offset, _, _ in found)
    lines = [line.split("\t") for line in idx.read_text().splitlines()]
    record_starts = [offset for offset, cflag, _ in found if cflag in (0, 1)]
    assert [(int(k), int(o)) for k, o in lines] == list(enumerate(record_starts))

    records = list(iter_recordio(rec, idx))
    meta = records[0]
    assert meta.key == 0 and meta.image_length == 0 and meta.header.flag == 2
    assert meta.header.label == (5.0, 5.0)  # insightface: images are keys 1 .. label[0] - 1
    fd = os.open(rec, os.O_RDONLY)
    try:
        for record, image, label in zip(records[1:], images, [7.0, 8.0, 9.0, 10.0], strict=True):
            assert record.header.label == label and record.image_length == len(image)
            if record.image_offset >= 0:
                assert os.pread(fd, len(image), record.image_offset) == image
            assert read_image_at(fd, record.offset) == image
    finally:
        os.close(fd)
    assert [r.image_offset == -1 for r in records[1:]] == [False, True, False, True]
    assert [(r.key, r.offset) for r in iter_recordio(rec)] == [(r.key, r.offset) for r in records]


def test_only_aligned_magic_words_split_a_record():
    payload = b"ab" + MAGIC_BYTES + b"cdefgh" + MAGIC_BYTES + b"ij"  # magic at 2 and at 12
    assert split_chunks(payload) == [(1, b"ab" + MAGIC_BYTES + b"cdefgh"), (3, b"ij")]
    assert split_chunks(b"plain") == [(0, b"plain")]
    assert split_chunks(MAGIC_BYTES) == [(1, b""), (3, b"")]


def test_chunk_size_caps_chunks_the_format_can_split(tmp_path):
    long_image = jpeg_with_magic(4, words=20, gap=28)
    write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", [long_image], chunk_size=1500)
    chunks = [f for f in frames(tmp_path / "a.rec") if f[1] != 0]
    assert len(chunks) == 21 and max(length for _, _, length in chunks) <= 1500
    [record] = list(iter_recordio(tmp_path / "a.rec", tmp_path / "a.idx"))[1:]
    fd = os.open(tmp_path / "a.rec", os.O_RDONLY)
    try:
        assert read_image_at(fd, record.offset) == long_image
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="without a magic word"):
        write_recordio(tmp_path / "b.rec", tmp_path / "b.idx", [make_jpeg(5)], chunk_size=64)
    assert not (tmp_path / "b.rec").exists() and not (tmp_path / "b.idx").exists()


def test_iter_recordio_is_strict_about_damage(tmp_path):
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, [make_jpeg(i) for i in range(3)])
    data = bytearray(rec.read_bytes())
    rec.write_bytes(bytes(data[:-10]))
    with pytest.raises(AbawError, match="train.rec: record 3: truncated record"):
        list(iter_recordio(rec, idx))
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(AbawError, match="train.idx line 2"):
        list(iter_recordio(rec, idx))
