"""Which face is the annotated subject: tracks over the detected frames, then a choice.

Choice rules (all counts are over the frames the detector ran on):

* ``single``: the track with the largest sum of box area over its frames (big and present most
  of the time beats a brief large false face or a small background face).
* ``left`` / ``right``: among the *long* tracks (present on at least ``long_fraction`` of the
  longest track's frames, and at least ``min_track_frames``), the largest (sum of box area) and
  the largest one seen at the same time as it (else the largest on the other half of the frame);
  of these two, the one with the smaller mean box centre x is ``left``. A lone face goes to the
  side of the frame it is on and the other subject has no face.
* Linking: a detection links to a track by the better affinity to the track's last box or to
  that box moved on at the track's last velocity, so two faces that cross (one hiding the other
  for a frame or two) keep their own tracks.
* Fragments: a face lost for longer than ``max_gap`` frames, or reacquired elsewhere, starts a
  new track. Every other long track that never co-occurs with a subject's tracks is
  added to that subject (for ``left``/``right``: to the side whose chosen track is nearer in
  mean x).

With ``detect_every`` > 1, frames between two detected frames on which the same track is present
get linearly interpolated boxes and landmarks; where a track is missing on a detected frame, the
frames around it stay without a face.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy.optimize import linear_sum_assignment

from abaw_kit.faces.base import Detections, box_iou

SUBJECTS = ("single", "left", "right")


@dataclass
class Track:
    """One face followed over the detected frames (sorted by frame)."""

    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)

    def add(self, frame: int, box: np.ndarray, landmarks: np.ndarray) -> None:
        self.frames.append(frame)
        self.boxes.append(np.asarray(box, dtype=np.float32))
        self.landmarks.append(np.asarray(landmarks, dtype=np.float32))

    def predicted_box(self, frame: int, max_extrapolation: int = 10) -> np.ndarray:
        """Where the face should be on ``frame``: the last box, its centre moved on at the
        velocity of the last two detections (for at most ``max_extrapolation`` frames), so two
        faces that cross keep their tracks instead of swapping at the crossing. The size is not
        extrapolated: the cascade's box size jumps from frame to frame."""
        last = self.boxes[-1]
        if len(self.frames) < 2 or self.frames[-1] == self.frames[-2]:
            return last
        centre_shift = ((last[:2] + last[2:]) - (self.boxes[-2][:2] + self.boxes[-2][2:])) / 2
        steps = min(frame - self.frames[-1], max_extrapolation)
        velocity = centre_shift / (self.frames[-1] - self.frames[-2])
        return last + np.tile(velocity * steps, 2)

    @property
    def presence(self) -> int:
        return len(self.frames)

    @property
    def area_sum(self) -> float:
        boxes = np.stack(self.boxes)
        return float(np.sum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))

    @property
    def mean_centre_x(self) -> float:
        boxes = np.stack(self.boxes)
        return float(np.mean((boxes[:, 0] + boxes[:, 2]) / 2))


@dataclass
class SubjectTrack:
    """Per-frame face of one subject: ``present`` [T], ``boxes`` [T,4], ``landmarks`` [T,5,2]."""

    present: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def absent(cls, num_frames: int) -> SubjectTrack:
        return cls(np.zeros(num_frames, dtype=bool), np.zeros((num_frames, 4), np.float32),
                   np.zeros((num_frames, 5, 2), np.float32))


def link_affinity(a: np.ndarray, b: np.ndarray, max_size_ratio: float = 2.0) -> np.ndarray:
    """How likely box a[i] and box b[j] are one face, in [0, 1]: [len(a), len(b)].

    The larger of the IoU and ``1 - centre distance / mean box side``: IoU alone drops a face
    that moved a third of its width between two detected frames (common with detect_every > 1).
    Boxes whose sides differ by more than ``max_size_ratio`` never link (2: the LBP cascade's
    box for one face can change by 1.9x from one frame to the next).
    """
    side_a = np.sqrt(np.prod(a[:, 2:] - a[:, :2], axis=-1))[:, None]
    side_b = np.sqrt(np.prod(b[:, 2:] - b[:, :2], axis=-1))[None, :]
    centre_a = (a[:, None, :2] + a[:, None, 2:]) / 2
    centre_b = (b[None, :, :2] + b[None, :, 2:]) / 2
    distance = np.linalg.norm(centre_a - centre_b, axis=-1) / np.maximum((side_a + side_b) / 2,
                                                                         1e-9)
    affinity = np.maximum(box_iou(a, b), 1 - distance)
    ratio = np.maximum(side_a, side_b) / np.maximum(np.minimum(side_a, side_b), 1e-9)
    return np.where(ratio <= max_size_ratio, np.clip(affinity, 0, 1), 0.0)


