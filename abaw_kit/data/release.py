"""Find the official Aff-Wild2 EXPR release: annotations, crops, videos, test lists.

Why strict: every later number (class weights, F1, the submission) rests on these files, and the
release has real traps (``X_left``/``X_right`` sharing one video, two crop folders, annotation and
video lengths that disagree). Malformed files stop with a one-line ``AbawError`` naming file and
line (the parsers are in ``release_files.py``); structural oddities that do not make the data
wrong are counted as issues by ``release_report.summarize``.

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
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from abaw_kit.data.release_files import (
    read_annotation,
    read_example_file,
    read_test_list,
    scan_crop_folder,
    split_subject,
)
from abaw_kit.errors import AbawError
from abaw_kit.workspace import SPLITS

__all__ = ["CROP_FOLDER_NAMES", "SEARCH_DEPTH", "SPLIT_FOLDERS", "VIDEO_SUFFIXES",
           "AnnotatedVideo", "Release", "VideoCrops", "crop_frames", "find_release",
           "read_annotation", "read_example_file", "read_test_list", "scan_crop_folder",
           "split_subject", "video_crops"]

SPLIT_FOLDERS = {"train": "Train_Set", "val": "Validation_Set"}
CROP_FOLDER_NAMES = ("cropped_aligned", "cropped_aligned_new_50_vids")
VIDEO_SUFFIXES = (".mp4", ".avi")
SEARCH_DEPTH = 4
"""How many folder levels below the root the release files may sit (archives often nest one)."""


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
    """What ``find_release`` found; parsing of the big files is left to ``release_files.py``."""

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


# ----------------------------------------------------------------------------- crops


@dataclass
class VideoCrops:
    """One video's face images over all crop folders, and what did not fit."""

    frames: dict[int, Path]
    unexpected: list[Path]
    in_two_folders: list[int]


def video_crops(release: Release, name: str) -> VideoCrops:
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
    return VideoCrops(dict(sorted(frames.items())), unexpected, sorted(repeated))


def crop_frames(release: Release, name: str) -> dict[int, Path]:
    """Frame number -> face jpg of annotation ``name``, from every crop folder of the release."""
    return video_crops(release, name).frames


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

