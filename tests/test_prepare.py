"""`abaw prepare` on a release laid out like the real one (crops path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_release import MISSING, TEST, TRAIN, VAL, build_fake_release, crop_colour

from abaw_kit.data.store import FaceStore
from abaw_kit.demo import DEMO_MARKER, unlabeled_sources
from abaw_kit.errors import AbawError
from abaw_kit.prepare import PrepareOptions, ingest_unlabeled_sources, prepare
from abaw_kit.workspace import SourceRecord, Workspace


def test_prepare_crops_gives_exact_counts_and_pixels(tmp_path):
    root = build_fake_release(tmp_path / "release")
    work = Workspace(tmp_path / "work")
    result = prepare(work, PrepareOptions(data_root=root))
    assert result["source"] == "crops" and not result["is_demo"]

    train = FaceStore(work.store_dir("train"))
    assert len(train) == sum(len(v) for v in TRAIN.values())
    expected_faces = sum(len(v) - len(MISSING.get(k, ())) for k, v in TRAIN.items())
    assert int(train.index["has_face"].sum()) == expected_faces
    assert result["splits"]["train"]["frames_with_face"] == expected_faces
    labelled_with_face = sum(1 for k, labels in TRAIN.items() for f, y in enumerate(labels, 1)
                             if y >= 0 and f not in MISSING.get(k, ()))
    assert result["splits"]["train"]["labelled_frames_with_face"] == labelled_with_face

    # every stored face is the crop of its own (video, frame): left and right never swapped
    for row in train.rows(with_face=True):
        video, frame = train.index.at[row, "video"], int(train.index.at[row, "frame"])
        assert np.abs(train.face(row)[56, 56].astype(int) - crop_colour(video, frame)).max() <= 4
        assert train.index.at[row, "label"] == TRAIN[video][frame - 1]

    val = FaceStore(work.store_dir("val"))  # crops from cropped_aligned_new_50_vids
    assert len(val) == len(VAL["video45_1"]) and val.index["has_face"].all()

    test = FaceStore(work.store_dir("test"))  # frames from the example file, labels -1
    assert len(test) == TEST["166"] and (test.index["label"] == -1).all()
    assert int(test.index["has_face"].sum()) == TEST["166"] - len(MISSING["166"])


def test_prepare_is_resumable_and_skips_done_videos(tmp_path):
    root = build_fake_release(tmp_path / "release")
    work = Workspace(tmp_path / "work")
    first = prepare(work, PrepareOptions(data_root=root, splits=("train",)))
    again = prepare(work, PrepareOptions(data_root=root, splits=("train",)))
    assert again["splits"]["train"]["videos_already_done"] == len(TRAIN)
    assert again["splits"]["train"]["frames"] == first["splits"]["train"]["frames"]


def test_corrupt_and_foreign_files_are_counted_not_fatal(tmp_path):
    root = build_fake_release(tmp_path / "release")
    bad = root / "cropped_aligned" / "1-30-1280x720" / "00001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    (root / "cropped_aligned" / "1-30-1280x720" / "notes.txt").write_text("hello")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    work = Workspace(tmp_path / "work")
    result = prepare(work, PrepareOptions(data_root=root, splits=("train",)))
    skipped = result["splits"]["train"]["skipped"]
    assert any("corrupt" in reason and v["count"] == 1 for reason, v in skipped.items())
    store = FaceStore(work.store_dir("train"))
    first = store.index[(store.index.video == "1-30-1280x720") & (store.index.frame == 1)]
    assert not bool(first["has_face"].iloc[0])
    # the data root is never modified
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_not_a_release_and_unwritable_workspace(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "file.txt").write_text("x")
    with pytest.raises(AbawError, match="Aff-Wild2"):
        prepare(Workspace(tmp_path / "work"), PrepareOptions(data_root=tmp_path / "random"))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the workspace folder should be")
    with pytest.raises(AbawError, match="not writable"):
        prepare(Workspace(blocker / "work"), PrepareOptions(data_root=tmp_path / "random"))


def _demo_unlabelled_faces(demo: Path) -> None:
    """The demo's unlabelled layout (a folder of 3 faces, a RecordIO of 2) under ``demo``."""
    from test_unlabeled_recordio import make_jpeg

    from abaw_kit.unlabeled import write_recordio

    (demo / "unlabeled" / "folder" / "id1").mkdir(parents=True)
    for i in range(3):
        (demo / "unlabeled" / "folder" / "id1" / f"{i}.jpg").write_bytes(make_jpeg(i))
    rec = demo / "unlabeled" / "recordio"
    rec.mkdir()
    write_recordio(rec / "train.rec", rec / "train.idx", [make_jpeg(10 + i) for i in range(2)])
    (rec / "property").write_text("3,24,24\n")


