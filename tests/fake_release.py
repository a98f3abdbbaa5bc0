"""Build a small release in the official ABAW5 layout, with known contents, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from abaw_kit.classes import ANNOTATION_HEADER, SUBMISSION_HEADER

# video name -> labels (frame i+1); crops exist for frames not in MISSING
TRAIN = {
    "1-30-1280x720": [0, 0, 4, 4, 4, -1, 1, 1],
    "10-60-1280x720_left": [5, 5, 5, 6, 6, 6],
    "10-60-1280x720_right": [2, 2, 3, 3, 7, 7],
}
VAL = {"video45_1": [7, 7, 0, 0, 4]}
TEST = {"166": 6}
MISSING = {"1-30-1280x720": {3, 8}, "10-60-1280x720_right": {1}, "166": {2}}
LATE_VIDEOS = {"video45_1"}  # crops shipped in cropped_aligned_new_50_vids


def crop_colour(video: str, frame: int) -> tuple[int, int, int]:
    """A flat colour that identifies (video, frame); survives JPEG within a few levels."""
    return (frame * 20) % 256, (sum(map(ord, video)) * 7) % 256, 128


def write_crop(path: Path, video: str, frame: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((112, 112, 3), np.uint8)
    image[:] = crop_colour(video, frame)
    Image.fromarray(image).save(path, quality=95)


def build_fake_release(root: Path) -> Path:
    expr = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge"
    for split_dir, videos in (("Train_Set", TRAIN), ("Validation_Set", VAL)):
        for name, labels in videos.items():
            path = expr / split_dir / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ANNOTATION_HEADER + "\n" + "\n".join(map(str, labels)) + "\n")
    lengths = {**{k: len(v) for k, v in {**TRAIN, **VAL}.items()}, **TEST}
    for name, length in lengths.items():
        folder = "cropped_aligned_new_50_vids" if name in LATE_VIDEOS else "cropped_aligned"
        for frame in range(1, length + 1):
            if frame not in MISSING.get(name, set()):
                write_crop(root / folder / name / f"{frame:05d}.jpg", name, frame)
    tests = root / "names_of_videos_in_each_test_set"
    tests.mkdir(parents=True)
    (tests / "Expression_Classification_Challenge_test_set_release.txt").write_text(
        "\n".join(TEST) + "\n")
    examples = root / "test_set_examples"
    examples.mkdir()
    lines = [SUBMISSION_HEADER] + [f"{name}/{f:05d}.jpg," for name, n in TEST.items()
                                   for f in range(1, n + 1)]
    (examples / "CVPR_5th_ABAW_EXPR_test_set_example.txt").write_text("\n".join(lines) + "\n")
    return root
