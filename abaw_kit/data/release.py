"""Find and parse the official Aff-Wild2 EXPR release: annotations, crops, videos, test lists.

Why strict: every later number (class weights, F1, the submission) rests on these files, and the
release has real traps (``X_left``/``X_right`` sharing one video, two crop folders, annotation and
video lengths that disagree). Malformed files stop with a one-line ``AbawError`` naming file and
line; structural oddities that do not make the data wrong are counted as issues by ``summarize``.

Layout that ``find_release`` understands (any edition, searched a few levels deep)::

    <root>/5th_ABAW_Annotations/EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<name>.txt
           (6th: EXPR_Recognition_Challenge under 6th_ABAW_Annotations; 8th likewise)
    <root>/cropped_aligned/<name>/<NNNNN>.jpg      and  cropped_aligned_new_50_vids/<name>/...
    <root>/batch1/<video>.mp4|.avi                 (batch2, batch3; also one folder deeper)
    <root>/names_of_videos_in_each_test_set/Expression_*_test_set_release.txt
    <root>/test_set_examples/CVPR_*_EXPR_test_set_example.txt
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from abaw_kit.classes import (
    ANNOTATION_HEADER,
    CLASS_NAMES,
    IGNORE_LABEL,
    NUM_CLASSES,
    SUBMISSION_HEADER,
)
from abaw_kit.errors import AbawError, quote_line

SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "Train_Set", "val": "Validation_Set"}
CROP_FOLDER_NAMES = ("cropped_aligned", "cropped_aligned_new_50_vids")
VIDEO_SUFFIXES = (".mp4", ".avi")
SEARCH_DEPTH = 4
"""How many folder levels below the root the release files may sit (archives often nest one)."""

SIDE_SUFFIXES = {"_left": "left", "_right": "right"}

ISSUE_KINDS: dict[str, str] = {
    "annotation_longer_than_video":
        "annotation (test: example file) lists frames past the end of the video file",
    "video_frame_count_unknown": "the video file's frame count could not be read",
    "video_missing": "no video file under batch*/ for this annotation",
    "duplicate_video_file": "the video name exists more than once under batch*/ (first path used)",
    "crops_missing": "no cropped-aligned face image at all for this video",
    "crops_beyond_annotation":
        "face images numbered past the annotation (test: not listed in the example file)",
    "crops_in_two_folders": "a frame has a face image in two crop folders (first folder used)",
    "unexpected_files_in_crops": "files in a crop folder not named NNNNN.jpg (ignored)",
    "unexpected_files_in_annotations":
        "files in Train_Set/Validation_Set that are not .txt (ignored)",
    "left_right_unpaired": "X_left without X_right in the split, or the reverse",
    "single_and_sided": "a video annotated both as X and as X_left/X_right",
    "test_video_also_annotated": "a test video also has a train/val annotation",
    "test_video_not_in_example_file": "named in the test list but absent from the example file",
    "test_video_not_in_test_list": "in the example file but not named in the test list",
    "test_frames_unknown": "no example file, so the frames that need a prediction are unknown",
}
"""Every issue kind ``summarize`` reports, with what it means (also the table legend)."""

_CROP_FILE = re.compile(r"(\d{5})\.jpg", re.IGNORECASE)
_LABEL_OF = {str(value): value for value in range(IGNORE_LABEL, NUM_CLASSES)}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_EXAMPLE_LINE = re.compile(r"([^/\\,]+)/([0-9]{5})\.jpg(?:,.*)?")


@dataclass(frozen=True)
class AnnotatedVideo:
    """One annotated subject: an annotation file (or a test name) and the video it comes from."""

    name: str
    video: str
    subject: str
    split: str
    annotation: Path | None


@dataclass
class Release:
    """What ``find_release`` found; parsing of the big files is left to the functions below."""

    root: Path
    expr_dir: Path | None
    videos: dict[str, list[AnnotatedVideo]]
    crop_dirs: list[Path]
    video_files: dict[str, Path]
    test_list: Path | None
    example_file: Path | None
    test_names: list[str] | None = None
    """Names in the test list (None without one); the example file wins when both exist."""
    example: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    """The parsed example file (columns video, frame), the frames that need a prediction."""
    duplicate_video_files: dict[str, list[Path]] = field(default_factory=dict)
    unexpected_annotation_files: dict[str, list[Path]] = field(default_factory=dict)


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


@dataclass
class _VideoCrops:
    frames: dict[int, Path]
    unexpected: list[Path]
    in_two_folders: list[int]


def _video_crops(release: Release, name: str) -> _VideoCrops:
    """Merge a video's crops over all crop folders; the first folder wins a repeated frame."""
    if name in {"", ".", ".."} or any(c in name for c in "/\\\0"):
        raise AbawError(f"'{name}' is not a plain video name; refused as a crop folder name")
    frames: dict[int, Path] = {}
    unexpected: list[Path] = []
    repeated: list[int] = []
    for crop_dir in release.crop_dirs:
        folder = crop_dir / name
        if not folder.is_dir():
            continue
        found, odd = scan_crop_folder(folder)
        unexpected.extend(folder / n for n in odd)
        for frame, jpg in found.items():
            if frame in frames:
                repeated.append(frame)
            else:
                frames[frame] = jpg
    return _VideoCrops(dict(sorted(frames.items())), unexpected, sorted(repeated))


