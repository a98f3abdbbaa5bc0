"""Write, read and check files in the ABAW EXPR submission format.

The format (ABAW5, kept by ABAW6 and ABAW8): the header ``SUBMISSION_HEADER``, then one line
``<video>/<NNNNN>.jpg,<label 0..7>`` per frame, in the order of the release's example file, which
lists every frame of every test video (with or without a detected face). Frame numbers are 1-based
and zero-padded to five digits, as in ``cropped_aligned``.

Strings are built column-wise with pandas, so a 1M-line file is written or read in about a second.
"""

from __future__ import annotations

import csv
import io
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_kit.classes import CLASS_NAMES, NUM_CLASSES, SUBMISSION_HEADER
from abaw_kit.errors import AbawError, quote_line
from abaw_kit.workspace import atomic_path

FRAME_DIGITS = 5
MAX_FILE_BYTES = 256 * 1024 * 1024
"""Largest prediction file read: a line for every frame of Aff-Wild2 (under 3M) is under
100 MB; a bigger file is not one, and reading it whole would only exhaust memory."""
_LINE_RE = re.compile(r"[^,/\s]+/(?:\d{5}|[1-9]\d{5,8})\.jpg,-?(?:0|[1-9]\d{0,8})")
"""One body line: video (no comma, slash or space), five-digit frame, integer label."""


def format_frame(video: str, frame: int) -> str:
    """``video/00001.jpg``: the image location of 1-based ``frame`` of ``video``."""
    return f"{video}/{int(frame):0{FRAME_DIGITS}d}.jpg"


def _locations(videos: Any, frames: Any) -> pd.Series:
    """Image locations for whole columns at once (no per-line Python formatting)."""
    names = pd.Series(np.asarray(videos).ravel()).astype(str)
    numbers = pd.Series(np.asarray(frames).ravel()).astype(np.int64).astype(str)
    return names + "/" + numbers.str.zfill(FRAME_DIGITS) + ".jpg"


