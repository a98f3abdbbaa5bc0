"""The face store under damage and odd names (issue 10): unique shard names, readers that name
the damaged file, and a `prepare` rerun that redoes exactly what is damaged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_release import TRAIN, build_fake_release, crop_colour, write_crop

from abaw_kit.classes import ANNOTATION_HEADER
from abaw_kit.data.store import FaceStore, FaceStoreWriter, shard_name, shard_names
from abaw_kit.errors import AbawError
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.workspace import Workspace

VIDEO = "1-30-1280x720"


def prepared(tmp_path: Path) -> tuple[Path, Workspace]:
    root = build_fake_release(tmp_path / "release")
    work = Workspace(tmp_path / "work")
    prepare(work, PrepareOptions(data_root=root, splits=("train",), workers=1))
    return root, work


def rerun(root: Path, work: Workspace) -> dict:
    return prepare(work, PrepareOptions(data_root=root, splits=("train",), workers=1))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def faces_of(store: FaceStore) -> np.ndarray:
    return store.faces(store.rows(with_face=True))


def store_error(split_dir: Path) -> str:
    with pytest.raises(AbawError) as error:
        FaceStore(split_dir)
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- shard names


def test_shard_names_are_unique_for_names_that_sanitise_alike() -> None:
    for plain in (VIDEO, "video45_1", "10-60-1280x720_left", "282"):
        assert shard_name(plain) == plain  # real names keep their readable shard name
    odd = ["a b", "a_b", "a/b", "A_b", "a_B", ".a_b", "", "é", "e"]
    names = shard_names(odd)
    assert len({n.lower() for n in names}) == len(odd)  # unique even on a case-blind disk
    for name in names:
        assert name and not name.startswith(".") and len(name) < 100
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", name), name
    assert shard_name("a b") == shard_name("a b")  # stable, so resume finds it again
    with pytest.raises(AbawError, match="listed twice"):
        shard_names(["a b", "a b"])


def test_prepare_keeps_both_videos_whose_names_sanitise_alike(tmp_path: Path) -> None:
    root = tmp_path / "release"
    train = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set"
    train.mkdir(parents=True)
    (train.parent / "Validation_Set").mkdir()
    lengths = {"a b": 3, "a_b": 5}
    for name, n in lengths.items():
        (train / f"{name}.txt").write_text(ANNOTATION_HEADER + "\n" + "\n".join(["1"] * n))
        for frame in range(1, n + 1):
            write_crop(root / "cropped_aligned" / name / f"{frame:05d}.jpg", name, frame)
    work = Workspace(tmp_path / "work")
    prepare(work, PrepareOptions(data_root=root, splits=("train",), workers=1))

    store = FaceStore(work.store_dir("train"))
    assert store.index.groupby("video").size().to_dict() == lengths
    for row in store.rows(with_face=True):
        video, frame = store.index.at[row, "video"], int(store.index.at[row, "frame"])
        assert np.abs(store.face(row)[56, 56].astype(int) - crop_colour(video, frame)).max() <= 4


def test_resume_from_an_older_workspace_redoes_its_shards(tmp_path: Path) -> None:
    """Shards without a record (older versions, or the old shared name 'a_b' of 'a b') are
    redone, and files no video of the split names any more are removed."""
    root, work = prepared(tmp_path)
    clean = FaceStore(work.store_dir("train"))
    shards = work.store_dir("train") / "shards"
    for path in shards.glob("*.parquet"):  # the old format: a plain table, no record
        pd.read_parquet(path).to_parquet(path, index=False)
    np.save(shards / "a_b.npy", np.zeros((1, 112, 112, 3), np.uint8))
    (shards / "a_b.parquet").write_bytes(b"PAR1")

    again = rerun(root, work)
    assert again["splits"]["train"]["videos_already_done"] == 0
    resumed = FaceStore(work.store_dir("train"))
    pd.testing.assert_frame_equal(clean.index, resumed.index)
    assert np.array_equal(faces_of(clean), faces_of(resumed))
    assert sorted(p.name for p in shards.iterdir()) == sorted(
        f"{name}{suffix}" for name in TRAIN for suffix in (".npy", ".parquet"))


def test_shard_record_names_how_it_was_made(tmp_path: Path) -> None:
    writer = FaceStoreWriter(tmp_path / "train")
    faces = np.zeros((2, 112, 112, 3), np.uint8)
    made = {"source": "video", "detector": "retinaface", "detector_weights": None,
            "detect_every": 1}
    writer.write_video("v", [1, 2, 3], [0, 1, 2], [True, False, True], faces, made)
    assert writer.is_done("v", made)
    assert not writer.is_done("v", {**made, "detect_every": 2})
    assert not writer.is_done("v", {"source": "crops"})
    assert not writer.is_done("w", made)


# ----------------------------------------------------------------------------- damage


def test_truncated_shard_npy_is_named_and_redone(tmp_path: Path) -> None:
    root, work = prepared(tmp_path)
    split = work.store_dir("train")
    expected = faces_of(FaceStore(split))
    npy = split / "shards" / f"{VIDEO}.npy"
    truncate(npy)
    message = store_error(split)
    assert str(npy) in message and "truncated" in message and "rerun `abaw prepare`" in message

    again = rerun(root, work)
    assert again["splits"]["train"]["videos_already_done"] == len(TRAIN) - 1
    assert np.array_equal(faces_of(FaceStore(split)), expected)


def test_truncated_npy_header_is_named(tmp_path: Path) -> None:
    _, work = prepared(tmp_path)
    split = work.store_dir("train")
    npy = split / "shards" / f"{VIDEO}.npy"
    npy.write_bytes(npy.read_bytes()[:20])
    message = store_error(split)
    assert str(npy) in message and "rerun `abaw prepare`" in message


def test_truncated_shard_table_is_redone(tmp_path: Path) -> None:
    root, work = prepared(tmp_path)
    split = work.store_dir("train")
    clean = FaceStore(split).index
    truncate(split / "shards" / f"{VIDEO}.parquet")
    again = rerun(root, work)
    assert again["splits"]["train"]["videos_already_done"] == len(TRAIN) - 1
    pd.testing.assert_frame_equal(FaceStore(split).index, clean)


@pytest.mark.parametrize("name", ["index.parquet", "meta.json"])
def test_truncated_index_or_meta_is_named_and_rebuilt(tmp_path: Path, name: str) -> None:
    root, work = prepared(tmp_path)
    split = work.store_dir("train")
    clean = FaceStore(split)
    truncate(split / name)
    message = store_error(split)
    assert message.startswith(f"{split / name} is damaged (")
    assert message.endswith("rerun `abaw prepare`, which redoes it")

    rerun(root, work)
    store = FaceStore(split)
    pd.testing.assert_frame_equal(store.index, clean.index)
    assert store.meta == clean.meta
    json.loads((split / "meta.json").read_text())


def test_shard_one_face_short_is_named(tmp_path: Path) -> None:
    _, work = prepared(tmp_path)
    split = work.store_dir("train")
    npy = split / "shards" / f"{VIDEO}.npy"
    np.save(npy, np.load(npy)[:-1])  # a whole, valid file, but one face short
    message = store_error(split)
    assert str(npy) in message and "expected uint8" in message


def test_cli_prints_one_line_for_a_damaged_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from abaw_kit.cli import app

    _, work = prepared(tmp_path)
    truncate(work.store_dir("train") / "index.parquet")
    result = CliRunner().invoke(app, ["train", "--work", str(work.root), "--steps", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    assert "index.parquet is damaged" in lines[0] and "rerun `abaw prepare`" in lines[0]