def crop_frames(release: Release, name: str) -> dict[int, Path]:
    """Frame number -> face jpg of annotation ``name``, from every crop folder of the release."""
    return _video_crops(release, name).frames


# ----------------------------------------------------------------------------- finding


@dataclass
class _Found:
    expr_dirs: list[Path] = field(default_factory=list)
    crop_dirs: list[Path] = field(default_factory=list)
    batch_dirs: list[Path] = field(default_factory=list)
    test_lists: list[Path] = field(default_factory=list)
    example_files: list[Path] = field(default_factory=list)


def _has_split_folder(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in SPLIT_FOLDERS.values())


def _search(base: Path) -> _Found:
    """One depth-limited walk that notes every release part; never enters crop folders."""
    found = _Found()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        here = Path(dirpath)
        level = len(here.relative_to(base).parts)
        for name in filenames:
            low = name.lower()
            if name.startswith(".") or not low.endswith(".txt"):
                continue
            if "expr" in low and "example" in low:
                found.example_files.append(here / name)
            elif "expression" in low and "test" in low and "set" in low:
                found.test_lists.append(here / name)
        descend = []
        for name in dirnames:
            path = here / name
            if name.startswith(".") or name in SPLIT_FOLDERS.values():
                continue
            if name.lower() in CROP_FOLDER_NAMES:
                found.crop_dirs.append(path)
                continue
            if name.lower().startswith("batch"):
                found.batch_dirs.append(path)
            if name.lower().startswith("expr") and _has_split_folder(path):
                found.expr_dirs.append(path)
            descend.append(name)
        dirnames[:] = descend if level < SEARCH_DEPTH - 1 else []
    for paths in vars(found).values():
        paths.sort()
    return found


def _files_below(folder: Path, depth: int) -> Iterator[Path]:
    """Plain, non-hidden files at most ``depth`` levels below ``folder``."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            yield Path(entry.path)
        elif entry.is_dir() and depth > 1:
            yield from _files_below(Path(entry.path), depth - 1)


def _scan_videos(batch_dirs: Iterable[Path]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Video stem -> file (batch*/X or batch*/*/X), and the stems found more than once."""
    seen: dict[str, set[Path]] = defaultdict(set)
    for batch in batch_dirs:
        for path in _files_below(batch, 2):
            if path.suffix.lower() in VIDEO_SUFFIXES:
                seen[path.stem].add(path)
    files = {stem: sorted(paths)[0] for stem, paths in sorted(seen.items())}
    duplicates = {stem: sorted(paths) for stem, paths in seen.items() if len(paths) > 1}
    return files, duplicates


def _unwrap(folder: Path) -> Path:
    """``X/X/...`` left by unzipping an archive inside a folder of its own name -> inner ``X``."""
    inner = folder / folder.name
    while inner.is_dir() and [p.name for p in folder.iterdir()
                              if not p.name.startswith(".")] == [folder.name]:
        folder, inner = inner, inner / inner.name
    return folder


def _only_one(paths: list[Path], what: str, option: str) -> Path | None:
    if len(paths) > 1:
        listed = ", ".join(str(p) for p in paths)
        raise AbawError(f"found {len(paths)} {what}s ({listed}); pass the one to use ({option})")
    return paths[0] if paths else None


def _release_base(root: Path, expr_dir: Path | None) -> Path:
    """Where crops and videos live when ``root`` is the annotations root or the EXPR folder."""
    if expr_dir is None:
        return root
    base = root
    if expr_dir.resolve() == root.resolve():
        base = root.parent
    if expr_dir.parent.resolve() == base.resolve() and "annotation" in base.name.lower():
        base = base.parent
    return base


