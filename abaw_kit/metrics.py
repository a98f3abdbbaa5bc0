"""The challenge metric (macro F1 over the 8 EXPR classes) and the companions a report needs.

Frames labelled -1 are not annotated and never scored. The metric is scikit-learn's macro F1 with
the label set fixed to all 8 classes, so a class missing from a split still counts (as F1 = 0)
exactly as the organisers' formula does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from abaw_kit.classes import CLASS_NAMES, IGNORE_LABEL, NUM_CLASSES
from abaw_kit.errors import AbawError

CLASS_IDS = list(range(NUM_CLASSES))


def _scored(labels: Any, preds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, preds, mask) restricted to annotated frames, with the inputs validated."""
    y = np.asarray(labels).astype(np.int64, copy=False).ravel()
    p = np.asarray(preds).astype(np.int64, copy=False).ravel()
    if y.shape != p.shape:
        raise AbawError(f"labels ({len(y)} frames) and predictions ({len(p)} frames) differ "
                        "in length; expected one prediction per frame")
    bad_label = (y < IGNORE_LABEL) | (y >= NUM_CLASSES)
    if bad_label.any():
        first = int(np.flatnonzero(bad_label)[0])
        raise AbawError(f"frame {first}: label {int(y[first])} is not in -1..{NUM_CLASSES - 1}")
    mask = y != IGNORE_LABEL
    bad_pred = mask & ((p < 0) | (p >= NUM_CLASSES))
    if bad_pred.any():
        first = int(np.flatnonzero(bad_pred)[0])
        raise AbawError(f"frame {first}: prediction {int(p[first])} is not in "
                        f"0..{NUM_CLASSES - 1}")
    if not mask.any():
        raise AbawError("no labelled frames to score (every label is -1)")
    return y[mask], p[mask], mask


def macro_f1(labels: Any, preds: Any) -> float:
    """P_EXPR: mean over the 8 classes of per-class F1, on frames whose label is not -1."""
    y, p, _ = _scored(labels, preds)
    return float(f1_score(y, p, average="macro", labels=CLASS_IDS, zero_division=0))


def frame_report(labels: Any, preds: Any, videos: Any = None) -> dict[str, Any]:
    """Everything an evaluation report shows, JSON-ready (plain floats, ints and lists).

    ``videos`` (one name per frame) adds the macro F1 of every video that has labelled frames,
    averaged over the classes that occur in that video's labels or predictions (a clip shows
    few expressions; dividing by 8 would make every clip look bad). It is the quickest way to
    find the clips a model gets wrong.
    """
    y, p, mask = _scored(labels, preds)
    _, _, f1, support = precision_recall_fscore_support(
        y, p, labels=CLASS_IDS, average=None, zero_division=0)
    cm = confusion_matrix(y, p, labels=CLASS_IDS)
    report: dict[str, Any] = {
        "macro_f1": float(np.mean(f1)),
        "per_class_f1": {name: float(v) for name, v in zip(CLASS_NAMES, f1, strict=True)},
        "accuracy": float(np.mean(y == p)),
        "support": {name: int(v) for name, v in zip(CLASS_NAMES, support, strict=True)},
        "confusion": cm.astype(int).tolist(),
        "n_frames": len(y),
    }
    if videos is not None:
        frame = pd.DataFrame({"video": _scored_names(videos, mask), "y": y, "p": p})
        report["per_video_f1"] = {
            str(video): float(f1_score(part["y"], part["p"], average="macro", zero_division=0))
            for video, part in frame.groupby("video", sort=False)
        }
    return report


def paired_bootstrap(labels: Any, preds_a: Any, preds_b: Any, groups: Any, *,
                     resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """macro-F1(b) - macro-F1(a) and its spread when the groups (videos: people) are drawn
    again with replacement: the std and the 2.5 / 97.5 percentiles over ``resamples`` draws.

    Why: a split holds a few dozen people, and the same people score every seed, so the seed
    spread says nothing about how much a gain depends on which people were drawn; this does.
    """
    y, p_a, mask = _scored(labels, preds_a)
    _, p_b, _ = _scored(labels, preds_b)
    codes, names = pd.factorize(_scored_names(groups, mask))
    rows_of = [np.flatnonzero(codes == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for k in range(resamples):
        rows = np.concatenate([rows_of[g] for g in rng.integers(0, len(names), len(names))])
        draws[k] = _fast_macro_f1(y[rows], p_b[rows]) - _fast_macro_f1(y[rows], p_a[rows])
    return {"difference": _fast_macro_f1(y, p_b) - _fast_macro_f1(y, p_a),
            "std": float(draws.std()), "low": float(np.percentile(draws, 2.5)),
            "high": float(np.percentile(draws, 97.5)), "groups": len(names)}


def _scored_names(videos: Any, mask: np.ndarray) -> np.ndarray:
    """The video name of every scored frame, given one name per frame."""
    names = np.asarray(videos).ravel()
    if len(names) != len(mask):
        raise AbawError(f"videos ({len(names)} entries) and labels ({len(mask)} frames) "
                        "differ in length; expected one video name per frame")
    return names[mask]


def _fast_macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """``macro_f1`` on validated arrays, from one bincount (the bootstrap calls it thousands of
    times)."""
    counts = np.bincount(y * NUM_CLASSES + p, minlength=NUM_CLASSES ** 2)
    cm = counts.reshape(NUM_CLASSES, NUM_CLASSES)
    tp = np.diag(cm)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # 2 tp + fp + fn
    return float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean())
