"""`ingest` on every source format: exactly the images in, nothing else touched, dedup,
shards, resume, subsets; and the index reader training uses."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_unlabeled_recordio import decode, jpeg_with_magic, make_jpeg

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled import UnlabeledIndex, parts, write_recordio
from abaw_kit.unlabeled import ingest as ingest_mod
from abaw_kit.unlabeled.ingest import ingest, merge, summary_table


def make_png(seed: int, size: int = 20) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def add_tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def build_rec(folder: Path, images: list[bytes]) -> Path:
    folder.mkdir(parents=True)
    write_recordio(folder / "train.rec", folder / "train.idx", images)
    (folder / "property").write_text("3,24,24\n")
    return folder


def build_all_sources(root: Path) -> tuple[list[Path], list[bytes]]:
    """One source per format; returns the source paths and every image they hold."""
    rec_images = [make_jpeg(0), jpeg_with_magic(1, words=1), make_jpeg(2),
                  jpeg_with_magic(3, words=6), make_jpeg(4)]
    rec = build_rec(root / "rec", rec_images)

    folder = root / "folder"
    (folder / "id1" / "deep").mkdir(parents=True)
    folder_images = {"id1/a.JPG": make_jpeg(10), "id1/deep/b.jpeg": make_jpeg(11),
                     "id1/c.png": make_png(12), "z.Jpg": make_jpeg(13)}
    for rel, data in folder_images.items():
        (folder / rel).write_bytes(data)

    shards = root / "shards"
    shards.mkdir()
    tar_images = [make_jpeg(20 + i) for i in range(5)]
    for shard in range(2):
        with tarfile.open(shards / f"shard-{shard:03d}.tar", "w") as archive:
            for i in range(shard * 3, min(5, shard * 3 + 3)):
                add_tar_member(archive, f"sample{i:04d}.cls", b"3")
                add_tar_member(archive, f"sample{i:04d}.jpg", tar_images[i])
                add_tar_member(archive, f"sample{i:04d}.json", b"{}")

    parquet_images = [make_jpeg(30 + i) for i in range(4)]
    table = pa.table({"label": [1, 2, 3, 4], "image": pa.array(parquet_images, pa.binary())})
    pq.write_table(table, root / "faces.parquet", row_group_size=3)
    hf_images = [make_jpeg(40 + i) for i in range(3)]
    hf = pa.table({"image": pa.array([{"bytes": b, "path": f"{i}.jpg"}
                                      for i, b in enumerate(hf_images)])})
    (root / "hf" / "data").mkdir(parents=True)
    pq.write_table(hf, root / "hf" / "data" / "train-00000-of-00001.parquet")

    sources = [rec, folder, shards, root / "faces.parquet", root / "hf"]
    images = rec_images + list(folder_images.values()) + tar_images + parquet_images + hf_images
    return sources, images


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (digest(p.read_bytes()), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def index_table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "index.parquet")


def test_every_format_gives_back_exactly_its_images(tmp_path):
    sources, images = build_all_sources(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    out = tmp_path / "work" / "unlabeled"
    summary = ingest(sources, out)

    assert summary["ingested"] == len(images) == 21
    assert summary["duplicates"] == 0 and summary["skipped"] == 0
    assert [s["ingested"] for s in summary["sources"]] == [5, 4, 5, 4, 3]
    assert [s["kind"] for s in summary["sources"]] == ["recordio", "folder", "tar", "parquet",
                                                       "parquet"]
    index = UnlabeledIndex(out)
    assert len(index) == len(images)
    by_hash = {digest(data): data for data in images}
    for i in range(len(index)):
        data = index.read_bytes(i)
        assert by_hash.pop(digest(data)) == data
        assert np.array_equal(index.image(i, size=decode(data).shape[0]), decode(data))
    assert not by_hash

    table = index_table(out)
    assert table["hash"].tolist() == [digest(index.read_bytes(i)) for i in range(len(index))]
    rec_rows = table[table.kind == "recordio"]
    assert rec_rows["chunked"].tolist() == [False, True, False, True, False]
    assert (rec_rows["width"] == 24).all()
    assert set(table.loc[table.kind == "folder", "file"]) == {"id1/a.JPG", "id1/deep/b.jpeg",
                                                              "id1/c.png", "z.Jpg"}
    assert table.loc[table.kind == "tar", "member"].tolist() == [
        f"sample{i:04d}.jpg" for i in range(5)]
    assert index.image(0).shape == (112, 112, 3) and index.image(0).dtype == np.uint8

    assert snapshot(tmp_path / "data") == before  # sources never modified
    outside = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert {p for p in outside if p.is_file()} == {tmp_path / "data" / k for k in before}
    assert summary_table(summary).row_count >= 6


def test_exact_duplicates_are_removed_across_sources_keeping_the_first(tmp_path):
    shared = make_jpeg(1)
    rec = build_rec(tmp_path / "rec", [make_jpeg(0), shared, shared])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "copy.jpg").write_bytes(shared)
    (folder / "own.jpg").write_bytes(make_jpeg(2))
    summary = ingest([rec, folder], tmp_path / "out")
    assert summary["ingested"] == 3 and summary["duplicates"] == 2
    table = index_table(tmp_path / "out")
    assert table.loc[table.hash == digest(shared), "kind"].tolist() == ["recordio"]
    assert [s["duplicates"] for s in summary["sources"]] == [1, 1]


def test_shards_merged_equal_a_single_run(tmp_path):
    sources, _ = build_all_sources(tmp_path / "data")
    duplicate = tmp_path / "dup"
    duplicate.mkdir()
    (duplicate / "again.jpg").write_bytes(make_jpeg(0))  # also in the .rec
    (duplicate / "again2.jpg").write_bytes(make_jpeg(11))  # also in the folder
    sources = [*sources, duplicate]
    single = ingest(sources, tmp_path / "single")
    first = ingest(sources, tmp_path / "sharded", shard=(0, 2))
    assert first["merged"] is False and not (tmp_path / "sharded" / "index.parquet").exists()
    with pytest.raises(AbawError, match="shard.*1/2.*not finished"):
        merge(tmp_path / "sharded")
    second = ingest(sources, tmp_path / "sharded", shard=(1, 2))
    assert second["merged"] is True  # the last shard to finish merges
    assert 0 < first["images_seen"] < single["images_seen"]  # shard 0 did only its share
    pd.testing.assert_frame_equal(index_table(tmp_path / "single"),
                                  index_table(tmp_path / "sharded"))
    for key in ("ingested", "duplicates", "images_seen", "skipped_by_reason", "bytes"):
        assert single[key] == second[key], key
    assert merge(tmp_path / "sharded")["ingested"] == single["ingested"]


@pytest.mark.parametrize("dies", ["writing part 2", "after part 2, before its checkpoint"])
def test_a_killed_run_resumes_to_the_same_index(tmp_path, monkeypatch, dies):
    sources, _ = build_all_sources(tmp_path / "data")
    reference = ingest(sources, tmp_path / "reference", part_rows=4)
    real_write_part, real_save = parts.write_part, parts.ShardState.save
    written = []

    def write_part(out_dir, state, table):
        if written and dies == "writing part 2":
            raise KeyboardInterrupt("killed")
        real_write_part(out_dir, state, table)
        written.append(table.num_rows)

    def save(state, out_dir):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        real_save(state, out_dir)

    monkeypatch.setattr(parts, "write_part", write_part)
    monkeypatch.setattr(parts.ShardState, "save", save)
    with pytest.raises(KeyboardInterrupt):
        ingest(sources, tmp_path / "resumed", part_rows=4)
    checkpoint = parts.ShardState.load(parts.checkpoint_path(tmp_path / "resumed", 0))
    assert checkpoint is not None and not checkpoint.complete and len(checkpoint.parts) == 1
    assert not (tmp_path / "resumed" / "index.parquet").exists()
    on_disk = sorted(p.name for p in (tmp_path / "resumed" / "parts").glob("part-*"))
    assert len(on_disk) == (1 if dies == "writing part 2" else 2)

    monkeypatch.setattr(parts, "write_part", real_write_part)
    monkeypatch.setattr(parts.ShardState, "save", real_save)
    reads = []
    real_digests = parts.shard_digests
    monkeypatch.setattr(parts, "shard_digests",
                        lambda out, state: reads.append(len(state.parts)) or real_digests(
                            out, state))
    resumed = ingest(sources, tmp_path / "resumed", part_rows=4)
    assert reads == [1]  # resumed after the first part, not from scratch
    pd.testing.assert_frame_equal(index_table(tmp_path / "reference"),
                                  index_table(tmp_path / "resumed"))
    for key in ("ingested", "images_seen", "duplicates", "skipped_by_reason", "bytes"):
        assert resumed[key] == reference[key], key


def test_rerunning_a_finished_ingest_reads_nothing_again(tmp_path, monkeypatch):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(4)])
    first = ingest([rec], tmp_path / "out")
    monkeypatch.setattr(ingest_mod._ShardRun, "_process_pending",
                        lambda self: pytest.fail("a finished ingest was processed again"))
    assert ingest([rec], tmp_path / "out") == first


@pytest.mark.parametrize("damage", ["truncated", "deleted sources.json"])
def test_a_merged_index_that_does_not_open_is_merged_again(tmp_path, damage):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(4)])
    first = ingest([rec], tmp_path / "out")
    expected = index_table(tmp_path / "out")
    index = tmp_path / "out" / "index.parquet"
    if damage == "truncated":
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    else:
        (tmp_path / "out" / "sources.json").unlink()
    with pytest.raises(AbawError):
        UnlabeledIndex(tmp_path / "out")
    again = merge(tmp_path / "out")
    assert again["ingested"] == first["ingested"] == 4
    assert len(UnlabeledIndex(tmp_path / "out")) == 4
    pd.testing.assert_frame_equal(index_table(tmp_path / "out"), expected)
    index.write_bytes(b"PAR1 not an index")
    assert ingest([rec], tmp_path / "out")["ingested"] == 4  # the CLI's path merges too
    assert len(UnlabeledIndex(tmp_path / "out")) == 4


def test_other_options_start_over_instead_of_mixing(tmp_path):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(6)])
    ingest([rec], tmp_path / "out", limit=2)
    assert len(index_table(tmp_path / "out")) == 2
    ingest([rec], tmp_path / "out")
    assert len(index_table(tmp_path / "out")) == 6


def test_limit_and_fraction_pick_a_seeded_subset(tmp_path):
    rec = build_rec(tmp_path / "rec", [make_jpeg(i) for i in range(40)])

    def chosen(name: str, **kwargs) -> list[int]:
        ingest([rec], tmp_path / name, **kwargs)
        return index_table(tmp_path / name)["item"].tolist()

    first = chosen("a", limit=10, seed=1)
    assert len(first) == 10 and first == sorted(first)
    assert chosen("b", limit=10, seed=1) == first
    assert chosen("c", limit=10, seed=2) != first
    assert first != list(range(10))  # a random subset, not the first ten
    half = chosen("d", fraction=0.5, seed=3)
    assert 10 <= len(half) <= 30
    assert set(chosen("e", fraction=0.5, limit=5, seed=3)) <= set(half)
    for shard in range(3):
        ingest([rec], tmp_path / "f", limit=10, seed=1, shard=(shard, 3))
    assert index_table(tmp_path / "f")["item"].tolist() == first


def test_index_reader_errors_pickling_and_large_images(tmp_path):
    with pytest.raises(AbawError, match=r"no unlabelled index in .*; run `abaw ingest SOURCE`"):
        UnlabeledIndex(tmp_path / "nothing")
    folder = tmp_path / "photos"
    folder.mkdir()
    big = np.zeros((480, 640, 3), dtype=np.uint8)
    big[:, 320:] = 255
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=95)
    (folder / "big.jpg").write_bytes(buffer.getvalue())
    ingest([folder], tmp_path / "out")
    index = UnlabeledIndex(tmp_path / "out")
    face = index.image(0)
    assert face.shape == (112, 112, 3)
    assert face[:, :50].mean() < 10 and face[:, 62:].mean() > 245  # resized, not cropped
    clone = pickle.loads(pickle.dumps(index))
    assert clone.read_bytes(0) == buffer.getvalue() and len(clone) == 1
    with pytest.raises(IndexError):
        index.read_bytes(1)
    (folder / "big.jpg").unlink()
    with pytest.raises(AbawError, match="big.jpg.*cannot be read"):
        index.read_bytes(0)


class TemplateDetector:
    """Finds one face whose landmarks are the ArcFace template scaled to the image."""

    name = "template"

    def detect(self, images):
        from abaw_kit.faces import Detections
        from abaw_kit.faces.align import template

        out = []
        for image in images:
            if image.mean() < 5:  # an all-black photo: no face
                out.append(Detections.empty())
                continue
            height, width = image.shape[:2]
            points = template(112) * np.array([width / 112, height / 112])
            out.append(Detections(np.array([[0, 0, width, height]]), np.array([0.9]),
                                  points[None]))
        return out


def test_align_writes_crops_for_photos_and_keeps_112_crops(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = np.random.default_rng(0).integers(30, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.png")
    Image.fromarray(np.zeros((90, 90, 3), dtype=np.uint8)).save(folder / "dark.png")
    (folder / "crop.jpg").write_bytes(make_jpeg(5, size=112))
    summary = ingest([folder], tmp_path / "out", align=True, detector=TemplateDetector())
    assert summary["ingested"] == 2 and summary["skipped_by_reason"] == {"no face found": 1}
    table = index_table(tmp_path / "out")
    assert table["kind"].tolist() == ["folder", "aligned"]  # crop.jpg, photo.png
    aligned = table[table.kind == "aligned"].iloc[0]
    assert aligned.file == "0/00000/2.jpg" and (aligned.width, aligned.height) == (112, 112)
    assert (tmp_path / "out" / "aligned" / aligned.file).is_file()
    index = UnlabeledIndex(tmp_path / "out")
    position = int(np.flatnonzero(table.kind == "aligned")[0])
    crop = index.image(position)
    assert crop.shape == (112, 112, 3)
    assert np.abs(crop.astype(int) - np.asarray(Image.fromarray(photo).resize((112, 112)))
                  .astype(int)).mean() < 40  # the template maps the whole photo onto the crop


def test_im2rec_files_without_a_meta_record_and_unsorted_idx(tmp_path):
    """mxnet's im2rec writes no meta record: key 0 is an image too; any .idx order works."""
    from abaw_kit.unlabeled.recordio import encode_record, pack_payload

    images = [make_jpeg(50 + i) for i in range(4)]
    folder = tmp_path / "im2rec"
    folder.mkdir()
    lines, offset = [], 0
    with open(folder / "data.rec", "wb") as rec:
        for key, image in enumerate(images):
            record = encode_record(pack_payload(image, float(key), key))
            rec.write(record)
            lines.append(f"{key}\t{offset}")
            offset += len(record)
    (folder / "data.idx").write_text("\n".join(reversed(lines)) + "\n")
    summary = ingest([folder / "data.rec"], tmp_path / "out")
    assert summary["ingested"] == 4
    index = UnlabeledIndex(tmp_path / "out")
    assert [index.read_bytes(i) for i in range(4)] == images  # in key order
    (folder / "data.idx").unlink()
    ingest([folder / "data.rec"], tmp_path / "scanned")
    assert index_table(tmp_path / "scanned")["hash"].tolist() == [digest(i) for i in images]


def test_align_sweeps_temporary_crops_a_killed_run_left_of_its_own_shard(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo = np.random.default_rng(i).integers(30, 256, (120, 120, 3), dtype=np.uint8)
        Image.fromarray(photo).save(folder / f"{i}.png")
    bucket = tmp_path / "out" / "aligned" / "0" / "00000"
    bucket.mkdir(parents=True)
    (bucket / ".2.jpg.k1ll3d.tmp").write_bytes(b"half a crop")  # item 2: shard 0's
    (bucket / ".1.jpg.wr1t1n.tmp").write_bytes(b"shard 1 may be writing it")
    summary = ingest([folder], tmp_path / "out", align=True, detector=TemplateDetector(),
                     shard=(0, 2))
    assert summary["ingested"] == 2  # items 0 and 2
    assert sorted(p.name for p in bucket.iterdir()) == [".1.jpg.wr1t1n.tmp", "0.jpg", "2.jpg"]