def _read_split(expr_dir: Path, split: str) -> tuple[list[AnnotatedVideo], list[Path]]:
    """The annotated videos of one split folder (sorted by name) and its non-.txt entries."""
    folder = expr_dir / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise AbawError(f"{expr_dir}: expected the folders "
                        f"{' and '.join(SPLIT_FOLDERS.values())}, but {folder.name} is missing")
    videos: list[AnnotatedVideo] = []
    unexpected: list[Path] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() == ".txt" and path.is_file() and not path.name.startswith("."):
            name = path.stem
            if name in seen:
                raise AbawError(f"{path}: annotation '{name}' also exists as "
                                f"{seen[name].name}; keep one of the two files")
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise AbawError(f"{folder}: the annotation file name {name!r} is not valid "
                                "UTF-8; rename it") from None
            seen[name] = path
            video, subject = split_subject(name)
            videos.append(AnnotatedVideo(name, video, subject, split, path))
        else:
            unexpected.append(path)
    return videos, unexpected


def _test_videos(names: Iterable[str]) -> list[AnnotatedVideo]:
    videos = []
    for name in names:
        video, subject = split_subject(name)
        videos.append(AnnotatedVideo(name, video, subject, "test", None))
    return videos


def find_release(root: str | Path, *, expr_dir: str | Path | None = None,
                 test_list: str | Path | None = None,
                 example_file: str | Path | None = None) -> Release:
    """Locate every part of an Aff-Wild2 EXPR release under ``root`` (any ABAW edition).

    ``root`` may be the release folder, the ``*_ABAW_Annotations`` folder or the EXPR folder
    itself; crops and videos are then looked for beside the annotations. The keyword arguments
    pick one part explicitly when the search finds several (e.g. 5th and 6th annotations).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AbawError(f"{root}: no such folder (expected the Aff-Wild2 release root)")
    found = _search(root)
    if expr_dir is not None:
        chosen_expr: Path | None = Path(expr_dir).expanduser()
        if not chosen_expr.is_dir():
            raise AbawError(f"{chosen_expr}: no such EXPR annotation folder")
    elif _has_split_folder(root) and not found.expr_dirs:
        chosen_expr = root
    else:
        chosen_expr = _only_one(found.expr_dirs, "EXPR annotation folder", "expr_dir")

    base = _release_base(root, chosen_expr)
    near = found
    far = _search(base) if base != root else found

    def pick(kind: str) -> list[Path]:
        return getattr(near, kind) or getattr(far, kind)

    chosen_list = (Path(test_list).expanduser() if test_list is not None else
                   _only_one(pick("test_lists"), "EXPR test list", "test_list"))
    chosen_example = (Path(example_file).expanduser() if example_file is not None else
                      _only_one(pick("example_files"), "EXPR example file", "example_file"))
    if chosen_expr is None and chosen_list is None and chosen_example is None:
        raise AbawError(
            f"{root} does not look like an Aff-Wild2 release: no EXPR annotation folder (looked "
            f"for EXPR_*/{{Train_Set,Validation_Set}} up to {SEARCH_DEPTH} levels deep, e.g. "
            "5th_ABAW_Annotations/EXPR_Classification_Challenge) and no EXPR test list or "
            "example file")

    videos: dict[str, list[AnnotatedVideo]] = {split: [] for split in SPLITS}
    unexpected: dict[str, list[Path]] = {}
    if chosen_expr is not None:
        for split in SPLIT_FOLDERS:
            videos[split], odd = _read_split(chosen_expr, split)
            if odd:
                unexpected[split] = odd
        train_files = {v.name: v.annotation for v in videos["train"]}
        for item in videos["val"]:
            if item.name in train_files:
                raise AbawError(f"{item.annotation}: '{item.name}' is annotated in both "
                                f"Train_Set and Validation_Set ({train_files[item.name]})")

    test_names = read_test_list(chosen_list) if chosen_list is not None else None
    example = read_example_file(chosen_example) if chosen_example is not None else None
    if example is not None:
        videos["test"] = _test_videos(pd.unique(example["video"]))
    elif test_names is not None:
        videos["test"] = _test_videos(test_names)

    crop_dirs = sorted({_unwrap(path) for path in pick("crop_dirs")})
    video_files, duplicates = _scan_videos(pick("batch_dirs"))
    return Release(root=root, expr_dir=chosen_expr, videos=videos, crop_dirs=crop_dirs,
                   video_files=video_files, test_list=chosen_list, example_file=chosen_example,
                   test_names=test_names, example=example, duplicate_video_files=duplicates,
                   unexpected_annotation_files=unexpected)


# ----------------------------------------------------------------------------- summary


class _Issues:
    """Counts per issue kind plus the first few examples of each."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, example: str, count: int = 1) -> None:
        if kind not in ISSUE_KINDS:
            raise KeyError(kind)
        self.counts[kind] += count
        if len(self.examples[kind]) < self.keep:
            self.examples[kind].append(example)

    def as_list(self) -> list[dict[str, Any]]:
        return [{"kind": kind, "count": self.counts[kind], "examples": self.examples[kind]}
                for kind in ISSUE_KINDS if self.counts[kind]]


