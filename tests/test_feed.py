"""Feeding the network: worker counts per stream, path checks once per opened file or folder,
and views that keep a decoded image as one PIL image (same pixels as the array route)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_train import make_workspace, tiny_config, use_fake_unlabeled
from test_unlabeled_ingest import build_all_sources
from test_unlabeled_recordio import make_jpeg

import abaw_kit.unlabeled.index as index_mod
from abaw_kit.config import resolve_config
from abaw_kit.errors import AbawError
from abaw_kit.train.data import (
    IndexImages,
    ResumableBatchSampler,
    UnlabelledBatches,
    UnlabelledPool,
    Views,
    build_training_data,
    labelled_workers,
    training_loaders,
)
from abaw_kit.unlabeled import UnlabeledIndex
from abaw_kit.unlabeled.ingest import ingest

# ------------------------------------------------------------------------------------------
# Worker counts


@pytest.mark.parametrize(("settings", "ssl", "labelled", "unlabelled"), [
    (["data.num_workers=4"], "dtm", 1, 4),  # auto: one labelled worker beside the pool's
    (["data.num_workers=0"], "dtm", 0, 0),  # auto: everything in the main process
    (["data.num_workers=3"], "none", 3, None),  # auto: the only stream gets them all
    (["data.num_workers=4", "data.labelled_workers=2"], "dtm", 2, 4),
    (["data.num_workers=0", "data.labelled_workers=1"], "fixmatch", 1, 0),
])
def test_each_stream_gets_its_own_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               settings: list[str], ssl: str, labelled: int,
                                               unlabelled: int | None) -> None:
    use_fake_unlabeled(monkeypatch)
    work = make_workspace(tmp_path / "work")
    cfg = tiny_config(*settings, ssl=ssl)
    assert labelled_workers(cfg.data, ssl != "none") == labelled
    data = build_training_data(work, cfg, with_unlabelled=ssl != "none")
    loaders = training_loaders(data, cfg, start=0, rank=0, world_size=1, pin_memory=False)
    assert loaders[0].num_workers == labelled
    assert (loaders[1].num_workers if loaders[1] is not None else None) == unlabelled


def test_the_worker_counts_may_change_on_resume() -> None:
    from abaw_kit.config import RESUME_MUTABLE

    assert {"data.num_workers", "data.labelled_workers"} <= RESUME_MUTABLE
    with pytest.raises(AbawError, match="labelled_workers.*>= -1"):
        resolve_config(None, ["data.labelled_workers=-2"])


# ------------------------------------------------------------------------------------------
# Path checks: once per container / folder and process, never per read


def test_paths_are_checked_once_per_file_or_folder_not_per_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources, images = build_all_sources(tmp_path / "data")
    ingest(sources, tmp_path / "out")
    index = UnlabeledIndex(tmp_path / "out")
    checked: list[str] = []
    real = index_mod.safe_join

    def counting(root: Path, relative: str) -> Path:
        checked.append(relative)
        return real(root, relative)

    monkeypatch.setattr(index_mod, "safe_join", counting)
    first = [index.read_bytes(i) for i in range(len(index))]
    once = len(checked)
    for _ in range(3):
        assert [index.read_bytes(i) for i in range(len(index))] == first
    assert len(checked) == once  # later reads check nothing again
    # .rec, 2 tar shards, 2 parquet files; folder source: its root, id1, id1/deep
    assert sorted(checked) == sorted(
        [".", "id1", "id1/deep", "train.rec", "shard-000.tar", "shard-001.tar",
         "faces.parquet", "data/train-00000-of-00001.parquet"])
    assert sorted(first) == sorted(images)


def folder_index(tmp_path: Path) -> tuple[UnlabeledIndex, Path, Path]:
    """An index of a folder source (a/one.jpg, a/two.jpg, b/three.jpg) and a folder outside."""
    folder = tmp_path / "faces"
    for rel, seed in (("a/one.jpg", 0), ("a/two.jpg", 1), ("b/three.jpg", 2)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(make_jpeg(seed))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(make_jpeg(9))
    ingest([folder], tmp_path / "out")
    return UnlabeledIndex(tmp_path / "out"), folder, outside


def position(index: UnlabeledIndex, rel: str) -> int:
    return next(i for i in range(len(index)) if index._file_name(i) == rel)


def test_a_file_swapped_for_a_link_outside_the_root_is_refused(tmp_path: Path) -> None:
    index, folder, outside = folder_index(tmp_path)
    index.read_bytes(position(index, "a/one.jpg"))  # folder a is checked and remembered
    (folder / "a" / "two.jpg").unlink()
    (folder / "a" / "two.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(AbawError, match="escape"):
        index.read_bytes(position(index, "a/two.jpg"))
    (folder / "a" / "one.jpg").rename(folder / "a" / "moved.jpg")  # a link inside stays fine
    (folder / "a" / "one.jpg").symlink_to(folder / "a" / "moved.jpg")
    assert index.read_bytes(position(index, "a/one.jpg")) == make_jpeg(0)


def test_a_folder_swapped_for_a_link_outside_the_root_is_refused(tmp_path: Path) -> None:
    index, folder, outside = folder_index(tmp_path)
    (folder / "b" / "three.jpg").unlink()
    (folder / "b").rmdir()
    (folder / "b").symlink_to(outside)
    (outside / "three.jpg").write_bytes(make_jpeg(2))
    with pytest.raises(AbawError, match="escape"):
        index.read_bytes(position(index, "b/three.jpg"))


@pytest.mark.parametrize("name", ["../elsewhere/secret.jpg", "a/../../elsewhere/secret.jpg",
                                  "ABSOLUTE", "a/../.."])
def test_index_paths_that_leave_the_root_are_refused(tmp_path: Path, name: str) -> None:
    index, _, outside = folder_index(tmp_path)
    name = str(outside / "secret.jpg") if name == "ABSOLUTE" else name
    path = tmp_path / "out" / "index.parquet"
    table = pq.read_table(path)
    files = table.column("file").to_pylist()
    files[0] = name
    column = table.schema.get_field_index("file")
    table = table.set_column(column, "file", [files]).replace_schema_metadata(
        table.schema.metadata)
    pq.write_table(table, path)
    with pytest.raises(AbawError, match="escape"):
        UnlabeledIndex(tmp_path / "out").read_bytes(0)


def test_a_forked_worker_opens_and_checks_its_own_files(tmp_path: Path) -> None:
    index, _, _ = folder_index(tmp_path)
    index.read_bytes(0)
    assert index._folders and index._pid == os.getpid()
    index._pid = -1  # as seen from a forked worker
    index.read_bytes(0)
    assert index._pid == os.getpid() and len(index._folders) == 1


# ------------------------------------------------------------------------------------------
# One image representation from the decoder to the batch


class ArraysOnly:
    """The index behind an array-only API: the route the views took before."""

    def __init__(self, index: UnlabeledIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int, size: int = 112) -> np.ndarray:
        return self.index.image(i, size=size)


def test_pil_route_gives_the_same_batches_as_the_array_route(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(12):  # 112 px crops and larger photos (resized on decoding)
        (folder / f"{i:02d}.jpg").write_bytes(make_jpeg(i, size=112 if i % 2 else 150))
    ingest([folder], tmp_path / "out")
    index = UnlabeledIndex(tmp_path / "out")
    assert isinstance(IndexImages(index).image(0), Image.Image)
    views = Views(resolve_config(None, ["data.input_size=64"]).data)
    pil = UnlabelledBatches(UnlabelledPool({"i": IndexImages(index)}), views, seed=3)
    arrays = UnlabelledBatches(UnlabelledPool({"i": IndexImages(ArraysOnly(index))}), views,
                               seed=3)
    for k in range(3):
        item = (k, np.random.default_rng(k).integers(0, 12, 8))
        for ours, before in zip(pil[item], arrays[item], strict=True):
            assert ours.dtype == before.dtype and np.array_equal(ours.numpy(), before.numpy())


def test_weak_view_of_an_array_and_of_its_image_are_identical() -> None:
    views = Views(resolve_config(None, []).data)
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    for seed in range(5):
        from_array = views.weak(face, np.random.default_rng(seed))
        from_image = views.weak(Image.fromarray(face), np.random.default_rng(seed))
        assert np.array_equal(np.asarray(from_array), np.asarray(from_image))


def test_a_stream_that_changes_world_size_goes_on_after_the_last_item_seen() -> None:
    """--reshard: 3 batches on one process, then two processes from batch 3 on: the global
    stream of positions is the one-process stream, without a gap or a repeat."""
    single = ResumableBatchSampler(50, 1, seed=4)
    expected = np.concatenate([single.batch(k) for k in range(3 * 4 + 4 * 2 * 4)])
    segments = [(0, 1), (3, 2)]
    before = [ResumableBatchSampler(50, 4, seed=4, segments=segments[:1]).batch(k)
              for k in range(3)]
    ranks = [ResumableBatchSampler(50, 4, seed=4, rank=r, world_size=2, segments=segments)
             for r in (0, 1)]
    after = [ranks[r].batch(k) for k in range(3, 7) for r in (0, 1)]
    assert np.array_equal(np.concatenate(before + after), expected)
    with pytest.raises(ValueError, match="not this world size"):
        ResumableBatchSampler(50, 4, seed=4, world_size=2, segments=[(0, 1)])
