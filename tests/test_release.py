"""The release reader on small fake Aff-Wild2 layouts built in tmp_path (ABAW5 and ABAW6 names)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from abaw_kit.classes import ANNOTATION_HEADER, SUBMISSION_HEADER
from abaw_kit.data.release import (
    AnnotatedVideo,
    crop_frames,
    find_release,
    read_annotation,
    read_example_file,
    read_test_list,
    scan_crop_folder,
    split_subject,
)
from abaw_kit.data.release_report import summarize, summary_table
from abaw_kit.errors import AbawError

EDITIONS = {
    5: ("5th_ABAW_Annotations", "EXPR_Classification_Challenge",
        "Expression_Classification_Challenge_test_set_release.txt",
        "CVPR_5th_ABAW_EXPR_test_set_example.txt"),
    6: ("6th_ABAW_Annotations", "EXPR_Recognition_Challenge",
        "Expression_Recognition_Challenge_test_set_release.txt",
        "CVPR_6th_ABAW_Expr_test_set_example.txt"),
}

TRAIN = {"1-30-1280x720": [0, 4, -1, 7, 4],
         "10-60-1280x720_left": [1, 1, 2],
         "10-60-1280x720_right": [-1, 6, 6]}
VAL = {"video45_1": [5, 3, -1, 0], "166": [7, 7]}
TEST_FRAMES = {"t1": [1, 2, 3], "t2_left": [1, 2]}


def write_annotation(path: Path, labels: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ANNOTATION_HEADER + "\n" + "".join(f"{v}\n" for v in labels))
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_release(root: Path, edition: int = 5, example: bool = True,
                 nested_test_files: bool = False) -> Path:
    """A miniature release; its crops, videos and oddities are what the tests count by hand.

    Crops: 1-30 frames 1,2,3 and 7 (past its 5 labels) plus notes.txt; _left 1,3; _right 2,3
    (in cropped_aligned_new_50_vids); 166 frames 1,2 (new_50_vids); video45_1 none; t1 1,3.
    Videos: 1-30 (batch1), 10-60 (.AVI one folder deeper), video45_1 and t1 (batch2); 166 and
    t2 are missing.
    """
    annotations_root, expr_name, list_name, example_name = EDITIONS[edition]
    expr = root / annotations_root / expr_name
    for name, labels in TRAIN.items():
        write_annotation(expr / "Train_Set" / f"{name}.txt", labels)
    for name, labels in VAL.items():
        write_annotation(expr / "Validation_Set" / f"{name}.txt", labels)
    crops = root / "cropped_aligned"
    new_crops = root / "cropped_aligned_new_50_vids"
    for frame in (1, 2, 3, 7):
        touch(crops / "1-30-1280x720" / f"{frame:05d}.jpg")
    touch(crops / "1-30-1280x720" / "notes.txt")
    for frame in (1, 3):
        touch(crops / "10-60-1280x720_left" / f"{frame:05d}.jpg")
    for frame in (2, 3):
        touch(new_crops / "10-60-1280x720_right" / f"{frame:05d}.jpg")
    for frame in (1, 2):
        touch(new_crops / "166" / f"{frame:05d}.jpg")
    for frame in (1, 3):
        touch(crops / "t1" / f"{frame:05d}.jpg")
    touch(root / "batch1" / "1-30-1280x720.mp4")
    touch(root / "batch1" / "more" / "10-60-1280x720.AVI")
    touch(root / "batch2" / "video45_1.mp4")
    touch(root / "batch2" / "t1.mp4")
    lists = root / "names_of_videos_in_each_test_set"
    examples = root / "test_set_examples"
    if nested_test_files:
        lists, examples = lists / lists.name, examples / "test_set_examples 2"
    lists.mkdir(parents=True)
    (lists / list_name).write_text("t1\r\n\r\nt2_left\r\n")
    if example:
        examples.mkdir(parents=True)
        rows = [f"{v}/{f:05d}.jpg," for v, frames in TEST_FRAMES.items() for f in frames]
        (examples / example_name).write_text(SUBMISSION_HEADER + "\n" + "\n".join(rows) + "\n")
    return root


def fake_frame_count(path: Path) -> int | None:
    return {"1-30-1280x720": 4, "10-60-1280x720": 3, "video45_1": None, "t1": 3}[path.stem]


def issues_of(split_summary: dict) -> dict[str, int]:
    return {issue["kind"]: issue["count"] for issue in split_summary["issues"]}


def test_find_release_abaw5(tmp_path: Path) -> None:
    root = make_release(tmp_path / "affwild2", edition=5)
    release = find_release(root)
    expr = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge"
    assert release.expr_dir == expr
    assert release.crop_dirs == [root / "cropped_aligned", root / "cropped_aligned_new_50_vids"]
    assert release.test_list == (root / "names_of_videos_in_each_test_set"
                                 / "Expression_Classification_Challenge_test_set_release.txt")
    assert release.example_file == (root / "test_set_examples"
                                    / "CVPR_5th_ABAW_EXPR_test_set_example.txt")
    assert release.videos["train"] == [
        AnnotatedVideo("1-30-1280x720", "1-30-1280x720", "single", "train",
                       expr / "Train_Set" / "1-30-1280x720.txt"),
        AnnotatedVideo("10-60-1280x720_left", "10-60-1280x720", "left", "train",
                       expr / "Train_Set" / "10-60-1280x720_left.txt"),
        AnnotatedVideo("10-60-1280x720_right", "10-60-1280x720", "right", "train",
                       expr / "Train_Set" / "10-60-1280x720_right.txt"),
    ]
    assert [(v.name, v.video, v.subject) for v in release.videos["val"]] == [
        ("166", "166", "single"), ("video45_1", "video45_1", "single")]
    assert [(v.name, v.video, v.subject, v.annotation) for v in release.videos["test"]] == [
        ("t1", "t1", "single", None), ("t2_left", "t2", "left", None)]
    assert release.video_files == {
        "1-30-1280x720": root / "batch1" / "1-30-1280x720.mp4",
        "10-60-1280x720": root / "batch1" / "more" / "10-60-1280x720.AVI",
        "t1": root / "batch2" / "t1.mp4",
        "video45_1": root / "batch2" / "video45_1.mp4",
    }
    assert release.test_names == ["t1", "t2_left"]


def test_find_release_abaw6_nested_without_example(tmp_path: Path) -> None:
    root = make_release(tmp_path / "release", edition=6, example=False, nested_test_files=True)
    release = find_release(root)
    assert release.expr_dir == root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge"
    assert release.test_list is not None
    assert release.test_list.name == "Expression_Recognition_Challenge_test_set_release.txt"
    assert release.example_file is None
    assert [v.name for v in release.videos["test"]] == ["t1", "t2_left"]
    summary = summarize(release)
    test = summary["splits"]["test"]
    assert test["videos"] == 2 and test["frames"] is None and test["frames_with_face"] == 2
    assert issues_of(test)["test_frames_unknown"] == 2


def test_find_release_from_inside_the_annotations(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r", edition=6)
    annotations = root / "6th_ABAW_Annotations"
    for start in (annotations, annotations / "EXPR_Recognition_Challenge"):
        release = find_release(start)
        assert release.expr_dir == annotations / "EXPR_Recognition_Challenge"
        assert len(release.videos["train"]) == 3
        assert release.crop_dirs == [root / "cropped_aligned",
                                     root / "cropped_aligned_new_50_vids"]
        assert "t1" in release.video_files
        assert release.example_file is not None


def test_two_editions_are_ambiguous_until_one_is_chosen(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r", edition=5)
    expr6 = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge"
    write_annotation(expr6 / "Train_Set" / "a.txt", [0])
    write_annotation(expr6 / "Validation_Set" / "b.txt", [1])
    with pytest.raises(AbawError, match="found 2 EXPR annotation folders.*expr_dir"):
        find_release(root)
    release = find_release(root, expr_dir=expr6)
    assert [v.name for v in release.videos["train"]] == ["a"]


def test_not_a_release(tmp_path: Path) -> None:
    (tmp_path / "holiday").mkdir()
    touch(tmp_path / "holiday" / "photo.jpg")
    with pytest.raises(AbawError) as error:
        find_release(tmp_path / "holiday")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'holiday'} does not look like an Aff-Wild2 release")
    assert "no EXPR annotation folder" in message
    with pytest.raises(AbawError, match="no such folder"):
        find_release(tmp_path / "missing")


def test_video_in_train_and_val_is_refused(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    expr = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge"
    write_annotation(expr / "Validation_Set" / "1-30-1280x720.txt", [0])
    with pytest.raises(AbawError, match="'1-30-1280x720' is annotated in both"):
        find_release(root)


def test_split_subject_only_exact_side_suffixes() -> None:
    assert split_subject("10-60-1280x720_left") == ("10-60-1280x720", "left")
    assert split_subject("10-60-1280x720_right") == ("10-60-1280x720", "right")
    assert split_subject("video45_1") == ("video45_1", "single")
    assert split_subject("left") == ("left", "single")
    assert split_subject("_left") == ("_left", "single")


def test_crop_frames_merges_both_crop_folders(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    release = find_release(root)
    assert crop_frames(release, "1-30-1280x720") == {
        f: root / "cropped_aligned" / "1-30-1280x720" / f"{f:05d}.jpg" for f in (1, 2, 3, 7)}
    assert crop_frames(release, "10-60-1280x720_right") == {
        f: root / "cropped_aligned_new_50_vids" / "10-60-1280x720_right" / f"{f:05d}.jpg"
        for f in (2, 3)}
    assert crop_frames(release, "video45_1") == {}
    touch(root / "cropped_aligned_new_50_vids" / "1-30-1280x720" / "00009.jpg")
    assert sorted(crop_frames(release, "1-30-1280x720")) == [1, 2, 3, 7, 9]
    with pytest.raises(AbawError):
        crop_frames(release, "../escape")


def test_crop_folder_unzipped_inside_its_own_name_is_unwrapped(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    outer = root / "cropped_aligned"
    inner = outer / "cropped_aligned"
    inner.mkdir()
    for child in sorted(outer.iterdir()):
        if child != inner:
            child.rename(inner / child.name)
    release = find_release(root)
    assert release.crop_dirs == [inner, root / "cropped_aligned_new_50_vids"]
    assert sorted(crop_frames(release, "t1")) == [1, 3]


def test_scan_crop_folder_reports_unexpected_files(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    for name in ("00002.jpg", "00010.jpg", "00000.jpg", "1.jpg", "000003.jpg", "00004.JPG",
                 "thumbs.db"):
        touch(folder / name)
    (folder / "sub").mkdir()
    frames, unexpected = scan_crop_folder(folder)
    assert list(frames) == [2, 4, 10]  # .JPG is a jpg too
    assert frames[10] == folder / "00010.jpg" and frames[4] == folder / "00004.JPG"
    assert unexpected == ["00000.jpg", "000003.jpg", "1.jpg", "sub", "thumbs.db"]


def test_summarize_counts_abaw5(tmp_path: Path) -> None:
    release = find_release(make_release(tmp_path / "r", edition=5))
    summary = summarize(release, frame_count=fake_frame_count, examples=2)
    train, val, test = (summary["splits"][s] for s in ("train", "val", "test"))
    # train: 5 + 3 + 3 lines; labelled 4 + 3 + 2; faces 3 (frame 7 is past the end) + 2 + 2;
    # labelled with a face: 1-30 frames 1,2 (3 is -1), _left 1,3, _right 2,3.
    assert (train["videos"], train["frames"], train["labelled_frames"]) == (3, 11, 9)
    assert (train["frames_with_face"], train["labelled_frames_with_face"]) == (7, 6)
    assert train["class_counts"] == [1, 2, 1, 0, 2, 0, 2, 1]
    assert train["class_counts_with_face"] == [1, 1, 1, 0, 1, 0, 2, 0]
    assert issues_of(train) == {"annotation_longer_than_video": 1,
                                "crops_beyond_annotation": 1,
                                "unexpected_files_in_crops": 1}
    by_kind = {issue["kind"]: issue for issue in train["issues"]}
    assert by_kind["annotation_longer_than_video"]["examples"] == [
        "1-30-1280x720: 5 frames listed, video has 4"]
    assert by_kind["unexpected_files_in_crops"]["examples"] == ["1-30-1280x720/notes.txt"]
    # val: 4 + 2 lines, labelled 3 + 2, faces only from 166 (frames 1,2, both labelled 7).
    assert (val["videos"], val["frames"], val["labelled_frames"]) == (2, 6, 5)
    assert (val["frames_with_face"], val["labelled_frames_with_face"]) == (2, 2)
    assert val["class_counts"] == [1, 0, 0, 1, 0, 1, 0, 2]
    assert issues_of(val) == {"video_frame_count_unknown": 1, "video_missing": 1,
                              "crops_missing": 1}
    # test: frames come from the example file (3 + 2); t1 has crops 1 and 3.
    assert (test["videos"], test["frames"], test["frames_with_face"]) == (2, 5, 2)
    assert test["labelled_frames"] == 0 and test["class_counts"] == [0] * 8
    assert issues_of(test) == {"video_missing": 1, "crops_missing": 1,
                               "left_right_unpaired": 1}
    assert {issue["kind"]: issue for issue in test["issues"]}["video_missing"]["examples"] == [
        "t2_left (video t2)"]

    console = Console(width=160, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert re.search(r"train\W+3\W+11\W+9\W+7\W+6\W", text)
    assert "crops_beyond_annotation" in text and "Happiness" in text


def test_summarize_without_frame_count_skips_length_check(tmp_path: Path) -> None:
    release = find_release(make_release(tmp_path / "r", edition=6))
    summary = summarize(release)
    assert "annotation_longer_than_video" not in issues_of(summary["splits"]["train"])
    assert "video_frame_count_unknown" not in issues_of(summary["splits"]["val"])


def test_summarize_cross_checks_test_list_and_duplicates(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r", edition=5)
    (root / "names_of_videos_in_each_test_set"
     / "Expression_Classification_Challenge_test_set_release.txt").write_text("t1\nt3\n")
    touch(root / "batch3" / "t1.avi")
    touch(root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge" / "Train_Set"
          / "readme.md")
    release = find_release(root)
    assert release.duplicate_video_files == {
        "t1": [root / "batch2" / "t1.mp4", root / "batch3" / "t1.avi"]}
    summary = summarize(release)
    test = issues_of(summary["splits"]["test"])
    assert test["test_video_not_in_example_file"] == 1
    assert test["test_video_not_in_test_list"] == 1
    assert test["duplicate_video_file"] == 1
    assert issues_of(summary["splits"]["train"])["unexpected_files_in_annotations"] == 1


# ----------------------------------------------------------------------------- annotation files


def test_read_annotation_tolerates_crlf_bom_and_missing_newline(tmp_path: Path) -> None:
    variants = {
        "crlf.txt": (ANNOTATION_HEADER + "\r\n0\r\n-1\r\n7\r\n").encode(),
        "no_newline.txt": (ANNOTATION_HEADER + "\n0\n-1\n7").encode(),
        "bom.txt": b"\xef\xbb\xbf" + (ANNOTATION_HEADER + "\n0\n-1\n7\n").encode(),
        "trailing_blank.txt": (ANNOTATION_HEADER + "\n0\n-1\n7\n\n\n").encode(),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        labels = read_annotation(tmp_path / name)
        assert labels.dtype == np.int64
        assert labels.tolist() == [0, -1, 7], name


@pytest.mark.parametrize(("content", "line", "words"), [
    ("Neutral,Anger\n0\n", 1, "expected the header"),
    (ANNOTATION_HEADER + "\n0\n8\n", 3, "got '8'"),
    (ANNOTATION_HEADER + "\n0\n1\nx\n", 4, "got 'x'"),
    (ANNOTATION_HEADER + "\n0\n\n1\n", 3, "got an empty line"),
    (ANNOTATION_HEADER + "\n-2\n", 2, "in -1..7"),
    ("", 1, "file is empty"),
    (ANNOTATION_HEADER + "\n", 2, "ends after the header"),
])
def test_read_annotation_errors_name_file_and_line(tmp_path: Path, content: str, line: int,
                                                   words: str) -> None:
    path = tmp_path / "bad_video.txt"
    path.write_text(content)
    with pytest.raises(AbawError) as error:
        read_annotation(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message


# ----------------------------------------------------------------------------- test-set files


def test_read_test_list(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\n\r\n b_left \r\nvideo45_1")
    assert read_test_list(path) == ["a", "b_left", "video45_1"]
    path.write_text("a\nb\na\n")
    with pytest.raises(AbawError, match=r"list\.txt:3: video 'a' is listed twice"):
        read_test_list(path)
    path.write_text("a\n../b\n")
    with pytest.raises(AbawError, match=r"list\.txt:2: expected a video name"):
        read_test_list(path)


def test_read_example_file(tmp_path: Path) -> None:
    path = tmp_path / "example.txt"
    path.write_text(SUBMISSION_HEADER + "\r\nv2/00002.jpg,\r\nv2/00001.jpg\r\nv1/00001.jpg,0")
    table = read_example_file(path)
    assert table["video"].tolist() == ["v2", "v2", "v1"]
    assert table["frame"].tolist() == [2, 1, 1]
    assert table["frame"].dtype == np.int64


@pytest.mark.parametrize(("content", "line", "words"), [
    (ANNOTATION_HEADER + "\nv/00001.jpg\n", 1, "expected the header"),
    (SUBMISSION_HEADER + "\nv/00001.jpg\nv/1.jpg\n", 3, "expected '<video>/<NNNNN>.jpg"),
    (SUBMISSION_HEADER + "\nv/00000.jpg\n", 2, "from 00001"),
    (SUBMISSION_HEADER + "\nv/00001.jpg\nw/00001.jpg\nv/00001.jpg,3\n", 4,
     "listed twice (first on line 2)"),
    (SUBMISSION_HEADER + "\n", 2, "ends after the header"),
])
def test_read_example_file_errors(tmp_path: Path, content: str, line: int, words: str) -> None:
    path = tmp_path / "example.txt"
    path.write_text(content)
    with pytest.raises(AbawError) as error:
        read_example_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message


# ----------------------------------------------------------------------------- robustness (#10)


def _case_sensitive(folder: Path) -> bool:
    probe = folder / "Case.probe"
    probe.write_bytes(b"")
    try:
        return not (folder / "case.probe").exists()
    finally:
        probe.unlink()


def test_annotation_extension_is_case_insensitive(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    train = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    write_annotation(train / "282.TXT", [3, 3])
    release = find_release(root)
    assert "282" in [v.name for v in release.videos["train"]]
    assert not release.unexpected_annotation_files


def test_annotation_in_two_spellings_is_refused(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    train = root / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge" / "Train_Set"
    if not _case_sensitive(train):
        pytest.skip("needs a case-sensitive file system")
    write_annotation(train / "282.TXT", [3, 3])
    write_annotation(train / "282.txt", [3, 3])
    with pytest.raises(AbawError, match=r"282\.txt: annotation '282' also exists as 282\.TXT"):
        find_release(root)


def test_crop_file_in_both_spellings_prefers_lowercase(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    folder.mkdir()
    if not _case_sensitive(folder):
        pytest.skip("needs a case-sensitive file system")
    for name in ("00001.JPG", "00001.jpg", "00002.Jpg"):
        touch(folder / name)
    frames, unexpected = scan_crop_folder(folder)
    assert frames == {1: folder / "00001.jpg", 2: folder / "00002.Jpg"}
    assert unexpected == ["00001.JPG"]


def test_crop_folder_name_is_case_insensitive(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    (root / "cropped_aligned").rename(root / "Cropped_Aligned")
    release = find_release(root)
    assert root / "Cropped_Aligned" in release.crop_dirs
    assert sorted(crop_frames(release, "t1")) == [1, 3]


def test_video_extension_is_case_insensitive(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    (root / "batch2" / "t1.mp4").rename(root / "batch2" / "t1.MP4")
    assert find_release(root).video_files["t1"] == root / "batch2" / "t1.MP4"


def test_repeated_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "twice_saved.txt"
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbf" + (ANNOTATION_HEADER + "\n0\n7\n").encode())
    assert read_annotation(path).tolist() == [0, 7]


@pytest.mark.parametrize(("content", "line", "shown"), [
    (ANNOTATION_HEADER + "\n0\n\ufeff1\n", 3, r"got '\ufeff1' (\ufeff is a byte order mark"),
    ("\u200b" + ANNOTATION_HEADER + "\n0\n", 1, r"got '\u200bNeutral,"),
    (ANNOTATION_HEADER + "\n0\t\n", 2, r"got '0\t'"),
])
def test_invisible_characters_are_shown_in_errors(tmp_path: Path, content: str, line: int,
                                                  shown: str) -> None:
    path = tmp_path / "odd.txt"
    path.write_bytes(content.encode())
    with pytest.raises(AbawError) as error:
        read_annotation(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: ") and shown in message, message
    assert message.isprintable(), "nothing invisible left in the message"


def test_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes((ANNOTATION_HEADER + "\n0\n").encode("utf-16"))
    with pytest.raises(AbawError, match=r"utf16\.txt:1: expected UTF-8 text, found a UTF-16"):
        read_annotation(path)