def link_tracks(detections: Sequence[tuple[int, Detections]], min_affinity: float = 0.3,
                max_gap: int = 50) -> list[Track]:
    """Link per-frame detections (in frame order) into tracks by best-affinity assignment.

    Tracks seen on the previous detected frame are matched first; only the detections they leave
    may revive a track lost for at most ``max_gap`` frames (so a stale track, or one started by a
    false face, cannot take over a face that is being followed).
    """
    tracks: list[Track] = []
    previous: int | None = None
    for frame, found in detections:
        unmatched = list(range(len(found)))
        lost = [i for i, t in enumerate(tracks) if frame - t.frames[-1] <= max_gap]
        active = [i for i in lost if tracks[i].frames[-1] == previous]
        lost = [i for i in lost if i not in active]
        for candidates in (active, lost):
            unmatched = _assign(tracks, candidates, frame, found, unmatched, min_affinity)
        for col in unmatched:
            track = Track()
            track.add(frame, found.boxes[col], found.landmarks[col])
            tracks.append(track)
        previous = frame
    return tracks


def _assign(tracks: list[Track], candidates: list[int], frame: int, found: Detections,
            unmatched: list[int], min_affinity: float) -> list[int]:
    """Extend ``candidates`` tracks with the best-matching unmatched detections; return the rest."""
    if not candidates or not unmatched:
        return unmatched
    # the better of "where it was" and "where its motion takes it": jittery boxes (the cascade)
    # still link to the last box; faces that cross link to where each was heading
    affinity = np.maximum(
        link_affinity(np.stack([tracks[i].boxes[-1] for i in candidates]), found.boxes[unmatched]),
        link_affinity(np.stack([tracks[i].predicted_box(frame) for i in candidates]),
                      found.boxes[unmatched]))
    rows, cols = linear_sum_assignment(affinity, maximize=True)
    taken = set()
    for row, col in zip(rows, cols, strict=True):
        if affinity[row, col] >= min_affinity:
            detection = unmatched[col]
            tracks[candidates[row]].add(frame, found.boxes[detection], found.landmarks[detection])
            taken.add(detection)
    return [d for d in unmatched if d not in taken]


def _long_tracks(tracks: Sequence[Track], long_fraction: float,
                 min_track_frames: int) -> list[Track]:
    if not tracks:
        return []
    longest = max(t.presence for t in tracks)
    needed = max(min_track_frames, long_fraction * longest)
    return [t for t in tracks if t.presence >= needed]


def _overlaps(track: Track, chosen: Sequence[Track]) -> bool:
    frames = set(track.frames)
    return any(frames.intersection(other.frames) for other in chosen)


def choose_subject_tracks(tracks: Sequence[Track], subjects: Sequence[str], frame_width: int,
                          long_fraction: float = 0.2,
                          min_track_frames: int = 2) -> dict[str, list[Track]]:
    """Assign tracks to each subject by the rules in the module docstring."""
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}; expected some of {SUBJECTS}")
    chosen: dict[str, list[Track]] = {s: [] for s in subjects}
    if "single" in chosen and tracks:
        best = max(tracks, key=lambda t: t.area_sum)
        chosen["single"] = [best]
        for track in sorted(_long_tracks(tracks, long_fraction, min_track_frames),
                            key=lambda t: -t.area_sum):
            if track is not best and not _overlaps(track, chosen["single"]):
                chosen["single"].append(track)
    sides = [s for s in ("left", "right") if s in chosen]
    if sides:
        _choose_sides(_long_tracks(tracks, long_fraction, min_track_frames), chosen, frame_width)
    return {s: sorted(ts, key=lambda t: t.frames[0]) for s, ts in chosen.items()}


