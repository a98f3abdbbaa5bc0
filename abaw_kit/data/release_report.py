"""Count what an Aff-Wild2 EXPR release holds, per split, and draw it as rich tables.

Structural oddities that do not make the data wrong (see ``ISSUE_KINDS``) are counted as issues
here; malformed files already stopped ``find_release`` or the parsers of ``release_files.py``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import RenderableType

from abaw_kit.classes import CLASS_NAMES, IGNORE_LABEL, NUM_CLASSES
from abaw_kit.data.release import SPLIT_FOLDERS, AnnotatedVideo, Release, video_crops
from abaw_kit.data.release_files import read_annotation
from abaw_kit.tables import count, right, rows_table, stack
from abaw_kit.workspace import SPLITS

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
    crops = video_crops(release, item.name)
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


def summary_table(summary: dict[str, Any]) -> RenderableType:
    """Counts per split, labelled frames per class, and the issues, stacked in one renderable."""
    counts, classes, problems = [], [], []
    for split, stats in summary["splits"].items():
        counts.append((split, *(count(stats[key]) for key in (
            "videos", "frames", "labelled_frames", "frames_with_face",
            "labelled_frames_with_face"))))
        if stats["labelled_frames"]:
            classes.append((split, *(count(n) for n in stats["class_counts"])))
        for issue in stats["issues"]:
            problems.append((split, issue["kind"], count(issue["count"]),
                             "; ".join(issue["examples"])))
    return stack(
        rows_table(f"Aff-Wild2 EXPR release at {summary['root']}",
                   ["split", *right("videos", "frames", "labelled", "with face",
                                    "labelled with face")], counts, title_justify="left"),
        rows_table("Labelled frames per class", ["split", *right(*CLASS_NAMES)], classes,
                   title_justify="left") if classes else None,
        rows_table("Issues", ["split", "kind", *right("count"), "examples"],
                   problems or [("-", "none", "0", "")], title_justify="left"))
