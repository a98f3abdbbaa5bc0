"""Damaged or unexpected unlabelled data: each case is skipped and counted with its reason, or,
when nothing in a source is usable, one clear AbawError. Nothing is written outside out_dir."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_unlabeled_ingest import add_tar_member, build_rec, index_table
from test_unlabeled_recordio import make_jpeg

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled import source_folder, source_parquet, source_recordio, source_tar
from abaw_kit.unlabeled.ingest import check_out_dir, ingest, merge
from abaw_kit.unlabeled.recordio import encode_record, pack_payload


def idx_offsets(rec_dir: Path) -> list[int]:
    return [int(line.split("\t")[1]) for line in (rec_dir / "train.idx").read_text().splitlines()]


@pytest.mark.parametrize("with_idx", [True, False])
def test_truncated_rec_keeps_every_whole_record(tmp_path, with_idx):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(4)])
    data = (rec / "train.rec").read_bytes()
    (rec / "train.rec").write_bytes(data[:-40])
    if not with_idx:
        (rec / "train.idx").unlink()
    summary = ingest([rec], tmp_path / "out")
    assert summary["ingested"] == 3
    assert summary["skipped_by_reason"] == {"truncated record": 1}


@pytest.mark.parametrize("with_idx", [True, False])
def test_a_record_with_a_wrong_magic_is_skipped_and_the_rest_read(tmp_path, with_idx):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(5)])
    data = bytearray((rec / "train.rec").read_bytes())
    bad = idx_offsets(rec)[2]
    data[bad:bad + 4] = b"\xde\xad\xbe\xef"
    (rec / "train.rec").write_bytes(bytes(data))
    if not with_idx:
        (rec / "train.idx").unlink()
    summary = ingest([rec], tmp_path / "out")
    assert summary["ingested"] == 4
    assert summary["skipped_by_reason"] == {"bad record magic": 1}
    items = index_table(tmp_path / "out")["file"].tolist()
    assert items == ["train.rec"] * 4


def test_idx_offsets_that_point_at_no_record(tmp_path):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(6)])
    lines = (rec / "train.idx").read_text().splitlines()
    key, offset = lines[3].split("\t")
    lines[3] = f"{key}\t{int(offset) + 12}"  # inside record 3's payload
    (rec / "train.idx").write_text("\n".join(lines) + "\n")
    summary = ingest([rec], tmp_path / "out")
    assert summary["ingested"] == 5 and summary["skipped_by_reason"] == {"idx offset mismatch": 1}

    shifted = [f"{k}\t{int(o) + 8}" for k, o in (line.split("\t") for line in lines)]
    (rec / "train.idx").write_text("\n".join(shifted) + "\n")
    with pytest.raises(AbawError, match=r"train.idx: the .idx does not match the .rec"):
        ingest([rec], tmp_path / "out2")
    (rec / "train.idx").write_text("0\t0\n1\tseven\n")
    with pytest.raises(AbawError, match=r"train.idx line 2: expected 'key<TAB>offset'"):
        ingest([rec], tmp_path / "out3")


def test_a_file_that_is_not_recordio(tmp_path):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(AbawError, match="is not a RecordIO file"):
        ingest([tmp_path / "rec"], tmp_path / "out")
    (tmp_path / "rec" / "train.rec").write_bytes(b"")
    with pytest.raises(AbawError, match="train.rec is empty"):
        ingest([tmp_path / "rec"], tmp_path / "out")


def test_bad_files_in_a_folder_are_counted_by_reason(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    good = make_jpeg(0)
    (folder / "good.jpg").write_bytes(good)
    (folder / "sub" / "cut.jpg").write_bytes(make_jpeg(1)[:300])
    (folder / "sub" / "zero.png").write_bytes(b"")
    (folder / "sub" / "fake.jpg").write_bytes(b"this is not an image at all")
    (folder / "notes.txt").write_text("hello")
    summary = ingest([folder], tmp_path / "out")
    assert summary["ingested"] == 1 and summary["images_seen"] == 5
    assert summary["skipped_by_reason"] == {"corrupt image": 1, "empty file": 1,
                                            "not an image": 1, "not an image file": 1}
    unchecked = ingest([folder], tmp_path / "trusting", verify="none")
    assert unchecked["ingested"] == 3  # verify=none trusts image-named files with bytes
    assert unchecked["skipped_by_reason"] == {"empty file": 1, "not an image file": 1}


def test_symlink_loops_and_escaping_links_are_not_followed(tmp_path):
    folder = tmp_path / "faces"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "one.jpg").write_bytes(make_jpeg(0))
    (folder / "a" / "b" / "loop").symlink_to(folder / "a")  # a/b/loop -> a (an ancestor)
    (folder / "self").symlink_to(".")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(make_jpeg(1))
    (folder / "escape").symlink_to(outside)
    (folder / "escape.jpg").symlink_to(outside / "secret.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    summary = ingest([folder], tmp_path / "out")
    assert summary["ingested"] == 1
    assert summary["skipped_by_reason"] == {"symlink loop": 2, "link outside the source": 2,
                                            "broken link": 1}


def test_unsafe_tar_members_are_refused_and_never_extracted(tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as archive:
        add_tar_member(archive, "ok/0001.jpg", make_jpeg(0))
        add_tar_member(archive, "../../x.jpg", make_jpeg(1))
        add_tar_member(archive, "/abs/x.jpg", make_jpeg(2))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        add_tar_member(archive, "ok/0002.json", b"{}")  # a sample without an image
    before = sorted(p for p in tmp_path.rglob("*"))
    summary = ingest([shard], tmp_path / "out")
    assert summary["ingested"] == 1
    assert summary["skipped_by_reason"] == {"unsafe member name": 3,
                                            "sample without an image member": 1}
    after = sorted(p for p in tmp_path.rglob("*") if (tmp_path / "out") not in p.parents)
    assert [p for p in after if p != tmp_path / "out"] == before
    assert not Path("/abs/x.jpg").exists() and not (tmp_path.parent.parent / "x.jpg").exists()


def test_a_truncated_tar_keeps_its_complete_members(tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as archive:
        for i in range(3):
            add_tar_member(archive, f"{i:04d}.jpg", make_jpeg(i))
    data = shard.read_bytes()
    cut = data.index(make_jpeg(2)) + 100
    shard.write_bytes(data[:cut])
    summary = ingest([shard], tmp_path / "out")
    assert summary["ingested"] == 2
    assert set(summary["skipped_by_reason"]) == {"truncated tar"}


def test_parquet_columns_are_checked(tmp_path):
    table = pa.table({"name": ["a", "b", "c"],
                      "picture": pa.array([make_jpeg(0), None, make_jpeg(1)], pa.binary())})
    pq.write_table(table, tmp_path / "faces.parquet")
    summary = ingest([tmp_path / "faces.parquet"], tmp_path / "out")
    assert summary["ingested"] == 2
    assert summary["skipped_by_reason"] == {"row without image bytes": 1}
    with pytest.raises(AbawError, match="no column 'img'; columns are name, picture"):
        ingest([tmp_path / "faces.parquet"], tmp_path / "out2", column="img")
    with pytest.raises(AbawError, match="column 'name' is string"):
        ingest([tmp_path / "faces.parquet"], tmp_path / "out3", column="name")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(AbawError, match="no column holds image bytes"):
        ingest([tmp_path / "numbers.parquet"], tmp_path / "out4")


def test_unusable_sources_are_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AbawError, match="no images found in .*empty"):
        ingest([empty], tmp_path / "out")
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(AbawError, match=r"no images found in .*not an image file: 1"):
        ingest([empty], tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(make_jpeg(0)[:200])
    (broken / "b.jpg").write_bytes(b"")
    with pytest.raises(AbawError, match=r"no usable image in .*broken \(corrupt image: 1; "
                                        r"empty file: 1\)"):
        ingest([broken], tmp_path / "out5")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(AbawError, match="cannot tell the format of .*table.csv"):
        ingest([tmp_path / "table.csv"], tmp_path / "out")
    with pytest.raises(AbawError, match="unknown source format 'zip'"):
        ingest([empty], tmp_path / "out", format="zip")
    with pytest.raises(AbawError, match="does not exist"):
        ingest([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "shards.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(AbawError, match="decompress them to plain .tar"):
        ingest([tmp_path / "shards.tar.gz"], tmp_path / "out")
    with pytest.raises(AbawError, match="lies inside the source"):
        ingest([broken], broken / "work")
    assert not (broken / "work").exists()
    with pytest.raises(AbawError, match="verify must be one of"):
        ingest([broken], tmp_path / "out", verify="quick")
    with pytest.raises(AbawError, match="shard must be i/n"):
        ingest([broken], tmp_path / "out", shard=(2, 2))
    assert sorted(os.listdir(tmp_path)) == ["broken", "empty", "out", "out5", "shards.tar.gz",
                                            "table.csv"]


def test_a_bytes_image_that_pil_cannot_identify_in_a_rec(tmp_path):
    rec = build_rec(tmp_path / "rec", [make_jpeg(0), b"plain text", bytes(30), gif_bytes()])
    summary = ingest([rec], tmp_path / "out")
    assert summary["ingested"] == 1
    assert summary["skipped_by_reason"] == {"not an image": 2, "unsupported image format": 1}


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging for ever (what these inputs used to do)."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def rec_with_meta(folder: Path, meta_labels: tuple[float, float], count: int = 3) -> Path:
    """An insightface .rec (no .idx) whose meta record carries ``meta_labels``."""
    folder.mkdir(parents=True)
    with open(folder / "train.rec", "wb") as rec:
        rec.write(encode_record(pack_payload(b"", meta_labels)))
        for i in range(count):
            rec.write(encode_record(pack_payload(make_jpeg(i), 0.0, i + 1)))
    return folder


def test_a_meta_record_claiming_more_images_than_the_file_can_hold(tmp_path):
    rec = rec_with_meta(tmp_path / "rec", (1e18, 1e18))
    with deadline(60), pytest.raises(AbawError, match=r"train.rec: the meta record \(key 0\) "
                                                      r"claims \d+ images, but a file of \d+ "
                                                      r"bytes holds at most \d+"):
        ingest([rec], tmp_path / "out", limit=3)
    honest = rec_with_meta(tmp_path / "ok", (4.0, 4.0))
    assert ingest([honest], tmp_path / "out2", limit=3)["ingested"] == 3


@pytest.mark.parametrize("claim", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("with_idx", [True, False])
def test_a_meta_record_label_that_is_not_a_number(tmp_path, claim, with_idx):
    rec = rec_with_meta(tmp_path / "rec", (claim, 4.0))
    if with_idx:
        data, offset, lines = (rec / "train.rec").read_bytes(), 0, []
        for key in range(4):
            lines.append(f"{key}\t{offset}")
            offset += 8 + (int.from_bytes(data[offset + 4:offset + 8], "little") + 3) // 4 * 4
        (rec / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(AbawError, match=rf"train.rec: the meta record \(key 0\) has label\[0\] "
                                        rf"= {claim}; expected 1 \+ the number of images"):
        ingest([rec], tmp_path / "out")


def test_tar_member_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    shard = tmp_path / "shard.tar"
    with open(shard, "wb") as out:
        for name, size, data in [("0000.jpg", None, make_jpeg(0)), ("0001.jpg", 200 << 30,
                                                                   make_jpeg(1))]:
            info = tarfile.TarInfo(name)
            info.size = len(data) if size is None else size  # a header claiming 200 GB
            out.write(info.tobuf(format=tarfile.GNU_FORMAT))
            out.write(data + b"\0" * (-len(data) % 512))
    summary = ingest([shard], tmp_path / "out")  # was a MemoryError
    assert summary["ingested"] == 1
    assert summary["skipped_by_reason"] == {"truncated tar": 2}  # the member, then the end
    with tarfile.open(tmp_path / "big.tar", "w") as archive:
        add_tar_member(archive, "0000.jpg", make_jpeg(2))
        add_tar_member(archive, "0001.jpg", make_jpeg(3, size=64))
    monkeypatch.setattr(source_tar, "MAX_IMAGE_BYTES", len(make_jpeg(2)) + 1)
    summary = ingest([tmp_path / "big.tar"], tmp_path / "out2")
    assert summary["ingested"] == 1 and summary["skipped_by_reason"] == {"image too large": 1}


def test_empty_and_broken_files_are_not_duplicates_of_each_other(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(2000):
        (folder / f"empty{i:04d}.jpg").write_bytes(b"")
    for i in range(3):
        (folder / f"cut{i}.jpg").write_bytes(make_jpeg(1)[:300])  # the same broken bytes
        (folder / f"fake{i}.png").write_bytes(b"not an image")
    (folder / "good.jpg").write_bytes(make_jpeg(0))
    (folder / "good-again.jpg").write_bytes(make_jpeg(0))
    summary = ingest([folder], tmp_path / "out", part_rows=700)
    assert summary["skipped_by_reason"] == {"empty file": 2000, "corrupt image": 3,
                                            "not an image": 3}
    assert summary["ingested"] == 1 and summary["duplicates"] == 1


KILLER = """
import os, signal, sys
import pyarrow.parquet as pq
from abaw_kit.unlabeled import ingest as ingest_mod, parts

