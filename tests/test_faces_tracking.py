"""Tracking: linking, which track is the subject, interpolation between detected frames."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_kit.faces.detector import Detections
from abaw_kit.faces.tracking import (
    choose_subject_tracks,
    link_affinity,
    link_tracks,
    smooth_track,
    subject_track,
    track_subjects,
)


def face(x: float, y: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    box = np.array([x, y, x + size, y + size], np.float32)
    marks = np.array([[x + 0.3 * size, y + 0.4 * size]] * 5, np.float32) + np.arange(5)[:, None]
    return box, marks


def frame_of(*faces: tuple[np.ndarray, np.ndarray]) -> Detections:
    if not faces:
        return Detections.empty()
    return Detections(np.stack([f[0] for f in faces]), np.ones(len(faces)),
                      np.stack([f[1] for f in faces]))


def test_two_faces_make_two_tracks_and_a_short_gap_is_bridged() -> None:
    sequence = []
    for t in range(10):
        faces = [face(10 + t, 10, 50)]
        if t != 4:  # the right face is missed once
            faces.append(face(200 - t, 20, 40))
        sequence.append((t, frame_of(*faces)))
    tracks = link_tracks(sequence, max_gap=3)
    assert sorted(t.presence for t in tracks) == [9, 10]
    long_gap = link_tracks([(0, frame_of(face(10, 10, 50))), (20, frame_of(face(10, 10, 50)))],
                           max_gap=5)
    assert len(long_gap) == 2


def test_linking_follows_a_fast_face_but_not_a_different_size() -> None:
    start = face(0, 0, 40)
    moved = face(22, 5, 40)  # IoU 0.25, but the centre moved only 0.56 of a face width
    affinity = link_affinity(start[0][None], moved[0][None])[0, 0]
    assert affinity == pytest.approx(1 - np.hypot(22, 5) / 40)
    assert len(link_tracks([(0, frame_of(start)), (5, frame_of(moved))])) == 1
    grown = face(0, 0, 90)  # same place, 2.25x the size: another face (or a false one)
    assert link_affinity(start[0][None], grown[0][None])[0, 0] == 0
    assert len(link_tracks([(0, frame_of(start)), (5, frame_of(grown))])) == 2
    far = face(45, 0, 40)  # the neighbour's face
    assert len(link_tracks([(0, frame_of(start)), (1, frame_of(far))])) == 2


def test_a_false_face_cannot_take_over_the_followed_face() -> None:
    # the LBP cascade's box for one face jumps in size; a false face appeared beside it once
    sequence = []
    for t in range(12):
        faces = [face(190 + 3 * t, 112, 126 if t == 8 else 66)]
        if t == 5:
            faces.append(face(260, 138, 118))
        sequence.append((t, frame_of(*faces)))
    tracks = sorted(link_tracks(sequence), key=lambda t: -t.presence)
    assert [t.presence for t in tracks] == [12, 1]


def test_single_prefers_large_and_persistent_over_brief_or_small() -> None:
    sequence = []
    for t in range(30):
        faces = [face(100, 50, 60), face(300, 40, 25)]  # subject, small background face
        if t in (7, 8):
            faces.append(face(0, 150, 120))  # a brief large false face
        sequence.append((t, frame_of(*faces)))
    chosen = choose_subject_tracks(link_tracks(sequence), ["single"], frame_width=400)
    assert len(chosen["single"]) == 1
    assert chosen["single"][0].boxes[0][0] == 100 and chosen["single"][0].presence == 30


def test_left_right_are_the_two_main_faces_ordered_by_x() -> None:
    # two subjects, a small background face left of them all, a brief face in the middle
    sequence = [(t, frame_of(face(400, 30, 60), face(60, 30, 50), face(5, 200, 15),
                             *([face(250, 0, 30)] if t == 3 else []))) for t in range(12)]
    chosen = choose_subject_tracks(link_tracks(sequence), ["left", "right"], frame_width=640)
    assert [t.mean_centre_x for t in chosen["left"]] == [pytest.approx(85)]
    assert [t.mean_centre_x for t in chosen["right"]] == [pytest.approx(430)]


def test_lone_face_goes_to_its_side() -> None:
    lone = [(t, frame_of(face(500, 30, 60))) for t in range(5)]
    chosen = choose_subject_tracks(link_tracks(lone), ["left", "right"], frame_width=640)
    assert chosen["left"] == [] and len(chosen["right"]) == 1
    chosen = choose_subject_tracks(link_tracks(lone), ["left"], frame_width=640)
    assert chosen == {"left": []}


def test_sides_in_turn_and_fragments_join_their_side() -> None:
    # left person alone for frames 0-9, then right person alone 20-29, then left again 40-49
    sequence = ([(t, frame_of(face(50, 50, 60))) for t in range(10)]
                + [(t, frame_of(face(450, 50, 60))) for t in range(20, 30)]
                + [(t, frame_of(face(80, 70, 60))) for t in range(40, 50)])
    chosen = choose_subject_tracks(link_tracks(sequence, max_gap=5), ["left", "right"],
                                   frame_width=640)
    assert [t.frames[0] for t in chosen["left"]] == [0, 40]
    assert [t.frames[0] for t in chosen["right"]] == [20]


def test_fragments_of_one_subject_are_joined() -> None:
    first = [(t, frame_of(face(50, 50, 60))) for t in range(10)]
    later = [(t, frame_of(face(300, 60, 60))) for t in range(40, 50)]  # reacquired elsewhere
    tracks = link_tracks(first + later, max_gap=5)
    assert len(tracks) == 2
    chosen = choose_subject_tracks(tracks, ["single"], frame_width=640)
    assert [t.frames[0] for t in chosen["single"]] == [0, 40]


def test_interpolation_between_detected_frames_and_gaps_stay_empty() -> None:
    # detected every 5th frame; present at 0, 5, 10, missed at 15, back at 20
    sequence = [(0, frame_of(face(0, 0, 40))), (5, frame_of(face(10, 5, 50))),
                (10, frame_of(face(20, 10, 60))), (15, frame_of()),
                (20, frame_of(face(30, 15, 60)))]
    tracks = track_subjects(sequence, ["single"], num_frames=23, frame_width=200)["single"]
    assert tracks.present.tolist() == [True] * 11 + [False] * 9 + [True] + [False] * 2
    np.testing.assert_allclose(tracks.boxes[2], [4, 2, 48, 46])  # 2/5 of the way 0 -> 5
    np.testing.assert_allclose(tracks.boxes[7], [14, 7, 68, 61])  # 2/5 of 5 -> 10
    np.testing.assert_allclose(tracks.landmarks[3], 0.4 * face(0, 0, 40)[1]
                               + 0.6 * face(10, 5, 50)[1], rtol=1e-6)


def test_smoothing_removes_a_one_frame_outlier_only_within_the_window() -> None:
    sizes = [60, 60, 120, 60, 60, 60]
    track = link_tracks([(t, frame_of(face(10 * t, 0, s))) for t, s in enumerate(sizes)])[0]
    assert smooth_track(track, 1) is track
    smoothed = smooth_track(track, 3)
    widths = [box[2] - box[0] for box in smoothed.boxes]
    assert widths == [60] * 6
    # box centres x are 30, 40, 80, 60, 70, 80: medians 35, 40, 60, 70, 70, 75
    np.testing.assert_allclose([box[0] for box in smoothed.boxes], [5, 10, 30, 40, 40, 45])
    # landmarks keep their place relative to the (smoothed) box: centre (60, 30), size 60
    np.testing.assert_allclose(smoothed.landmarks[2][0], [60 - 0.2 * 60, 30 - 0.1 * 60],
                               atol=1e-4)


def test_subject_track_respects_num_frames() -> None:
    track = link_tracks([(t, frame_of(face(0, 0, 40))) for t in range(0, 12, 3)])[0]
    result = subject_track([track], sampled_frames=range(0, 12, 3), num_frames=8)
    assert result.present.shape == (8,) and result.present.all()


def test_unknown_subject_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown subject"):
        choose_subject_tracks([], ["middle"], frame_width=10)
