"""A `prepare` killed mid-way resumes to exactly the store an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from fake_release import write_crop

from abaw_kit.classes import ANNOTATION_HEADER
from abaw_kit.data.store import FaceStore


def many_video_release(root, videos=12, frames=150):
    train = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set"
    train.mkdir(parents=True)
    (train.parent / "Validation_Set").mkdir()
    for v in range(videos):
        labels = [(v + f // 10) % 8 for f in range(frames)]
        (train / f"clip{v:02d}.txt").write_text(ANNOTATION_HEADER + "\n"
                                                + "\n".join(map(str, labels)))
        for f in range(1, frames + 1, 1 + (v % 3 == 0)):
            write_crop(root / "cropped_aligned" / f"clip{v:02d}" / f"{f:05d}.jpg", f"c{v}", f)
    return root


def prepare_cmd(root, work):
    return [sys.executable, "-m", "abaw_kit", "prepare", "--data-root", str(root),
            "--work", str(work), "--split", "train", "--json"]


@pytest.mark.slow
def test_killed_prepare_resumes_to_the_same_store(tmp_path):
    root = many_video_release(tmp_path / "release")
    subprocess.run(prepare_cmd(root, tmp_path / "clean"), check=True, capture_output=True)

    work = tmp_path / "killed"
    proc = subprocess.Popen(prepare_cmd(root, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    shards = work / "faces" / "train" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(shards.glob("*.parquet")))
    assert 0 < written < 12, "the kill should land mid-way"
    assert not (work / "faces" / "train" / "index.parquet").exists()

    # what a kill during a shard write leaves (the kill above may or may not have hit one)
    (shards / ".clip03.parquet.stale1234.parquet").write_bytes(b"PAR1")
    rerun = subprocess.run(prepare_cmd(root, work), check=True, capture_output=True, text=True)
    assert '"videos_already_done"' in rerun.stdout
    clean, resumed = FaceStore(tmp_path / "clean" / "faces" / "train"), FaceStore(shards.parent)
    pd.testing.assert_frame_equal(clean.index, resumed.index)
    rows = clean.rows(with_face=True)
    assert np.array_equal(clean.faces(rows), resumed.faces(rows))
    assert not list(shards.glob(".*")), "no temporary files left behind"