def kill_after(real):
    def write(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of an atomic write
    return write

def write_index(*args, real=parts.write_index):
    pq.ParquetWriter.write_table = kill_after(pq.ParquetWriter.write_table)
    return real(*args)

if sys.argv[3] == "merge":
    parts.write_index = write_index
else:
    pq.write_table = kill_after(pq.write_table)
ingest_mod.ingest([sys.argv[1]], sys.argv[2])
"""


def temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".lock")


@pytest.mark.parametrize("during", ["merge", "part"])
def test_a_kill_leaves_no_temporary_file_for_ever(tmp_path, during):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(4)])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(rec), str(out), during],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(temporaries(out)) == 1  # what the killed write left behind
    summary = merge(out) if during == "merge" else ingest([rec], out)  # merge: `--merge`
    assert summary["ingested"] == 4 and temporaries(out) == []
    assert (out / "index.parquet").is_file()


def test_the_out_dir_check_creates_nothing(tmp_path):
    source = tmp_path / "faces"
    source.mkdir()
    (source / "a.jpg").write_bytes(make_jpeg(0))
    with pytest.raises(AbawError, match="lies inside the source"):
        check_out_dir(source / "work" / "unlabeled", [source])  # the CLI calls it first
    check_out_dir(tmp_path / "work" / "unlabeled", [source, source / "a.jpg"])
    assert sorted(os.listdir(tmp_path)) == ["faces"] and os.listdir(source) == ["a.jpg"]


def test_a_fifo_or_an_oversized_file_named_like_an_image(tmp_path, monkeypatch):
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(make_jpeg(0))
    os.mkfifo(folder / "pipe.jpg")  # reading it would wait for a writer for ever
    (folder / "z.jpg").write_bytes(make_jpeg(1, size=64))
    monkeypatch.setattr(source_folder, "MAX_IMAGE_BYTES", len(make_jpeg(0)) + 1)
    with deadline(60):
        summary = ingest([folder], tmp_path / "out")
    assert summary["ingested"] == 1
    assert summary["skipped_by_reason"] == {"not a regular file": 1, "image too large": 1}


def test_a_rec_record_larger_than_any_image_is_not_read(tmp_path, monkeypatch):
    rec = build_rec(tmp_path / "rec", [make_jpeg(0), make_jpeg(1, size=64)])
    monkeypatch.setattr(source_recordio, "MAX_IMAGE_BYTES", len(make_jpeg(0)) + 1)
    summary = ingest([rec], tmp_path / "out")
    assert summary["ingested"] == 1 and summary["skipped_by_reason"] == {"image too large": 1}


def test_a_damaged_parquet_row_group_or_footer(tmp_path, monkeypatch):
    path = tmp_path / "faces.parquet"
    table = pa.table({"image": pa.array([make_jpeg(i) for i in range(6)], pa.binary())})
    pq.write_table(table, path, row_group_size=3, compression="none")
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 40] = b"\xff" * 40  # the second row group's first page header
    path.write_bytes(bytes(data))
    summary = ingest([path], tmp_path / "out")  # was an OSError traceback
    assert summary["ingested"] == 3 and summary["skipped_by_reason"] == {
        "unreadable row group": 3}
    monkeypatch.setattr(source_parquet, "MAX_ROWS_PER_BYTE", 0.0001)
    with deadline(60), pytest.raises(AbawError, match=r"faces.parquet: the parquet footer "
                                                      r"claims 6 rows, more than a file of"):
        ingest([path], tmp_path / "out2")


def test_a_damaged_tar_header_mid_shard_loses_only_its_member(tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as archive:
        for i in range(4):
            add_tar_member(archive, f"{i:04d}.jpg", make_jpeg(i))
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as archive:
        second = archive.getmembers()[1].offset
    data[second + 148:second + 156] = b"garbage!"  # its header checksum no longer matches
    shard.write_bytes(bytes(data))
    summary = ingest([shard], tmp_path / "out")  # the shard used to end there, silently
    assert summary["ingested"] == 3
    assert summary["skipped_by_reason"] == {"damaged tar header": 1}
    assert index_table(tmp_path / "out")["member"].tolist() == ["0000.jpg", "0002.jpg",
                                                                "0003.jpg"]
