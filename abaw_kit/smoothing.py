"""Per-video temporal post-processing of frame class probabilities.

Two steps, both applied inside each video (or subject: ``X_left`` and ``X_right`` are separate
groups) and never across a boundary between groups:

1. ``fill_missing``: frames without a face have no prediction; the common practice of the
   challenge is to interpolate probabilities linearly between the nearest frames with a face and
   to repeat the edge values at the start and end.
2. ``smooth``: a mean, median or Gaussian filter along the frame axis (scipy.ndimage, boundary
   mode 'nearest'). Expressions change slowly, so this is worth about +0.04 macro F1 on Aff-Wild2.

``choose_smoothing`` picks the filter and window that maximise macro F1 on a labelled split;
``record_smoothing`` / ``recorded_smoothing`` write and read that choice (the file: a model
folder's ``smoothing.json``, abaw_kit.run_dir), so `submit` and `predict` reuse it.
A window (or sigma) longer than the longest video is an error (``check_fits``), not clamped.
Rows of a group are taken in the order they appear (the face store lists frames in order); groups
need not be contiguous.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.errors import AbawError
from abaw_kit.metrics import macro_f1
from abaw_kit.workspace import atomic_write_json

FILTER_KINDS = ("mean", "median", "gauss")
SPEC_HELP = "none | auto | mean:W | median:W | gauss:SIGMA (W, SIGMA in frames, or seconds as 0.5s)"
MAX_SIGMA_FRAMES = 1000.0
"""Largest Gaussian sigma (33 s at 30 fps): scipy's Gaussian costs time in proportion to sigma
(measured 1.6 s per 50,000 frames at 1000), and no expression stays put for minutes."""

DEFAULT_WINDOWS = (5, 9, 15, 25, 35, 51, 75, 101, 151)
"""Mean/median windows (frames) tried by ``choose_smoothing``; +-7 and +-50 frames are the
windows the HSE team reported on Aff-Wild2."""
DEFAULT_SIGMAS = (2.0, 4.0, 8.0, 15.0, 25.0, 40.0)
"""Gaussian sigmas (frames) tried by ``choose_smoothing``."""


@dataclass(frozen=True)
class SmoothSpec:
    """A parsed smoothing choice. ``size`` is a window (mean/median) or a sigma (gauss)."""

    kind: str
    size: float = 0.0
    in_seconds: bool = False

    def __str__(self) -> str:
        if self.kind in ("none", "auto"):
            return self.kind
        number = f"{self.size:g}"
        return f"{self.kind}:{number}s" if self.in_seconds else f"{self.kind}:{number}"

    def frames(self, fps: float) -> float:
        """The window (or sigma) in frames at ``fps``."""
        if not self.in_seconds:
            return self.size
        if fps <= 0:
            raise AbawError(f"smoothing '{self}' is given in seconds but fps is {fps}; "
                            "expected a positive frame rate")
        return self.size * fps


NO_SMOOTHING = SmoothSpec("none")

_SPEC_RE = re.compile(r"^(mean|median|gauss)\s*:\s*([0-9]*\.?[0-9]+)\s*(s?)$")


def parse_spec(text: str | SmoothSpec) -> SmoothSpec:
    """Parse ``none | auto | mean:W | median:W | gauss:SIGMA``; ``0.5s`` means seconds."""
    if isinstance(text, SmoothSpec):
        return text
    cleaned = str(text).strip().lower()
    if cleaned in ("none", "auto"):
        return SmoothSpec(cleaned)
    match = _SPEC_RE.match(cleaned)
    if not match:
        raise AbawError(f"smoothing '{text}' not understood; expected {SPEC_HELP}")
    kind, number, seconds = match.group(1), float(match.group(2)), bool(match.group(3))
    if not math.isfinite(number):
        raise AbawError(f"smoothing '{text}': the window is too large to be a number of frames")
    if number <= 0:
        raise AbawError(f"smoothing '{text}': the window must be positive")
    if kind in ("mean", "median") and not seconds and number != int(number):
        raise AbawError(f"smoothing '{text}': a window in frames must be a whole number "
                        "(or give seconds, e.g. 0.5s)")
    return SmoothSpec(kind, number, seconds)


def _group_slices(groups: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray, list[slice]]:
    """A stable order that makes each group contiguous, the group codes in that order, and the
    slice of every group in it."""
    codes, _ = pd.factorize(pd.Series(np.asarray(groups).ravel()), sort=False)
    if len(codes) != n_rows:
        raise AbawError(f"groups ({len(codes)} entries) and probabilities ({n_rows} rows) "
                        "differ in length; expected one video id per frame")
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate([[0], bounds]) if n_rows else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [n_rows]]) if n_rows else np.zeros(0, dtype=np.int64)
    slices = [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]
    return order, sorted_codes, slices


def _check_probs(probs: Any) -> np.ndarray:
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] != NUM_CLASSES:
        raise AbawError(f"probabilities have shape {array.shape}; expected [frames, "
                        f"{NUM_CLASSES}]")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return array


def fill_missing(probs: Any, groups: Any) -> np.ndarray:
    """Replace NaN rows (no face) by linear interpolation between the nearest rows with a face
    of the same group; edge rows repeat the nearest value; a group with no face at all gets the
    uniform distribution 1/8 (count those with ``groups_without_faces``).
    """
    array = _check_probs(probs)
    n = len(array)
    order, codes, _ = _group_slices(groups, n)
    if n == 0:
        return array.copy()
    sorted_probs = array[order]
    valid = ~np.isnan(sorted_probs).any(axis=1)
    position = np.arange(n)
    is_start = np.concatenate([[True], codes[1:] != codes[:-1]])
    is_end = np.concatenate([codes[1:] != codes[:-1], [True]])
    group_start = np.maximum.accumulate(np.where(is_start, position, 0))
    group_end = np.minimum.accumulate(np.where(is_end, position, n)[::-1])[::-1]
    # Nearest row with a face before / after each row, kept only when inside the row's group.
    prev = np.maximum.accumulate(np.where(valid, position, -1))
    nxt = np.minimum.accumulate(np.where(valid, position, n)[::-1])[::-1]
    has_prev = prev >= group_start
    has_next = nxt <= group_end
    left = np.where(has_prev, prev, np.where(has_next, nxt, 0))
    right = np.where(has_next, nxt, left)
    span = (right - left).astype(np.float64)
    weight = np.divide(position - left, span, out=np.zeros(n), where=span > 0)[:, None]
    filled = (1.0 - weight) * sorted_probs[left] + weight * sorted_probs[right]
    filled[~(has_prev | has_next)] = 1.0 / NUM_CLASSES
    filled[valid] = sorted_probs[valid]
    out = np.empty_like(filled, dtype=array.dtype)
    out[order] = filled
    return out


def groups_without_faces(probs: Any, groups: Any) -> list[str]:
    """Names of the groups in which every row is NaN (``fill_missing`` makes them uniform)."""
    missing = np.isnan(_check_probs(probs)).any(axis=1)
    table = pd.DataFrame({"group": np.asarray(groups).ravel(), "missing": missing})
    all_missing = table.groupby("group", sort=False)["missing"].all()
    return [str(name) for name in all_missing.index[all_missing.to_numpy()]]


def longest_group(groups: Any) -> int:
    """Frames in the largest group (video or subject); 0 when there are none."""
    codes, _ = pd.factorize(pd.Series(np.asarray(groups).ravel()), sort=False)
    return int(np.bincount(codes).max()) if len(codes) else 0


def _window_frames(spec: SmoothSpec, fps: float) -> float:
    """The window (mean/median: whole frames, at least 1) or sigma (gauss) the filter uses."""
    size = spec.frames(fps)
    return float(max(1, round(size))) if spec.kind in ("mean", "median") else size


def check_fits(spec: str | SmoothSpec, longest: int, fps: float = 30.0) -> None:
    """Refuse a window (or sigma) longer than the longest video, or a sigma over
    MAX_SIGMA_FRAMES: such a filter only smears each video's edges, and its cost in time or
    memory grows with the window (gauss:10000000 ran for minutes on 1,267 frames)."""
    spec = parse_spec(spec)
    if spec.kind not in FILTER_KINDS or longest <= 0:
        return
    size = _window_frames(spec, fps)
    what = "sigma" if spec.kind == "gauss" else "window"
    if size > longest:
        raise AbawError(f"smoothing '{spec}': the {what} ({size:.10g} frames) is longer than the "
                        f"longest video ({longest} frames); expected at most {longest} frames "
                        "(give a smaller --smooth, or none)")
    if spec.kind == "gauss" and size > MAX_SIGMA_FRAMES:
        raise AbawError(f"smoothing '{spec}': sigma {size:.10g} frames is above the limit of "
                        f"{MAX_SIGMA_FRAMES:g} frames (the longest video has {longest}); "
                        "expected a smaller sigma")


def fit_to(spec: SmoothSpec, longest: int, fps: float = 30.0) -> SmoothSpec:
    """``spec`` shortened to ``longest`` frames where it is longer (a recorded choice met a
    short clip); a spec the user typed goes through ``check_fits`` instead."""
    if spec.kind not in FILTER_KINDS or longest <= 0 or _window_frames(spec, fps) <= longest:
        return spec
    return SmoothSpec(spec.kind, float(longest))


def _filter_block(block: np.ndarray, kind: str, size: float) -> np.ndarray:
    if kind == "mean":
        return ndimage.uniform_filter1d(block, size=int(size), axis=0, mode="nearest")
    if kind == "gauss":
        return ndimage.gaussian_filter1d(block, sigma=size, axis=0, mode="nearest")
    # Column by column: scipy's 1-D median has a fast path (O(n log w)) that a [w, 1]
    # footprint on the 2-D array does not use (about 30x slower at w=101).
    columns = [ndimage.median_filter(block[:, c], size=int(size), mode="nearest")
               for c in range(block.shape[1])]
    return np.stack(columns, axis=1)


def smooth(probs: Any, groups: Any, spec: str | SmoothSpec, fps: float = 30.0) -> np.ndarray:
    """Filter probabilities along frames within each group (boundary mode 'nearest')."""
    spec = parse_spec(spec)
    array = _check_probs(probs)
    if spec.kind == "auto":
        raise AbawError("smoothing 'auto' must be resolved first (choose_smoothing on val)")
    if np.isnan(array).any():
        raise AbawError("probabilities contain NaN rows (frames without a face); "
                        "call fill_missing before smooth")
    if spec.kind == "none":
        return array.copy()
    order, _, slices = _group_slices(groups, len(array))
    check_fits(spec, max((part.stop - part.start for part in slices), default=0), fps)
    size = _window_frames(spec, fps)
    sorted_probs = array[order]
    smoothed = np.empty_like(sorted_probs)
    for part in slices:
        smoothed[part] = _filter_block(sorted_probs[part], spec.kind, size)
    out = np.empty_like(smoothed)
    out[order] = smoothed
    return out


def default_candidates() -> list[SmoothSpec]:
    """none, then mean and median over DEFAULT_WINDOWS, then gauss over DEFAULT_SIGMAS."""
    specs = [NO_SMOOTHING]
    specs += [SmoothSpec("mean", w) for w in DEFAULT_WINDOWS]
    specs += [SmoothSpec("median", w) for w in DEFAULT_WINDOWS]
    specs += [SmoothSpec("gauss", s) for s in DEFAULT_SIGMAS]
    return specs


def choose_smoothing(probs: Any, labels: Any, groups: Any,
                     candidates: list[str | SmoothSpec] | None = None,
                     fps: float = 30.0) -> tuple[SmoothSpec, list[dict[str, Any]]]:
    """Try every candidate on a labelled split; return the best by macro F1 and the table.

    Ties go to the earlier candidate, so 'none' wins unless a filter really helps. The F1 of the
    winner is optimistic on the split it was chosen on; report it as such. Default candidates
    longer than the longest video are left out (see ``check_fits``); given ones must fit.
    """
    if candidates is None:
        longest = longest_group(groups)
        specs = [s for s in default_candidates()
                 if s.kind == "none" or _window_frames(s, fps) <= longest]
    else:
        specs = [parse_spec(c) for c in candidates]
    if any(s.kind == "auto" for s in specs):
        raise AbawError("'auto' cannot be a smoothing candidate; list concrete filters")
    y = np.asarray(labels).ravel()
    table: list[dict[str, Any]] = []
    best_spec, best_f1 = specs[0], -1.0
    for spec in specs:
        preds = smooth(probs, groups, spec, fps=fps).argmax(axis=1)
        score = macro_f1(y, preds)
        frames = float(spec.frames(fps)) if spec.kind != "none" else 0.0
        table.append({"spec": str(spec), "kind": spec.kind, "frames": frames,
                      "macro_f1": score})
        if score > best_f1:
            best_spec, best_f1 = spec, score
    return best_spec, table


def record_smoothing(path: Path, spec: SmoothSpec, table: list[dict[str, Any]], *,
                     chosen_on: str, fps: float) -> None:
    """Write the choice ``choose_smoothing`` made (``spec``, from its ``table``) to ``path``."""
    best = next(row["macro_f1"] for row in table if row["spec"] == str(spec))
    atomic_write_json(path, {
        "spec": str(spec), "chosen_on": chosen_on, "fps": fps, "macro_f1": best,
        "macro_f1_none": table[0]["macro_f1"], "table": table})


def recorded_smoothing(path: Path) -> SmoothSpec | None:
    """The spec ``record_smoothing`` wrote to ``path`` (`evaluate --smooth auto`), or None."""
    if not path.is_file():
        return None
    try:
        return parse_spec(json.loads(path.read_text())["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AbawError(f"{path}: unreadable smoothing record ({exc}); delete it and rerun "
                        "`abaw evaluate --split val --smooth auto`") from exc
