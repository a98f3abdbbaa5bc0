"""`abaw prepare`: the release (organiser crops or videos) -> one face store per split.

Crops path: index every annotated frame, decode its jpg (a thread pool: PIL releases the GIL while
decoding), pack it into the store. Video path: decode, detect, track, align (abaw_kit.faces).
Either way each video is written atomically, so a rerun after a crash skips finished videos, and
nothing is ever written into the data root. The workspace's ``source.json`` (``SourceRecord``)
records the release; what it implies (the demo's unlabelled faces) `prepare` does too, so the
CLI and the Python API prepare the same workspace.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from abaw_kit.classes import IGNORE_LABEL
from abaw_kit.data.release import (
    AnnotatedVideo,
    Release,
    crop_frames,
    find_release,
    read_annotation,
)
from abaw_kit.data.store import FACE_SIZE, FaceStoreWriter, shard_names
from abaw_kit.errors import AbawError
from abaw_kit.faces.detector import DEFAULT_DETECTOR
from abaw_kit.progress import progress_bar
from abaw_kit.workspace import SPLITS, SourceRecord, Workspace, check_split

SOURCES = ("auto", "crops", "video")


@dataclass
class PrepareOptions:
    """What `abaw prepare` was asked to do (the CLI fills it from flags)."""

    data_root: Path | None = None
    source: str = "auto"
    splits: tuple[str, ...] = SPLITS
    detector: str = DEFAULT_DETECTOR
    detector_weights: Path | None = None
    detect_every: int = 1
    detect_size: int | None = None  # long side frames are resized to for detection
    device: str = "cpu"
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))


@dataclass
class SplitReport:
    """Counts of one split's preparation, for the summary table and --json."""

    videos: int = 0
    videos_skipped_done: int = 0
    frames: int = 0
    frames_with_face: int = 0
    labelled_frames_with_face: int = 0
    skips: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skips.setdefault(reason, []).append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            "videos": self.videos, "videos_already_done": self.videos_skipped_done,
            "frames": self.frames, "frames_with_face": self.frames_with_face,
            "labelled_frames_with_face": self.labelled_frames_with_face,
            "skipped": {k: {"count": len(v), "examples": v[:3]} for k, v in self.skips.items()},
        }


def resolve_data_root(work: Workspace, data_root: Path | None,
                      progress: bool = False) -> tuple[Path, bool]:
    """The release to prepare: ``--data-root``, else ``$ABAW_DATA``, else the built-in demo.

    The flag says whether it is a demo release (also one given by path); the workspace's
    ``SourceRecord`` keeps it and says what it implies.
    """
    from abaw_kit.demo import is_demo
    from abaw_kit.demo.generate import generate_demo

    chosen = data_root or (Path(os.environ["ABAW_DATA"]) if os.environ.get("ABAW_DATA") else None)
    if chosen is not None:
        chosen = Path(chosen).expanduser().resolve()
        if not chosen.is_dir():
            raise AbawError(f"data root {chosen} does not exist or is not a folder")
        return chosen, is_demo(chosen)

    return generate_demo(work.demo_data, progress=progress), True


def decode_crop(path: Path) -> np.ndarray:
    """One organiser crop as 112x112x3 uint8; raises ValueError with the reason if unusable."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (FACE_SIZE, FACE_SIZE):
                img = img.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"corrupt jpg ({exc})") from exc


def frame_plan(release: Release, video: AnnotatedVideo,
               example: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(frame numbers, labels) of a video: its annotation lines, or for test the example file."""
    if video.annotation is not None:
        labels = read_annotation(video.annotation)
        return np.arange(1, len(labels) + 1), labels
    if example is not None:
        frames = example.loc[example["video"] == video.name, "frame"].to_numpy(np.int64)
        if len(frames):
            return frames, np.full(len(frames), IGNORE_LABEL, dtype=np.int64)
    crops = crop_frames(release, video.name)
    last = max(crops) if crops else 0
    return np.arange(1, last + 1), np.full(last, IGNORE_LABEL, dtype=np.int64)


