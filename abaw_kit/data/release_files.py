"""Parse the files of the Aff-Wild2 EXPR release: annotations, test lists, example files, and
one video's crop folder.

Malformed files stop with a one-line ``AbawError`` naming file and line: every later number
(class weights, F1, the submission) rests on these files. Where the files are is
``release.py``'s job; counting what they hold is ``release_report.py``'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_kit.classes import ANNOTATION_HEADER, IGNORE_LABEL, NUM_CLASSES, SUBMISSION_HEADER
from abaw_kit.errors import AbawError, quote_line

SIDE_SUFFIXES = {"_left": "left", "_right": "right"}

_CROP_FILE = re.compile(r"(\d{5})\.jpg", re.IGNORECASE)
_LABEL_OF = {str(value): value for value in range(IGNORE_LABEL, NUM_CLASSES)}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_EXAMPLE_LINE = re.compile(r"([^/\\,]+)/([0-9]{5})\.jpg(?:,.*)?")


def split_subject(name: str) -> tuple[str, str]:
    """``(video, subject)`` of an annotation name: ``X_left`` -> ``(X, "left")``, else single.

    Only the exact suffixes ``_left``/``_right`` mark a side: ``video45_1`` is a single subject.
    """
    for suffix, side in SIDE_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], side
    return name, "single"



# ----------------------------------------------------------------------------- text files


def _read_lines(path: Path) -> list[str]:
    """The lines of a text file: UTF-8 BOMs at the start (one, or one per re-save) and CRLF
    tolerated, trailing blank lines dropped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AbawError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AbawError(f"{path}:1: expected UTF-8 text, found a UTF-16 byte order mark; "
                        "save the file as UTF-8")
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AbawError(f"{path}:{line}: expected UTF-8 text, found byte "
                        f"0x{data[exc.start]:02x}") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_header(path: Path, lines: list[str], header: str) -> None:
    if not lines:
        raise AbawError(f"{path}:1: expected the header '{header}', but the file is empty")
    if lines[0] != header:
        raise AbawError(f"{path}:1: expected the header '{header}', got {quote_line(lines[0])}")


def _check_video_name(name: str, where: str) -> None:
    """Names from data files become folder names: allow exactly one plain path component."""
    if name in {".", ".."} or any(c in name for c in "/\\\0") or name != name.strip():
        raise AbawError(f"{where}: expected a video name (no path separators, no surrounding "
                        f"spaces), got {quote_line(name)}")


def read_annotation(path: str | Path) -> np.ndarray:
    """The labels of one annotation file as int64; element i is the label of frame i + 1."""
    path = Path(path)
    lines = _read_lines(path)
    _check_header(path, lines, ANNOTATION_HEADER)
    if len(lines) == 1:
        raise AbawError(f"{path}:2: expected the label of frame 1, but the file ends after "
                        "the header")
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for index, text in enumerate(lines[1:]):
        value = _LABEL_OF.get(text)
        if value is None:
            value = int(text) if _INTEGER.fullmatch(text) else None
            if value is None or not IGNORE_LABEL <= value < NUM_CLASSES:
                raise AbawError(f"{path}:{index + 2}: expected an integer label in "
                                f"{IGNORE_LABEL}..{NUM_CLASSES - 1}, got {quote_line(text)}")
        labels[index] = value
    return labels


def read_test_list(path: str | Path) -> list[str]:
    """Video names of a test-set list, in file order (blank lines ignored, duplicates refused)."""
    path = Path(path)
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        name = line.strip()
        if not name:
            continue
        _check_video_name(name, f"{path}:{number}")
        if name in first_line:
            raise AbawError(f"{path}:{number}: video '{name}' is listed twice "
                            f"(first on line {first_line[name]})")
        first_line[name] = number
        names.append(name)
    if not names:
        raise AbawError(f"{path}:1: expected one video name per line, but the file lists none")
    return names


def read_example_file(path: str | Path) -> pd.DataFrame:
    """The frames of an example submission (columns video, frame), in file order.

    This file, not the cropped faces, defines which frames need a prediction.
    """
    path = Path(path)
    lines = _read_lines(path)
    _check_header(path, lines, SUBMISSION_HEADER)
    if len(lines) == 1:
        raise AbawError(f"{path}:2: expected '<video>/<NNNNN>.jpg' lines, but the file ends "
                        "after the header")
    videos: list[str] = []
    frames: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        match = _EXAMPLE_LINE.fullmatch(line)
        if match is None or int(match[2]) < 1:
            raise AbawError(f"{path}:{number}: expected '<video>/<NNNNN>.jpg[,...]' with a "
                            f"frame number from 00001, got {quote_line(line)}")
        videos.append(match[1])
        frames.append(int(match[2]))
    table = pd.DataFrame({"video": pd.Series(videos, dtype=str),
                          "frame": np.asarray(frames, dtype=np.int64)})
    for row, name in table["video"].drop_duplicates().items():
        _check_video_name(str(name), f"{path}:{int(row) + 2}")
    repeated = table.duplicated(keep="first").to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        video, frame = table.iloc[row]["video"], int(table.iloc[row]["frame"])
        same = (table["video"] == video).to_numpy() & (table["frame"] == frame).to_numpy()
        first = int(np.argmax(same))
        raise AbawError(f"{path}:{row + 2}: frame {video}/{frame:05d}.jpg is listed twice "
                        f"(first on line {first + 2})")
    return table


# ----------------------------------------------------------------------------- crops


def scan_crop_folder(folder: str | Path) -> tuple[dict[int, Path], list[str]]:
    """``({frame: jpg}, unexpected names)`` of one video's crop folder; frames in order.

    ``.JPG`` counts as ``.jpg`` (archives made on other systems); when both spellings of a
    frame exist, ``.jpg`` wins and the other is listed as unexpected.
    """
    folder = Path(folder)
    frames: dict[int, Path] = {}
    unexpected: list[str] = []
    try:
        with os.scandir(folder) as entries:
            listed = sorted(entries, key=lambda e: (not e.name.endswith(".jpg"), e.name))
    except OSError as exc:
        raise AbawError(f"{folder}: cannot list the crop folder ({exc.strerror or exc})") from exc
    for entry in listed:
        match = _CROP_FILE.fullmatch(entry.name)
        if match and int(match[1]) >= 1 and int(match[1]) not in frames and entry.is_file():
            frames[int(match[1])] = Path(entry.path)
        else:
            unexpected.append(entry.name)
    return dict(sorted(frames.items())), sorted(unexpected)
