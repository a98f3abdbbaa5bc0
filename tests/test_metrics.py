"""The challenge metric must equal scikit-learn's macro F1 over all 8 classes, ignoring -1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.errors import AbawError
from abaw_kit.metrics import frame_report, macro_f1, paired_bootstrap


def _reference(labels: np.ndarray, preds: np.ndarray) -> float:
    keep = labels != -1
    return f1_score(labels[keep], preds[keep], average="macro", labels=range(8), zero_division=0)


def test_macro_f1_equals_sklearn_with_ignored_frames() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 8, size=2000)
    preds = rng.integers(0, 8, size=2000)
    preds[labels == -1] = 99  # never looked at: the frame is not annotated
    assert macro_f1(labels, preds) == pytest.approx(_reference(labels, np.where(
        labels == -1, 0, preds)), abs=1e-12)


def test_class_absent_from_predictions_counts_as_zero() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3, 3])
    preds = np.array([0, 1, 2, 0, 4, 5, 6, 7, 0, 0])  # Fear never predicted
    report = frame_report(labels, preds)
    assert report["per_class_f1"]["Fear"] == 0.0
    assert macro_f1(labels, preds) == pytest.approx(_reference(labels, preds))
    assert macro_f1(labels, preds) < 1.0


def test_class_absent_from_labels_still_divides_by_eight() -> None:
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 0, 1, 1])
    # Perfect on the two present classes; the six absent ones count as 0 (the fixed label set).
    assert macro_f1(labels, preds) == pytest.approx(2 / 8)
    assert macro_f1(labels, preds) == pytest.approx(_reference(labels, preds))


def test_all_frames_unlabelled_is_a_clear_error() -> None:
    with pytest.raises(AbawError, match="no labelled frames"):
        macro_f1(np.full(5, -1), np.zeros(5, dtype=int))


def test_length_mismatch_and_bad_values_are_errors() -> None:
    with pytest.raises(AbawError, match="differ in length"):
        macro_f1(np.zeros(3, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(AbawError, match="label 9"):
        macro_f1(np.array([0, 9]), np.array([0, 0]))
    with pytest.raises(AbawError, match="prediction 8"):
        macro_f1(np.array([0, 1]), np.array([0, 8]))


def test_frame_report_contents() -> None:
    labels = np.array([0, 0, 1, 1, -1, 4, 4, 4])
    preds = np.array([0, 1, 1, 1, 7, 4, 4, 0])
    videos = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    report = frame_report(labels, preds, videos)
    assert report["n_frames"] == 7
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert list(report["per_class_f1"]) == list(CLASS_NAMES)
    assert report["macro_f1"] == pytest.approx(_reference(labels, preds))
    assert report["support"]["Neutral"] == 2 and report["support"]["Happiness"] == 3
    cm = np.array(report["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == 7
    assert cm[0, 1] == 1 and cm[4, 0] == 1 and cm[4, 4] == 2
    # Per video: macro over the classes that occur in that video (a or b), not all 8.
    assert report["per_video_f1"]["a"] == pytest.approx(
        f1_score([0, 0, 1, 1], [0, 1, 1, 1], average="macro"))
    assert set(report["per_video_f1"]) == {"a", "b"}


def test_paired_bootstrap_spread_comes_from_the_people_drawn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 2000)
    groups = np.repeat(np.arange(20), 100)
    a = np.where(rng.random(2000) < 0.5, labels, rng.integers(0, 8, 2000))
    same = paired_bootstrap(labels, a, a, groups, resamples=200)
    assert same["difference"] == same["std"] == same["low"] == same["high"] == 0.0
    b = a.copy()
    b[groups == 3] = labels[groups == 3]  # b is better on one person only
    result = paired_bootstrap(labels, a, b, groups, resamples=400)
    assert result["difference"] == pytest.approx(macro_f1(labels, b) - macro_f1(labels, a))
    assert result["groups"] == 20 and result["std"] > 0
    assert result["low"] == 0.0 < result["difference"] < result["high"]  # draws without person 3
    assert paired_bootstrap(labels, a, b, groups, resamples=400) == result  # seeded
    ignored = labels.copy()
    ignored[groups == 3] = -1  # unlabelled frames (and a person with none) are not drawn
    assert paired_bootstrap(ignored, a, b, groups, resamples=50)["groups"] == 19
    with pytest.raises(AbawError, match="one video name per frame"):
        paired_bootstrap(labels, a, b, groups[:-1])