def prepare_video_from_crops(release: Release, video: AnnotatedVideo, frames: np.ndarray,
                             pool: ThreadPoolExecutor,
                             report: SplitReport) -> tuple[np.ndarray, np.ndarray]:
    """(has_face, faces) of one video from the organiser crops; bad jpgs become counted skips."""
    crops = crop_frames(release, video.name)
    if not crops:
        report.skip("no crop folder (every frame counted without a face)", video.name)
    wanted = [int(f) for f in frames if int(f) in crops]
    results = list(pool.map(lambda f: _try_decode(crops[f]), wanted))
    decoded: dict[int, np.ndarray] = {}
    for frame, (image, error) in zip(wanted, results, strict=True):
        if error is None:
            decoded[frame] = image
        else:
            report.skip("corrupt or unreadable jpg", f"{crops[frame]}: {error}")
    has_face = np.array([int(f) in decoded for f in frames], dtype=bool)
    faces = [decoded[int(f)] for f in frames if int(f) in decoded]
    stacked = np.stack(faces) if faces else np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    return has_face, stacked


def _try_decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_crop(path), None
    except ValueError as exc:
        return None, str(exc)


def choose_source(release: Release, requested: str) -> str:
    if requested not in SOURCES:
        raise AbawError(f"--source must be one of {', '.join(SOURCES)}, got '{requested}'")
    if requested != "auto":
        if requested == "crops" and not release.crop_dirs:
            raise AbawError(f"--source crops: no cropped_aligned/ folder under {release.root}")
        if requested == "video" and not release.video_files:
            raise AbawError(f"--source video: no videos under {release.root}/batch*/")
        return requested
    if release.crop_dirs:
        return "crops"
    if release.video_files:
        return "video"
    raise AbawError(f"{release.root} has neither cropped_aligned/ nor batch*/ videos")


