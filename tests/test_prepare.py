"""`abaw prepare` on a release laid out like the real one (crops path)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_release import MISSING, TEST, TRAIN, VAL, build_fake_release, crop_colour

from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.workspace import Workspace


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


def test_demo_unlabelled_index_is_reingested_when_damaged(tmp_path):
    """'Already ingested' means the index reads, not merely that the file exists."""
    from test_unlabeled_recordio import make_jpeg

    from abaw_kit.prepare import ingest_demo_unlabeled
    from abaw_kit.unlabeled import UnlabeledIndex, write_recordio

    demo = tmp_path / "demo"
    (demo / "unlabeled" / "folder" / "id1").mkdir(parents=True)
    for i in range(3):
        (demo / "unlabeled" / "folder" / "id1" / f"{i}.jpg").write_bytes(make_jpeg(i))
    rec = demo / "unlabeled" / "recordio"
    rec.mkdir()
    write_recordio(rec / "train.rec", rec / "train.idx", [make_jpeg(10 + i) for i in range(2)])
    (rec / "property").write_text("3,24,24\n")
    work = Workspace(tmp_path / "work")
    ingest_demo_unlabeled(work, demo)
    assert len(UnlabeledIndex(work.unlabeled_dir)) == 5
    assert "already" in ingest_demo_unlabeled(work, demo)["note"]

    index = work.unlabeled_dir / "index.parquet"
    index.write_bytes(index.read_bytes()[:50])
    notes = []
    ingest_demo_unlabeled(work, demo, log=notes.append)
    assert any("unusable" in note for note in notes)
    assert len(UnlabeledIndex(work.unlabeled_dir)) == 5