def _new_split_stats() -> dict[str, Any]:
    return {"videos": 0, "frames": 0, "labelled_frames": 0, "frames_with_face": 0,
            "labelled_frames_with_face": 0, "class_counts": [0] * NUM_CLASSES,
            "class_counts_with_face": [0] * NUM_CLASSES}


def _add_classes(total: list[int], labels: np.ndarray) -> None:
    counts = np.bincount(labels[labels != IGNORE_LABEL], minlength=NUM_CLASSES)
    for index in range(NUM_CLASSES):
        total[index] += int(counts[index])


def _check_pairs(videos: list[AnnotatedVideo], issues: _Issues) -> None:
    subjects: dict[str, set[str]] = defaultdict(set)
    for item in videos:
        subjects[item.video].add(item.subject)
    for video, sides in sorted(subjects.items()):
        if sides & {"left", "right"} and not {"left", "right"} <= sides:
            issues.add("left_right_unpaired", f"{video}: only {'/'.join(sorted(sides))}")
        if "single" in sides and len(sides) > 1:
            issues.add("single_and_sided", video)


class _VideoLengths:
    """Caches ``frame_count`` per video file: X_left and X_right share one file."""

    def __init__(self, release: Release, frame_count: Callable[[Path], int | None]) -> None:
        self.release = release
        self.frame_count = frame_count
        self.cache: dict[str, int | None] = {}

    def __call__(self, video: str) -> int | None:
        if video not in self.cache:
            self.cache[video] = self.frame_count(self.release.video_files[video])
        return self.cache[video]


def _summarize_video(release: Release, item: AnnotatedVideo, listed: np.ndarray | None,
                     stats: dict[str, Any], issues: _Issues,
                     lengths: _VideoLengths | None) -> None:
    """Add one video's counts and issues; ``listed`` = its frames (None: unknown)."""
    labels = read_annotation(item.annotation) if item.annotation is not None else None
    if labels is not None:
        listed = np.arange(1, len(labels) + 1, dtype=np.int64)
    crops = _video_crops(release, item.name)
    crop_numbers = np.fromiter(crops.frames, dtype=np.int64, count=len(crops.frames))
    stats["videos"] += 1
    if not crops.frames:
        issues.add("crops_missing", item.name)
    for path in crops.unexpected:
        issues.add("unexpected_files_in_crops", f"{path.parent.name}/{path.name}")
    if crops.in_two_folders:
        issues.add("crops_in_two_folders", f"{item.name}: {len(crops.in_two_folders)} frames "
                   f"(first {crops.in_two_folders[0]:05d}.jpg)", len(crops.in_two_folders))
    if listed is None:
        stats["frames_with_face"] += len(crop_numbers)
    else:
        has_face = np.isin(listed, crop_numbers)
        beyond = np.setdiff1d(crop_numbers, listed)
        if beyond.size:
            issues.add("crops_beyond_annotation", f"{item.name}: {beyond.size} not among its "
                       f"{len(listed)} frames (first {int(beyond[0]):05d}.jpg)", int(beyond.size))
        stats["frames"] += len(listed)
        stats["frames_with_face"] += int(has_face.sum())
        if labels is not None:
            labelled = labels != IGNORE_LABEL
            stats["labelled_frames"] += int(labelled.sum())
            stats["labelled_frames_with_face"] += int((labelled & has_face).sum())
            _add_classes(stats["class_counts"], labels)
            _add_classes(stats["class_counts_with_face"], labels[has_face])

    if item.video not in release.video_files:
        issues.add("video_missing", item.name if item.name == item.video
                   else f"{item.name} (video {item.video})")
    elif lengths is not None:
        length = lengths(item.video)
        last = int(listed.max()) if listed is not None and len(listed) else 0
        if length is None:
            issues.add("video_frame_count_unknown", str(release.video_files[item.video]))
        elif last > length:
            issues.add("annotation_longer_than_video",
                       f"{item.name}: {last} frames listed, video has {length}")