def prepare(work: Workspace, options: PrepareOptions, *, progress: bool = False,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Prepare every requested split, and ingest the unlabelled faces the release comes with
    (the demo's); returns the summary the CLI prints (and --json dumps)."""
    for split in options.splits:  # before the demo is generated or anything is written
        check_split(split)
    work.ensure()
    root, is_demo = resolve_data_root(work, options.data_root, progress=progress)
    if work.root == root or root in work.root.parents:
        log(f"note: the workspace {work.root} lies inside the data root {root}")
    release = find_release(root)
    source = choose_source(release, options.source)
    example = release.example
    record = SourceRecord(data_root=root, is_demo=is_demo, source=source,
                          example_file=release.example_file, test_list=release.test_list)
    record.write(work.source_file)
    extractor = VideoExtractor(release, options) if source == "video" else None
    reports: dict[str, Any] = {}
    for split in options.splits:
        if split not in SPLITS:
            raise AbawError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
        videos = release.videos.get(split, [])
        if not videos:
            log(f"split {split}: no videos in the release, skipped")
            continue
        reports[split] = prepare_split(work, release, split, videos, source, example,
                                       options, extractor, progress).as_dict()
    result = {"data_root": str(root), "is_demo": is_demo, "source": source,
              "workspace": str(work.root), "splits": reports}
    if record.unlabeled_sources:
        result["unlabeled"] = ingest_unlabeled_sources(work, record.unlabeled_sources,
                                                       progress=progress, log=log)
    return result


def prepare_split(work: Workspace, release: Release, split: str, videos: list[AnnotatedVideo],
                  source: str, example: pd.DataFrame | None, options: PrepareOptions,
                  extractor: VideoExtractor | None, progress: bool) -> SplitReport:
    writer = FaceStoreWriter(work.store_dir(split))
    shard_names([v.name for v in videos])  # two videos sharing a shard: stop before writing
    report = SplitReport(videos=len(videos))
    made_with = _made_with(source, options)
    todo = [v for v in videos if not writer.is_done(v.name, made_with)]
    report.videos_skipped_done = len(videos) - len(todo)
    with progress_bar(progress, f"prepare {split} ({source})", len(todo)) as advance, \
            ThreadPoolExecutor(max_workers=options.workers) as pool:
        if source == "crops":
            for video in todo:
                frames, labels = frame_plan(release, video, example)
                has_face, faces = prepare_video_from_crops(release, video, frames, pool, report)
                writer.write_video(video.name, frames, labels, has_face, faces, made_with)
                advance(1)
        else:
            assert extractor is not None
            for group in _group_by_file(todo):
                plans = {v.name: frame_plan(release, v, example) for v in group}
                for video, (has_face, faces) in extractor.extract(group, plans, report).items():
                    frames, labels = plans[video]
                    writer.write_video(video, frames, labels, has_face, faces, made_with)
                advance(len(group))
    index = writer.finalize([v.name for v in videos],
                            {"split": split, "source": source, "data_root": str(release.root)})
    report.frames = len(index)
    report.frames_with_face = int(index["has_face"].sum())
    report.labelled_frames_with_face = int((index["has_face"] & (index["label"] >= 0)).sum())
    return report


def _made_with(source: str, options: PrepareOptions) -> dict[str, Any]:
    """What decides a shard's faces besides the video: a rerun with other settings redoes it."""
    if source != "video":
        return {"source": source}
    weights = str(options.detector_weights) if options.detector_weights else None
    return {"source": source, "detector": options.detector, "detector_weights": weights,
            "detect_every": int(options.detect_every), "detect_size": options.detect_size}


def _group_by_file(videos: Iterable[AnnotatedVideo]) -> list[list[AnnotatedVideo]]:
    """X_left and X_right share one video file: decode it once for both subjects."""
    groups: dict[str, list[AnnotatedVideo]] = {}
    for video in videos:
        groups.setdefault(video.video, []).append(video)
    return list(groups.values())


class VideoExtractor:
    """The video path: one decoder pass per file, faces for each subject of that file."""

    def __init__(self, release: Release, options: PrepareOptions) -> None:
        from abaw_kit.faces import make_detector

        self.release = release
        self.options = options
        self.detector = make_detector(options.detector, weights=options.detector_weights,
                                      device=options.device, max_size=options.detect_size)

    def extract(self, group: list[AnnotatedVideo], plans: dict[str, tuple[np.ndarray, np.ndarray]],
                report: SplitReport) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from abaw_kit.faces.extract import extract_video_faces

        file_stem = group[0].video
        path = self.release.video_files.get(file_stem)
        empty = {v.name: (np.zeros(len(plans[v.name][0]), bool),
                          np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)) for v in group}
        if path is None:
            for v in group:
                report.skip("video file missing (every frame counted without a face)", v.name)
            return empty
        num_frames = max(int(plans[v.name][0].max(initial=0)) for v in group)
        try:
            result = extract_video_faces(path, [v.subject for v in group], self.detector,
                                         num_frames=num_frames,
                                         detect_every=self.options.detect_every)
        except AbawError as exc:  # one unreadable file must not stop a 548-video release
            for v in group:
                report.skip("video cannot be decoded (every frame counted without a face)",
                            f"{v.name}: {exc}")
            return empty
        if result.decoded_frames < num_frames:
            report.skip("video shorter than its annotation (missing frames have no face)",
                        f"{path.name}: {result.decoded_frames} of {num_frames} frames decoded")
        if result.no_face:
            report.skip("no face found in the whole video", str(path))
        out = {}
        for v in group:
            frames = plans[v.name][0]
            subject = result.subjects[v.subject]
            keep = subject.has_face[frames - 1]
            face_index = np.cumsum(subject.has_face) - 1
            out[v.name] = (keep, subject.faces[face_index[frames - 1][keep]])
        return out


def ingest_unlabeled_sources(work: Workspace, sources: Iterable[Path], *,
                             progress: bool = False,
                             log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The unlabelled faces a release comes with (``SourceRecord.unlabeled_sources``: the
    demo's) into the workspace's unlabelled index, once, so `abaw train --ssl dtm` just works."""
    from abaw_kit.unlabeled.index import UnlabeledIndex
    from abaw_kit.unlabeled.ingest import ingest

    index = work.unlabeled_dir / "index.parquet"
    if index.is_file():
        try:
            UnlabeledIndex(work.unlabeled_dir)  # done means readable, not merely present
            return {"note": f"the release's unlabelled faces are already ingested in "
                            f"{work.unlabeled_dir}"}
        except AbawError as exc:
            log(f"the unlabelled index is unusable ({exc}); ingesting it again")
            index.unlink(missing_ok=True)  # else the merge would keep the damaged file
    sources = list(sources)
    log(f"also ingesting the release's unlabelled faces ({', '.join(map(str, sources))}) "
        f"into {work.unlabeled_dir}")
    return ingest(sources, work.unlabeled_dir, progress=progress)
