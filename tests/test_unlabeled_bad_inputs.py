"""Damaged or unexpected unlabelled data: each case is skipped and counted with its reason, or,
when nothing in a source is usable, one clear AbawError. Nothing is written outside out_dir."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_unlabeled_ingest import add_tar_member, build_rec, index_table
from test_unlabeled_recordio import make_jpeg

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.ingest import ingest


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