def summarize(release: Release, frame_count: Callable[[Path], int | None] | None = None,
              examples: int = 3, *, progress: bool = False) -> dict[str, Any]:
    """Per-split counts (videos, frames, labels, faces, classes) and the issues found.

    ``frame_count(video_file)`` returns the video's frame count or None; without it the
    annotation-vs-video length check is skipped (decoding is the slow part).
    """
    lengths = _VideoLengths(release, frame_count) if frame_count is not None else None
    listed_by_video: dict[str, np.ndarray] = {}
    if release.example is not None:
        for video, group in release.example.groupby("video", sort=False):
            listed_by_video[str(video)] = group["frame"].to_numpy(dtype=np.int64)

    work: Iterable[AnnotatedVideo] = [item for split in SPLITS for item in release.videos[split]]
    if progress:
        from rich.progress import track
        work = track(work, description="Scanning the release")

    stats = {split: _new_split_stats() for split in SPLITS}
    issues = {split: _Issues(examples) for split in SPLITS}
    duplicates_seen: dict[str, set[str]] = {split: set() for split in SPLITS}
    for item in work:
        listed = listed_by_video.get(item.name) if release.example is not None else None
        _summarize_video(release, item, listed, stats[item.split], issues[item.split], lengths)
        if (item.video in release.duplicate_video_files
                and item.video not in duplicates_seen[item.split]):
            duplicates_seen[item.split].add(item.video)
            paths = release.duplicate_video_files[item.video]
            issues[item.split].add("duplicate_video_file",
                                   f"{item.video}: {', '.join(str(p) for p in paths)}")

    for split, paths in release.unexpected_annotation_files.items():
        for path in paths:
            issues[split].add("unexpected_files_in_annotations", str(path))
    for split in SPLITS:
        _check_pairs(release.videos[split], issues[split])
    _check_test(release, stats["test"], issues["test"])

    return {
        "root": str(release.root),
        "expr_dir": str(release.expr_dir) if release.expr_dir else None,
        "test_list": str(release.test_list) if release.test_list else None,
        "example_file": str(release.example_file) if release.example_file else None,
        "crop_dirs": [str(path) for path in release.crop_dirs],
        "video_files": len(release.video_files),
        "splits": {split: {**stats[split], "issues": issues[split].as_list()}
                   for split in SPLITS},
    }


def _check_test(release: Release, stats: dict[str, Any], issues: _Issues) -> None:
    """Cross-check the test names against the list, the example file and the train/val sets."""
    tested = [item.name for item in release.videos["test"]]
    annotated = {item.name for split in SPLIT_FOLDERS for item in release.videos[split]}
    for name in tested:
        if name in annotated:
            issues.add("test_video_also_annotated", name)
    if release.example is None:
        if tested:
            stats["frames"] = None
            issues.add("test_frames_unknown", "no *EXPR*example*.txt found", len(tested))
        return
    if release.test_names is not None:
        in_example = set(tested)
        for name in release.test_names:
            if name not in in_example:
                issues.add("test_video_not_in_example_file", name)
        in_list = set(release.test_names)
        for name in tested:
            if name not in in_list:
                issues.add("test_video_not_in_test_list", name)


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def summary_table(summary: dict[str, Any]) -> Table:
    """Counts per split, labelled frames per class, and the issues, stacked in one renderable."""
    counts = Table(title=f"Aff-Wild2 EXPR release at {summary['root']}", title_justify="left")
    counts.add_column("split")
    for header in ("videos", "frames", "labelled", "with face", "labelled with face"):
        counts.add_column(header, justify="right")
    classes = Table(title="Labelled frames per class", title_justify="left")
    classes.add_column("split")
    for name in CLASS_NAMES:
        classes.add_column(name, justify="right")
    problems = Table(title="Issues", title_justify="left")
    for header in ("split", "kind", "count", "examples"):
        problems.add_column(header, justify="right" if header == "count" else "left")

    for split, stats in summary["splits"].items():
        counts.add_row(split, _number(stats["videos"]), _number(stats["frames"]),
                       _number(stats["labelled_frames"]), _number(stats["frames_with_face"]),
                       _number(stats["labelled_frames_with_face"]))
        if stats["labelled_frames"]:
            classes.add_row(split, *(_number(n) for n in stats["class_counts"]))
        for issue in stats["issues"]:
            problems.add_row(split, issue["kind"], _number(issue["count"]),
                             "; ".join(issue["examples"]))
    if not problems.row_count:
        problems.add_row("-", "none", "0", "")

    layout = Table.grid(padding=(1, 0))
    layout.add_row(counts)
    if classes.row_count:
        layout.add_row(classes)
    layout.add_row(problems)
    return layout