def write_predictions(path: str | Path, videos: Any, frames: Any, labels: Any) -> Path:
    """Write an ABAW-format file atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    names = np.asarray(videos).ravel().astype(str)
    numbers = np.asarray(frames).ravel()
    values = np.asarray(labels).ravel()
    if not (len(names) == len(numbers) == len(values)):
        raise AbawError(f"{path}: videos ({len(names)}), frames ({len(numbers)}) and labels "
                        f"({len(values)}) differ in length; expected one of each per frame")
    if len(values) and (values.min() < 0 or values.max() >= NUM_CLASSES):
        bad = int(np.flatnonzero((values < 0) | (values >= NUM_CLASSES))[0])
        raise AbawError(f"{path}: frame {format_frame(names[bad], numbers[bad])} has label "
                        f"{values[bad]}; expected 0..{NUM_CLASSES - 1}")
    if len(numbers) and numbers.min() < 1:
        bad = int(np.flatnonzero(numbers < 1)[0])
        raise AbawError(f"{path}: video {names[bad]} has frame number {numbers[bad]}; "
                        "frames are 1-based")
    unique_names = pd.unique(names)
    odd = [v for v in unique_names if not re.fullmatch(r"[^,/\s]+", v)]
    if odd:
        raise AbawError(f"{path}: video name '{odd[0]}' contains a comma, slash or space; "
                        "it cannot be written in the submission format")
    lines = _locations(names, numbers) + "," + pd.Series(values.astype(np.int64)).astype(str)
    text = SUBMISSION_HEADER + "\n" + "".join(lines + "\n")
    with atomic_path(path, suffix=".txt") as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return path


def _read_lines(path: Path) -> list[str]:
    """The file's lines; a folder, device, pipe or oversized file is a one-line error (reading
    /dev/zero or a FIFO would never end)."""
    expected = "expected a prediction text file"
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise AbawError(f"{path}: file not found") from exc
    except OSError as exc:
        raise AbawError(f"{path}: cannot read it ({exc.strerror or exc}); {expected}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise AbawError(f"{path}: is a folder; {expected}")
    if not stat.S_ISREG(info.st_mode):
        raise AbawError(f"{path}: not a regular file (a device, pipe or socket); {expected}")
    too_big = (f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB, more than any ABAW "
               f"prediction file; {expected}")
    if info.st_size > MAX_FILE_BYTES:
        raise AbawError(too_big)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded: the size may change meanwhile
    except OSError as exc:
        raise AbawError(f"{path}: cannot read it ({exc.strerror or exc}); {expected}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise AbawError(too_big)
    try:
        text = data.decode("utf-8").lstrip("\ufeff")  # byte order marks of Windows editors
    except UnicodeDecodeError as exc:
        raise AbawError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_checked_lines(body: list[str]) -> pd.DataFrame:
    """Split lines already matched by _LINE_RE into columns with pandas' C parser: turning
    ``video/00001.jpg,3`` into ``video,00001,3`` is safe because names hold no ',' or '/'."""
    if not body:
        return pd.DataFrame({"video": pd.Series(dtype=object),
                             "frame": pd.Series(dtype=np.int64),
                             "label": pd.Series(dtype=np.int64)})
    text = "\n".join(body).replace(".jpg,", ",").replace("/", ",")
    table = pd.read_csv(io.StringIO(text), header=None, names=["video", "frame", "label"],
                        dtype={"video": object, "frame": np.int64, "label": np.int64},
                        quoting=csv.QUOTE_NONE, na_filter=False, engine="c")
    table["video"] = table["video"].astype(object)
    return table


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read an ABAW-format file strictly: DataFrame(video, frame, label), one row per line.

    Errors name the file and line: wrong header, a malformed line, a label outside 0..7, or a
    frame listed twice.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise AbawError(f"{path}: the file is empty; expected the header {SUBMISSION_HEADER}")
    if lines[0] != SUBMISSION_HEADER:
        raise AbawError(f"{path}:1: header {quote_line(lines[0])}; expected "
                        f"'{SUBMISSION_HEADER}'")
    body = lines[1:]
    well_formed = pd.Series(body, dtype=object).str.fullmatch(_LINE_RE).to_numpy(dtype=bool)
    if not well_formed.all():
        first = int(np.flatnonzero(~well_formed)[0])
        raise AbawError(f"{path}:{first + 2}: {quote_line(body[first])} is not "
                        "'<video>/<NNNNN>.jpg,<label>'")
    table = _parse_checked_lines(body)
    label_values = table["label"].to_numpy()
    bad_label = (label_values < 0) | (label_values >= NUM_CLASSES)
    if bad_label.any():
        first = int(np.flatnonzero(bad_label)[0])
        raise AbawError(f"{path}:{first + 2}: label {table['label'].iat[first]}; "
                        f"expected 0..{NUM_CLASSES - 1}")
    repeated = table.duplicated(["video", "frame"]).to_numpy()
    if repeated.any():
        first = int(np.flatnonzero(repeated)[0])
        row = table.iloc[first]
        earlier = int(np.flatnonzero((table["video"] == row["video"]).to_numpy()
                                     & (table["frame"] == row["frame"]).to_numpy())[0])
        raise AbawError(f"{path}:{first + 2}: {format_frame(row['video'], row['frame'])} "
                        f"is listed again (first at line {earlier + 2}); expected each frame once")
    return table


def _example_table(example: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The example's (video, frame) rows: given as a table, or read from the release's file."""
    if isinstance(example, pd.DataFrame):
        return example
    from abaw_kit.data.release import read_example_file

    return read_example_file(example)


def check_submission(path: str | Path, example: pd.DataFrame | str | Path) -> dict[str, Any]:
    """Check a file against the example (frames in the same order, labels 0..7, header).

    Returns a summary (path, videos, frames, class histogram); raises AbawError naming the first
    offending line and what was expected there.
    """
    path = Path(path)
    expected = _example_table(example)
    table = read_predictions(path)
    exp_videos = expected["video"].astype(str).to_numpy(dtype=object)
    exp_frames = expected["frame"].to_numpy(np.int64)
    got_videos = table["video"].to_numpy(dtype=object)
    got_frames = table["frame"].to_numpy(np.int64)
    common = min(len(table), len(expected))
    differs = (got_videos[:common] != exp_videos[:common]) | (
        got_frames[:common] != exp_frames[:common])
    if differs.any():
        first = int(np.flatnonzero(differs)[0])
        found = format_frame(got_videos[first], got_frames[first])
        wanted = format_frame(exp_videos[first], exp_frames[first])
        if got_videos[first] not in set(exp_videos):
            reason = f"video '{got_videos[first]}' is not in the example file"
        else:
            reason = "frames missing or out of order"
        raise AbawError(f"{path}:{first + 2}: found {found}, expected {wanted} "
                        f"({reason})")
    if len(table) < len(expected):
        wanted = format_frame(exp_videos[common], exp_frames[common])
        raise AbawError(f"{path}:{common + 2}: file ends after {len(table)} frames; expected "
                        f"{wanted} next ({len(expected)} frames in the example)")
    if len(table) > len(expected):
        extra = format_frame(got_videos[common], got_frames[common])
        raise AbawError(f"{path}:{common + 2}: {extra} is beyond the example's last frame; "
                        f"expected {len(expected)} frames")
    counts = np.bincount(table["label"].to_numpy(np.int64), minlength=NUM_CLASSES)
    return {
        "path": str(path.resolve()),
        "videos": int(pd.unique(got_videos).size),
        "frames": len(table),
        "class_histogram": {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)},
    }


