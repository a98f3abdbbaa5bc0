"""End to end, offline: a real face (skimage's astronaut) moving through generated videos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.transform import SimilarityTransform, warp

from abaw_kit.data.video import write_video
from abaw_kit.faces import FaceDetector, align_face, extract_video_faces, make_detector

FRAMES, WIDTH, HEIGHT = 40, 320, 240


@pytest.fixture(scope="module")
def cascade() -> FaceDetector:
    return make_detector("cascade")


def astronaut_pose(t: int) -> SimilarityTransform:
    """Photo -> frame: the photo pans right while it zooms in and out (face ~40-55 px)."""
    scale = 0.5 + 0.12 * np.sin(2 * np.pi * t / FRAMES)
    return SimilarityTransform(scale=scale, translation=(-60 + 2 * t,
                                                         -20 + 10 * np.cos(2 * np.pi * t / FRAMES)))


def astronaut_frames() -> Iterator[np.ndarray]:
    photo = data.astronaut()
    for t in range(FRAMES):
        yield warp(photo, astronaut_pose(t).inverse, output_shape=(HEIGHT, WIDTH),
                   preserve_range=True, cval=90).astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "astronaut.mp4"
    write_video(path, astronaut_frames())
    return path


def grey_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.mean(-1).ravel(), b.mean(-1).ravel())[0, 1])


def test_moving_face_is_found_and_aligned(astronaut_video: Path, cascade: FaceDetector) -> None:
    seen: list[int] = []
    result = extract_video_faces(astronaut_video, ["single"], cascade, progress=seen.append)
    assert result.decoded_frames == result.num_frames == FRAMES and sum(seen) == FRAMES
    assert not result.no_face and result.decode_error is None
    subject = result["single"]
    assert subject.has_face.shape == (FRAMES,) and subject.has_face.mean() >= 0.9
    assert subject.faces.shape == (subject.has_face.sum(), 112, 112, 3)
    assert subject.faces.dtype == np.uint8
    # reference: the same detector's landmarks on the still photo, carried by the known pose
    photo_marks = cascade.detect(data.astronaut())[0].landmarks[0]
    frames = list(astronaut_frames())
    correlations = [
        grey_correlation(face, align_face(frames[t], astronaut_pose(t)(photo_marks)))
        for face, t in zip(subject.faces, np.flatnonzero(subject.has_face), strict=True)]
    assert np.median(correlations) > 0.75 and min(correlations) > 0.4


def test_detect_every_and_annotation_length(astronaut_video: Path,
                                            cascade: FaceDetector) -> None:
    longer = extract_video_faces(astronaut_video, ["single"], cascade, detect_every=4,
                                 num_frames=FRAMES + 5, batch_size=3)
    subject = longer["single"]
    assert longer.num_frames == FRAMES + 5 and longer.decoded_frames == FRAMES
    assert subject.has_face.shape == (FRAMES + 5,) and not subject.has_face[FRAMES:].any()
    assert subject.has_face[:FRAMES].mean() >= 0.9  # frames between detections interpolated
    assert len(subject.faces) == subject.has_face.sum()
    shorter = extract_video_faces(astronaut_video, ["single"], cascade, detect_every=8,
                                  num_frames=12)
    assert shorter.decoded_frames == 12 and shorter["single"].has_face.shape == (12,)


def test_left_and_right_subjects_get_their_own_face(tmp_path: Path,
                                                    cascade: FaceDetector) -> None:
    head = Image.fromarray(data.astronaut()[30:230, 120:320]).resize((130, 130))
    left_face = np.asarray(head)
    right_face = np.ascontiguousarray(left_face[:, ::-1, ::-1])  # mirrored, red <-> blue

    def frames() -> Iterator[np.ndarray]:
        for t in range(12):
            canvas = np.full((160, 320, 3), 90, np.uint8)
            canvas[15:145, 5 + t: 135 + t] = left_face
            canvas[15:145, 180 - t: 310 - t] = right_face
            yield canvas

    path = tmp_path / "pair.avi"
    write_video(path, frames())
    result = extract_video_faces(path, ["left", "right"], cascade, detect_every=2)
    left, right = result["left"], result["right"]
    assert left.has_face.mean() >= 0.8 and right.has_face.mean() >= 0.8
    # the left subject's crops are red-skinned, the right subject's (swapped) blue-skinned
    left_rgb = left.faces.reshape(-1, 3).mean(axis=0)
    right_rgb = right.faces.reshape(-1, 3).mean(axis=0)
    assert left_rgb[0] > left_rgb[2] + 20 and right_rgb[2] > right_rgb[0] + 20


def test_video_without_a_face(tmp_path: Path, cascade: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.mp4"
    write_video(path, (np.full((96, 128, 3), 120, np.uint8)
                       + rng.integers(0, 30, (96, 128, 3), dtype=np.uint8) for _ in range(8)))
    result = extract_video_faces(path, ["single"], cascade)
    assert result.no_face and result.decoded_frames == 8
    assert result["single"].faces.shape == (0, 112, 112, 3)
    assert result["single"].has_face.tolist() == [False] * 8


def test_bad_subjects_are_rejected(astronaut_video: Path, cascade: FaceDetector) -> None:
    with pytest.raises(ValueError, match="subjects must be distinct"):
        extract_video_faces(astronaut_video, ["left", "left"], cascade)
