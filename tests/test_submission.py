"""ABAW submission files: writing, strict reading, checking against the example, alignment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abaw_kit.classes import SUBMISSION_HEADER
from abaw_kit.errors import AbawError
from abaw_kit.submission import (
    align_to_example,
    check_submission,
    format_frame,
    next_free_path,
    read_predictions,
    write_predictions,
)

EXAMPLE = pd.DataFrame({"video": ["10-60-1280x720_left"] * 3 + ["10-60-1280x720_right"] * 3
                        + ["video45_1"] * 2,
                        "frame": [1, 2, 3, 1, 2, 3, 1, 2]})
LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7])


def _good_file(tmp_path: Path) -> Path:
    return write_predictions(tmp_path / "pred.txt", EXAMPLE["video"], EXAMPLE["frame"], LABELS)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_format_frame_pads_to_five_digits() -> None:
    assert format_frame("166", 1) == "166/00001.jpg"
    assert format_frame("video45_1", 12345) == "video45_1/12345.jpg"


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    path = _good_file(tmp_path)
    lines = _lines(path)
    assert lines[0] == SUBMISSION_HEADER
    assert lines[1] == "10-60-1280x720_left/00001.jpg,0"
    assert lines[-1] == "video45_1/00002.jpg,7"
    table = read_predictions(path)
    assert list(table.columns) == ["video", "frame", "label"]
    assert table["video"].tolist() == EXAMPLE["video"].tolist()
    assert table["frame"].tolist() == EXAMPLE["frame"].tolist()
    assert table["label"].tolist() == LABELS.tolist()
    assert not list(tmp_path.glob(".pred.txt*"))  # no temporary left behind


def test_write_refuses_bad_labels_and_keeps_old_file(tmp_path: Path) -> None:
    path = _good_file(tmp_path)
    before = path.read_text()
    with pytest.raises(AbawError, match="label 8"):
        write_predictions(path, ["v"], [1], [8])
    with pytest.raises(AbawError, match="1-based"):
        write_predictions(path, ["v"], [0], [1])
    assert path.read_text() == before


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    summary = check_submission(_good_file(tmp_path), EXAMPLE)
    assert summary["videos"] == 3 and summary["frames"] == 8
    assert summary["class_histogram"]["Neutral"] == 1 and sum(
        summary["class_histogram"].values()) == 8


Edit = Callable[[list[str]], list[str]]


def _mutated(tmp_path: Path, change: Edit) -> Path:
    lines = _lines(_good_file(tmp_path))
    return _write_lines(tmp_path / "bad.txt", change(lines))


@pytest.mark.parametrize(("change", "message"), [
    (lambda ls: ["image_location,Neutral,Anger"] + ls[1:], r"bad.txt:1: header"),
    (lambda ls: ls[:3] + ls[4:], r"bad.txt:4: found 10-60-1280x720_right/00001.jpg, expected "
                                 r"10-60-1280x720_left/00003.jpg"),
    (lambda ls: ls[:3] + [ls[2]] + ls[3:], r"bad.txt:4: .*listed again \(first at line 3\)"),
    (lambda ls: ls[:2] + ["10-60-1280x720_left/00002.jpg,8"] + ls[3:], r"bad.txt:3: label 8"),
    (lambda ls: ls + ["other_video/00001.jpg,0"], r"bad.txt:10: .*beyond the example"),
    (lambda ls: ls[:-2] + ["other_video/00001.jpg,0", "other_video/00002.jpg,0"],
     r"bad.txt:8: .*video 'other_video' is not in the example"),
    (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], r"bad.txt:3: found .*00003.jpg, expected "
                                                   r".*00002.jpg \(frames missing or out of order"),
    (lambda ls: ls[:-1], r"bad.txt:9: file ends after 7 frames; expected video45_1/00002.jpg"),
    (lambda ls: ls[:2] + ["10-60-1280x720_left/2.jpg,1"] + ls[3:], r"bad.txt:3: .* is not"),
    (lambda ls: ls[:2] + ["10-60-1280x720_left/00002.jpg"] + ls[3:], r"bad.txt:3: .* is not"),
    (lambda ls: ls[:2] + [""] + ls[3:], r"bad.txt:3: an empty line is not"),
], ids=["header", "missing-frame", "duplicate", "label-8", "extra-line", "unknown-video",
        "order-swapped", "truncated", "unpadded-frame", "no-label", "blank-line"])
def test_check_names_the_first_bad_line(tmp_path: Path, change: Edit, message: str) -> None:
    with pytest.raises(AbawError, match=message):
        check_submission(_mutated(tmp_path, change), EXAMPLE)


def test_check_reads_the_example_file(tmp_path: Path) -> None:
    example = _write_lines(tmp_path / "example.txt", [SUBMISSION_HEADER] + [
        f"{format_frame(v, f)}," for v, f in zip(EXAMPLE["video"], EXAMPLE["frame"],
                                                  strict=True)])
    assert check_submission(_good_file(tmp_path), example)["frames"] == 8


def test_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AbawError, match="not found"):
        read_predictions(tmp_path / "nothing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(AbawError, match="empty"):
        read_predictions(tmp_path / "empty.txt")


def test_next_free_path_never_reuses_a_name(tmp_path: Path) -> None:
    assert next_free_path(tmp_path / "new", "expr_submission").name == "expr_submission_1.txt"
    (tmp_path / "expr_submission_1.txt").write_text("x")
    (tmp_path / "expr_submission_3.txt").write_text("x")
    (tmp_path / "expr_submission_final.txt").write_text("x")
    assert next_free_path(tmp_path, "expr_submission").name == "expr_submission_4.txt"


def test_align_follows_the_example_and_reports_differences() -> None:
    example = pd.DataFrame({"video": ["a"] * 4 + ["b"] * 2, "frame": [1, 2, 3, 4, 1, 2]})
    # Predictions in another video order; a has only frames 1-2, b has an extra frame 3.
    videos = ["b", "b", "b", "a", "a"]
    frames = [1, 2, 3, 1, 2]
    probs = np.arange(5 * 8, dtype=np.float64).reshape(5, 8)
    aligned, report = align_to_example(example, videos, frames, probs)
    np.testing.assert_array_equal(aligned, probs[[3, 4, 4, 4, 0, 1]])
    assert report == [
        {"video": "a", "example_frames": 4, "predicted_frames": 2, "filled": 2, "dropped": 0},
        {"video": "b", "example_frames": 2, "predicted_frames": 3, "filled": 0, "dropped": 1},
    ]


def test_align_refuses_a_video_without_predictions() -> None:
    example = pd.DataFrame({"video": ["a", "z"], "frame": [1, 1]})
    with pytest.raises(AbawError, match="'z' is in the example file but has no predictions"):
        align_to_example(example, ["a"], [1], np.ones((1, 8)))


def test_numeric_and_dotted_video_names_survive_a_round_trip(tmp_path: Path) -> None:
    videos = ["166", "166", "007", "a.jpg", "1-30-1280x720"]
    frames = [1, 2, 1, 1, 123456]
    path = write_predictions(tmp_path / "p.txt", videos, frames, [1, 2, 3, 4, 5])
    table = read_predictions(path)
    assert table["video"].tolist() == videos
    assert table["frame"].tolist() == frames
    assert _lines(path)[-1] == "1-30-1280x720/123456.jpg,5"


def test_a_prediction_file_with_a_byte_order_mark_is_read(tmp_path) -> None:
    from abaw_kit.submission import SUBMISSION_HEADER, read_predictions

    path = tmp_path / "bom.txt"
    path.write_bytes(("\ufeff" + SUBMISSION_HEADER + "\nv/00001.jpg,3\n").encode("utf-8"))
    table = read_predictions(path)
    assert list(table["label"]) == [3]


def test_an_invisible_character_in_a_line_is_shown(tmp_path) -> None:
    import pytest

    from abaw_kit.errors import AbawError
    from abaw_kit.submission import SUBMISSION_HEADER, read_predictions

    path = tmp_path / "zw.txt"
    path.write_text(SUBMISSION_HEADER.replace(",", "\u200b,", 1) + "\nv/00001.jpg,3\n")
    with pytest.raises(AbawError, match=r"\\u200b"):
        read_predictions(path)