def next_free_path(directory: str | Path, stem: str, suffix: str = ".txt") -> Path:
    """``<directory>/<stem>_<n><suffix>`` with n one above the highest existing number, so an
    earlier submission is never overwritten and numbers follow the order of creation."""
    directory = Path(directory)
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+){re.escape(suffix)}$")
    taken = [int(m.group(1)) for p in directory.glob(f"{stem}_*{suffix}")
             if (m := pattern.match(p.name))] if directory.is_dir() else []
    return directory / f"{stem}_{max(taken, default=0) + 1}{suffix}"


def align_to_example(example: pd.DataFrame, pred_videos: Any, pred_frames: Any,
                     probs: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Reorder per-frame probabilities into the example's rows.

    The example decides which frames exist: a frame the predictions lack takes the nearest
    earlier predicted frame of its video (the last one beyond the end, the first one before the
    start), and predicted frames the example does not list are dropped. Returns the aligned
    probabilities and, for every video whose frames differ, {video, example_frames,
    predicted_frames, filled, dropped}. A video with no prediction at all is an error.
    """
    values = np.asarray(probs)
    videos = pd.Series(np.asarray(pred_videos).ravel()).astype(str)
    frames = np.asarray(pred_frames).ravel().astype(np.int64)
    if not (len(videos) == len(frames) == len(values)):
        raise AbawError(f"predictions: videos ({len(videos)}), frames ({len(frames)}) and "
                        f"probabilities ({len(values)}) differ in length")
    codes, names = pd.factorize(videos, sort=False)
    ex_videos = example["video"].astype(str)
    ex_frames = example["frame"].to_numpy(np.int64)
    ex_codes = pd.Index(names).get_indexer(ex_videos)
    if (ex_codes < 0).any():
        missing = ex_videos.iat[int(np.flatnonzero(ex_codes < 0)[0])]
        raise AbawError(f"video '{missing}' is in the example file but has no predictions; "
                        "expected the test face store to hold every example video "
                        "(re-run `abaw prepare`)")
    stride = int(max(frames.max(initial=0), ex_frames.max(initial=0))) + 2
    pred_keys = codes.astype(np.int64) * stride + frames
    order = np.argsort(pred_keys, kind="stable")
    sorted_keys = pred_keys[order]
    if (np.diff(sorted_keys) == 0).any():
        dup = order[int(np.flatnonzero(np.diff(sorted_keys) == 0)[0]) + 1]
        raise AbawError(f"predictions list {format_frame(videos.iat[dup], frames[dup])} twice")
    ex_keys = ex_codes.astype(np.int64) * stride + ex_frames
    at_or_before = np.searchsorted(sorted_keys, ex_keys, side="right") - 1
    video_first = np.searchsorted(sorted_keys, ex_codes.astype(np.int64) * stride, side="left")
    chosen = np.maximum(at_or_before, video_first)
    aligned = values[order[chosen]]
    exact = sorted_keys[chosen] == ex_keys

    ex_table = pd.DataFrame({"video": ex_videos.to_numpy(dtype=object), "filled": ~exact})
    per_example = ex_table.groupby("video", sort=False).agg(
        example_frames=("filled", "size"), filled=("filled", "sum"))
    predicted = videos.value_counts(sort=False)
    differences: list[dict[str, Any]] = []
    for video, row in per_example.iterrows():
        n_pred = int(predicted[video])
        matched = int(row["example_frames"]) - int(row["filled"])
        if row["filled"] or n_pred != matched:
            differences.append({"video": str(video), "example_frames": int(row["example_frames"]),
                                "predicted_frames": n_pred, "filled": int(row["filled"]),
                                "dropped": n_pred - matched})
    return aligned, differences