def test_demo_unlabelled_index_is_reingested_when_damaged(tmp_path):
    """'Already ingested' means the index reads, not merely that the file exists."""
    from abaw_kit.unlabeled import UnlabeledIndex

    demo = tmp_path / "demo"
    _demo_unlabelled_faces(demo)
    sources = unlabeled_sources(demo)
    work = Workspace(tmp_path / "work")
    ingest_unlabeled_sources(work, sources)
    assert len(UnlabeledIndex(work.unlabeled_dir)) == 5
    assert "already" in ingest_unlabeled_sources(work, sources)["note"]

    index = work.unlabeled_dir / "index.parquet"
    index.write_bytes(index.read_bytes()[:50])
    notes = []
    ingest_unlabeled_sources(work, sources, log=notes.append)
    assert any("unusable" in note for note in notes)
    assert len(UnlabeledIndex(work.unlabeled_dir)) == 5


def test_prepare_from_python_does_what_the_demo_implies(tmp_path):
    """`prepare()` itself ingests a demo release's unlabelled faces, as `abaw prepare` does."""
    from abaw_kit.unlabeled import UnlabeledIndex

    root = build_fake_release(tmp_path / "release")
    _demo_unlabelled_faces(root)
    (root / DEMO_MARKER).write_text("{}\n")
    work = Workspace(tmp_path / "work")
    result = prepare(work, PrepareOptions(data_root=root, splits=("train",)))
    assert result["is_demo"] and result["unlabeled"]["ingested"] == 5
    assert len(UnlabeledIndex(work.unlabeled_dir)) == 5
    record = work.read_source()
    assert record.is_demo and record.default_config == "demo"
    assert record.unlabeled_sources == unlabeled_sources(root.resolve())
    assert record.test_labels_file == root.resolve() / "demo_test_labels.txt"


def test_source_record_round_trip_and_what_a_real_release_implies(tmp_path):
    root = build_fake_release(tmp_path / "release")
    work = Workspace(tmp_path / "work")
    assert work.read_source() is None and work.data_root() is None  # not prepared yet
    result = prepare(work, PrepareOptions(data_root=root, splits=("train",)))
    assert "unlabeled" not in result and not work.unlabeled_dir.exists()
    record = work.read_source()
    assert record == SourceRecord(data_root=root.resolve(), is_demo=False, source="crops",
                                  example_file=record.example_file, test_list=record.test_list)
    assert record.example_file.is_file() and record.test_list.is_file()
    assert (record.default_config, record.unlabeled_sources, record.test_labels_file) == (
        None, (), None)
    assert work.data_root() == root.resolve() and not work.is_demo()
    assert list(json.loads(work.source_file.read_text())) == [
        "data_root", "is_demo", "source", "example_file", "test_list"]


def test_source_record_of_an_older_workspace_still_reads(tmp_path):
    """The exact JSON `prepare` has always written (and a record without the optional keys)."""
    work = Workspace(tmp_path / "work").ensure()
    work.source_file.write_text(json.dumps({
        "data_root": str(tmp_path / "demo-data"), "is_demo": True, "source": "crops",
        "example_file": str(tmp_path / "demo-data" / "example.txt"), "test_list": None}, indent=2))
    record = work.read_source()
    assert record.data_root == (tmp_path / "demo-data").resolve() and record.is_demo
    assert record.example_file == tmp_path / "demo-data" / "example.txt"
    assert record.test_list is None and work.is_demo()
    work.source_file.write_text(json.dumps({"data_root": str(tmp_path)}))
    assert work.read_source() == SourceRecord(data_root=tmp_path.resolve())


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "{}", '{"data_root": ""}',
                                  '{"data_root": "/x", "is_demo": "yes"}',
                                  '{"data_root": "/x", "example_file": 3}', "\xff\xfe"])
def test_damaged_source_record_is_one_clear_error_for_every_reader(tmp_path, text):
    from abaw_kit.config import resolve_train_config
    from abaw_kit.evaluate import load_example

    work = Workspace(tmp_path / "work").ensure()
    work.source_file.write_bytes(text.encode("latin-1"))
    readers = [work.read_source, work.data_root, work.is_demo, lambda: load_example(work),
               lambda: resolve_train_config(work, None, [], {})]
    for read in readers:
        with pytest.raises(AbawError) as caught:
            read()
        message = str(caught.value)
        assert str(work.source_file) in message and "is damaged" in message
        assert "rerun `abaw prepare`" in message
