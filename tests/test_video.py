"""Video reading: chunks in order, frame limits, damaged and unreadable files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abaw_kit.data.video import iter_video_frames, video_fps, video_frame_count, write_video
from abaw_kit.errors import AbawError

WIDTH, HEIGHT, FRAMES, STEP = 320, 96, 60, 5


def bar_frames(count: int = FRAMES) -> list[np.ndarray]:
    """Frame i has a bright vertical bar at x = STEP*i, so decoded order can be checked."""
    frames = []
    for i in range(count):
        image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
        image[:, STEP * i: STEP * i + 6] = 230
        frames.append(image)
    return frames


def bar_index(frame: np.ndarray) -> int:
    """Which frame of bar_frames this decoded frame is (robust to compression blur)."""
    bright = np.flatnonzero(frame[HEIGHT // 2, :, 0] > 135)
    return round((bright.mean() - 2.5) / STEP)


def truncated_copy(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_chunks_cover_every_frame_in_order(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"
    assert write_video(path, bar_frames(), fps=30) == FRAMES
    assert video_frame_count(path) == FRAMES
    assert video_fps(path) == pytest.approx(30.0)
    frames = iter_video_frames(path, chunk=8)
    starts, positions = [], []
    for start, chunk in frames:
        assert chunk.dtype == np.uint8 and chunk.shape[1:] == (HEIGHT, WIDTH, 3)
        starts.append(start)
        positions.extend(bar_index(f) for f in chunk)
    assert starts == list(range(0, FRAMES, 8))
    assert positions == list(range(FRAMES))
    assert frames.decoded == FRAMES and frames.error is None and not frames.truncated


def test_max_frames_stops_early(tmp_path: Path) -> None:
    path = tmp_path / "bars.mp4"
    write_video(path, bar_frames())
    frames = iter_video_frames(path, chunk=8, max_frames=11)
    sizes = [len(chunk) for _, chunk in frames]
    assert sizes == [8, 3] and frames.decoded == 11
    assert [len(c) for _, c in iter_video_frames(path, max_frames=0)] == []


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_truncated_file_stops_cleanly_with_a_count(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"  # faststart: the mp4 index comes first, as when streamed
    write_video(path, bar_frames(), faststart=suffix == ".mp4")
    cut = truncated_copy(path)
    frames = iter_video_frames(cut, chunk=7)
    positions = [bar_index(f) for _, chunk in frames for f in chunk]
    assert 5 < frames.decoded < FRAMES
    assert len(positions) == frames.decoded
    # the frame at the cut may be concealed from its predecessor; all before it are exact
    assert positions[:-1] == list(range(frames.decoded - 1))


def test_truncated_mp4_without_index_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bars.mp4"  # PyAV writes the mp4 index at the end: cutting loses it
    write_video(path, bar_frames())
    cut = truncated_copy(path)
    with pytest.raises(AbawError, match=r"cannot decode video .*cut_bars\.mp4") as info:
        iter_video_frames(cut)
    assert "\n" not in str(info.value)


def test_missing_and_non_video_files(tmp_path: Path) -> None:
    with pytest.raises(AbawError, match="cannot decode video .*nope.mp4: file not found"):
        iter_video_frames(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(AbawError, match="cannot decode video .*junk.avi"):
        iter_video_frames(junk)
    # counting is for summaries: an unreadable file has no count rather than an error
    assert video_frame_count(junk) is None and video_frame_count(tmp_path / "nope.mp4") is None
    assert video_fps(tmp_path / "nope.mp4") is None


def test_torch_still_works_after_reading_a_video(tmp_path: Path) -> None:
    """decord2 loads NVBLAS globally; torch loaded after it crashed (segfault) on CPU."""
    path = tmp_path / "bars.mp4"
    write_video(path, bar_frames(3))
    script = (
        "import sys\n"
        "from abaw_kit.data.video import iter_video_frames\n"
        "assert sum(len(c) for _, c in iter_video_frames(sys.argv[1])) == 3\n"
        "import torch\n"
        "x = torch.nn.functional.conv2d(torch.randn(1, 3, 32, 32), torch.randn(4, 3, 3, 3))\n"
        "print(float((torch.randn(64, 64) @ torch.randn(64, 64)).sum() * 0) + x.shape[1])\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "4.0"
