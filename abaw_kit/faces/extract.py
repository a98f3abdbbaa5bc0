"""One video file -> each annotated subject's aligned 112x112 faces, frame by frame.

Two decoding passes, on purpose: pass 1 decodes every frame and runs the detector on every
``detect_every``-th one (and on the last frame), pass 2 decodes again and aligns only the chosen
subjects' faces. Which track is the subject is known only once the whole video has been seen,
and keeping the decoded frames (or crops of every track) until then would need gigabytes per
long video; decoding is tens of times faster than detection, so the second pass costs little
(see benchmarks/bench_prepare_video.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abaw_kit.data.video import VideoFrames, iter_video_frames
from abaw_kit.faces.align import align_face
from abaw_kit.faces.base import Detections, FaceDetector
from abaw_kit.faces.tracking import SUBJECTS, SubjectTrack, track_subjects

FACE_SIZE = 112


@dataclass
class SubjectFaces:
    """``faces`` uint8 [n,112,112,3] for the frames where ``has_face`` [T] is true, in order."""

    faces: np.ndarray
    has_face: np.ndarray


@dataclass
class ExtractResult:
    """Faces per subject plus what the caller reports: decoded count, decode damage, no face."""

    subjects: dict[str, SubjectFaces]
    num_frames: int  # T: the annotation length when given, else the decoded count
    decoded_frames: int
    expected_frames: int | None = None  # what the container claims
    decode_error: str | None = None  # why decoding stopped before the container's end
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def no_face(self) -> bool:
        return not any(s.has_face.any() for s in self.subjects.values())

    def __getitem__(self, subject: str) -> SubjectFaces:
        return self.subjects[subject]


def _detect_pass(video_path: Path, detector: FaceDetector, num_frames: int | None,
                 detect_every: int, batch_size: int,
                 progress: Callable[[int], None] | None,
                 ) -> tuple[list[tuple[int, Detections]], VideoFrames, int]:
    """Pass 1: detections on the sampled frames; also the decoded count and frame width."""
    frames = iter_video_frames(video_path, chunk=max(32, batch_size), max_frames=num_frames)
    detections: list[tuple[int, Detections]] = []
    pending_index: list[int] = []
    pending: list[np.ndarray] = []
    last: tuple[int, np.ndarray] | None = None
    width = 0

    def flush() -> None:
        if pending:
            detections.extend(zip(pending_index, detector.detect(np.stack(pending)), strict=True))
            pending_index.clear()
            pending.clear()

    for start, chunk in frames:
        width = chunk.shape[2]
        for offset in range(len(chunk)):
            index = start + offset
            if index % detect_every == 0:
                pending_index.append(index)
                pending.append(chunk[offset])
                if len(pending) >= batch_size:
                    flush()
        last = (start + len(chunk) - 1, chunk[-1])
        if progress is not None:
            progress(len(chunk))
    if last is not None and last[0] % detect_every != 0:
        pending_index.append(last[0])
        pending.append(last[1])
    flush()
    return detections, frames, width


def _align_pass(video_path: Path, tracks: dict[str, SubjectTrack],
                decoded: int) -> dict[str, list[np.ndarray]]:
    """Pass 2: decode again and warp each subject's face on the frames where it is present."""
    crops: dict[str, list[np.ndarray]] = {s: [] for s in tracks}
    for start, chunk in iter_video_frames(video_path, max_frames=decoded):
        for offset, image in enumerate(chunk):
            index = start + offset
            for subject, track in tracks.items():
                if index < len(track.present) and track.present[index]:
                    crops[subject].append(align_face(image, track.landmarks[index], FACE_SIZE))
    return crops


def extract_video_faces(video_path: Path, subjects: Sequence[str], detector: FaceDetector, *,
                        num_frames: int | None = None, detect_every: int = 1,
                        batch_size: int = 16, smooth_frames: int = 1,
                        progress: Callable[[int], None] | None = None) -> ExtractResult:
    """Detect, track and align the faces of ``subjects`` ("single", "left", "right") in a video.

    ``num_frames`` (the annotation length) fixes T: frames the video lacks have no face and
    decoded frames beyond it are ignored. ``progress`` gets the number of frames each chunk of
    the detection pass covered. ``smooth_frames`` > 1 median-filters each track's boxes and
    landmarks over that many frames: it steadies the cascade's jittery boxes on slow footage
    (see tracking.smooth_track) but lags fast motion, hence off by default.
    A video without any face is a result with ``no_face`` true.
    """
    video_path = Path(video_path)
    if detect_every < 1 or batch_size < 1:
        raise ValueError("detect_every and batch_size must be >= 1")
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown or len(set(subjects)) != len(subjects):
        raise ValueError(f"subjects must be distinct values of {SUBJECTS}, got {list(subjects)}")
    started = time.perf_counter()
    detections, frames, width = _detect_pass(video_path, detector, num_frames, detect_every,
                                             batch_size, progress)
    decoded = frames.decoded
    total = num_frames if num_frames is not None else decoded
    detected = time.perf_counter()
    tracks = track_subjects(detections, subjects, num_frames=total, frame_width=width,
                            max_gap=max(50, 2 * detect_every), smooth_frames=smooth_frames)
    if any(track.present.any() for track in tracks.values()):
        crops = _align_pass(video_path, tracks, decoded)
    else:
        crops = {s: [] for s in subjects}
    result: dict[str, SubjectFaces] = {}
    for subject in subjects:
        has_face = tracks[subject].present.copy()
        faces = (np.stack(crops[subject]) if crops[subject]
                 else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8))
        if len(faces) != int(has_face.sum()):  # pass 2 decoded fewer frames than pass 1
            has_face[np.flatnonzero(has_face)[len(faces):]] = False
        result[subject] = SubjectFaces(faces=faces, has_face=has_face)
    finished = time.perf_counter()
    return ExtractResult(subjects=result, num_frames=total, decoded_frames=decoded,
                         expected_frames=frames.expected, decode_error=frames.error,
                         timings={"detect_pass": detected - started,
                                  "align_pass": finished - detected})
