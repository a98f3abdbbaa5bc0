"""`abaw prepare --source video` on a release with real-face, truncated and face-less videos."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.transform import SimilarityTransform, warp

from abaw_kit.classes import ANNOTATION_HEADER
from abaw_kit.data.store import FaceStore
from abaw_kit.data.video import write_video
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.workspace import Workspace

FRAMES = 30


def moving_astronaut():
    photo = data.astronaut()
    for t in range(FRAMES):
        pose = SimilarityTransform(scale=0.5, translation=(-60 + 2 * t, -20))
        yield warp(photo, pose.inverse, output_shape=(240, 320), preserve_range=True,
                   cval=90).astype(np.uint8)


def build_video_release(root):
    expr = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge"
    (expr / "Validation_Set").mkdir(parents=True)
    train = expr / "Train_Set"
    train.mkdir()
    for name, n in (("astro", FRAMES), ("cut", FRAMES), ("noise", 12), ("broken", 5)):
        labels = [4] * n
        (train / f"{name}.txt").write_text(ANNOTATION_HEADER + "\n" + "\n".join(map(str, labels)))
    (root / "batch1").mkdir()
    write_video(root / "batch1" / "astro.mp4", moving_astronaut())
    write_video(root / "batch1" / "cut.mp4", moving_astronaut(), faststart=True)
    (root / "batch1" / "broken.mp4").write_bytes(b"\x00" * 4096)
    whole = (root / "batch1" / "cut.mp4").read_bytes()
    (root / "batch1" / "cut.mp4").write_bytes(whole[: len(whole) * 6 // 10])
    rng = np.random.default_rng(0)
    write_video(root / "batch1" / "noise.AVI",
                (rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(12)))
    return root


@pytest.mark.slow
def test_video_path_finds_faces_and_reports_bad_videos(tmp_path):
    root = build_video_release(tmp_path / "release")
    work = Workspace(tmp_path / "work")
    result = prepare(work, PrepareOptions(data_root=root, detector="cascade", detect_every=2,
                                          splits=("train",)))
    assert result["source"] == "video"
    store = FaceStore(work.store_dir("train"))
    index = store.index
    assert len(index) == 2 * FRAMES + 12 + 5  # annotation lengths, whatever the decoder managed
    astro = index[index.video == "astro"]
    assert astro["has_face"].mean() >= 0.8
    assert not index[index.video == "noise"]["has_face"].any()
    skipped = result["splits"]["train"]["skipped"]
    assert any("no face" in reason for reason in skipped)
    assert any("shorter" in reason for reason in skipped)
    assert skipped["video cannot be decoded (every frame counted without a face)"]["count"] == 1
    assert not index[index.video == "broken"]["has_face"].any()
    face = store.face(int(astro.index[astro["has_face"]][0]))
    assert face.shape == (112, 112, 3) and face.std() > 10  # a real crop, not a blank