def _choose_sides(long_tracks: list[Track], chosen: dict[str, list[Track]],
                  frame_width: int) -> None:
    if not long_tracks:
        return
    ranked = sorted(long_tracks, key=lambda t: -t.area_sum)
    first = ranked[0]
    on_left = first.mean_centre_x < frame_width / 2
    partner = next((t for t in ranked[1:] if _overlaps(t, [first])), None)
    if partner is None:  # nobody beside it at the same time: the best face on the other half
        partner = next((t for t in ranked[1:] if (t.mean_centre_x < frame_width / 2) != on_left),
                       None)
    if partner is None:
        anchors = {"left" if on_left else "right": first}
    else:
        pair = sorted((first, partner), key=lambda t: t.mean_centre_x)
        anchors = {"left": pair[0], "right": pair[1]}
    selected: dict[str, list[Track]] = {side: [track] for side, track in anchors.items()}
    for track in ranked:
        if any(track is anchor for anchor in anchors.values()):
            continue
        side = min(anchors, key=lambda s: abs(anchors[s].mean_centre_x - track.mean_centre_x))
        if not _overlaps(track, selected[side]):
            selected[side].append(track)
    for side, tracks in selected.items():
        if side in chosen:
            chosen[side] = tracks


def smooth_track(track: Track, window: int) -> Track:
    """Temporal median over the track's detections within +-window//2 frames.

    Detectors jitter (the LBP cascade's box size can change by 1.9x between frames); a short
    median removes that without the lag of a mean. The median is taken separately of the box
    centre, the box size and the landmarks relative to centre and size, so a size outlier does
    not drag the corners. ``window`` <= 1 returns the track unchanged.
    """
    if window <= 1 or track.presence < 2:
        return track
    frames = np.asarray(track.frames)
    boxes, marks = np.stack(track.boxes), np.stack(track.landmarks)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    shapes = (marks - centres[:, None]) / np.maximum(sizes[:, None], 1e-6)
    smoothed = Track()
    for frame in frames:
        near = np.abs(frames - frame) <= window // 2
        centre, size = np.median(centres[near], axis=0), np.median(sizes[near], axis=0)
        shape = np.median(shapes[near], axis=0)
        smoothed.add(int(frame), np.concatenate([centre - size / 2, centre + size / 2]),
                     centre + shape * size)
    return smoothed


def subject_track(tracks: Sequence[Track], sampled_frames: Sequence[int],
                  num_frames: int) -> SubjectTrack:
    """Per-frame boxes/landmarks of one subject, interpolated between adjacent detected frames."""
    result = SubjectTrack.absent(num_frames)
    sampled = sorted(set(sampled_frames))
    next_sample = dict(pairwise(sampled))
    for track in tracks:
        faces = zip(track.boxes, track.landmarks, strict=True)
        by_frame = dict(zip(track.frames, faces, strict=True))
        for frame, (box, marks) in by_frame.items():
            if frame >= num_frames:
                continue
            result.present[frame] = True
            result.boxes[frame] = box
            result.landmarks[frame] = marks
            following = next_sample.get(frame)
            if following is None or following not in by_frame:
                continue
            next_box, next_marks = by_frame[following]
            for between in range(frame + 1, min(following, num_frames)):
                weight = (between - frame) / (following - frame)
                result.present[between] = True
                result.boxes[between] = (1 - weight) * box + weight * next_box
                result.landmarks[between] = (1 - weight) * marks + weight * next_marks
    return result


def track_subjects(detections: Sequence[tuple[int, Detections]], subjects: Sequence[str],
                   num_frames: int, frame_width: int, min_affinity: float = 0.3,
                   max_gap: int = 50, smooth_frames: int = 1) -> dict[str, SubjectTrack]:
    """Detections on some frames (in order) -> each subject's face on every frame."""
    tracks = link_tracks(detections, min_affinity=min_affinity, max_gap=max_gap)
    chosen = choose_subject_tracks(tracks, subjects, frame_width)
    sampled = [frame for frame, _ in detections]
    return {s: subject_track([smooth_track(t, smooth_frames) for t in chosen[s]], sampled,
                             num_frames) for s in subjects}
