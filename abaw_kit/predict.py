"""`abaw predict VIDEO...`: any video -> detect, align, classify, smooth -> CSV + PNG timeline.

What researchers use a trained model for after the challenge: the same face path as
`prepare --source video`, the same model loading as `evaluate`, the same smoothing chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_kit.classes import CLASS_NAMES, NUM_CLASSES
from abaw_kit.errors import AbawError
from abaw_kit.evaluate import output_file
from abaw_kit.faces.detector import DEFAULT_DETECTOR
from abaw_kit.plots.eval import plot_timeline
from abaw_kit.progress import progress_bar
from abaw_kit.run_dir import RunDir
from abaw_kit.smoothing import fill_missing, fit_to, parse_spec, recorded_smoothing
from abaw_kit.smoothing import smooth as apply_smoothing
from abaw_kit.workspace import Workspace, atomic_path

PREDICTIONS_DIR = "predictions"
"""Default output folder, inside the workspace."""


def output_names(videos: list[Path]) -> list[str]:
    """One output name per video, unique within the call: the stem, and for inputs that share
    a stem as many parent folder names as tell them apart (``a/clip.mp4`` -> ``a_clip``), so
    that two inputs never write (and silently replace) the same CSV."""
    paths = [Path(v).expanduser().resolve() for v in videos]
    first: dict[Path, Path] = {}
    for given, path in zip(videos, paths, strict=True):
        if path in first:
            raise AbawError(f"video {given} is given twice (also as {first[path]}); "
                            "expected each video once")
        first[path] = given
    names = [path.stem for path in paths]
    same_stem: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        same_stem.setdefault(name.casefold(), []).append(i)
    for members in same_stem.values():
        if len(members) > 1:
            for i, name in zip(members, _distinct_names([paths[i] for i in members]),
                               strict=True):
                names[i] = name
    return _numbered(names)


def _distinct_names(paths: list[Path]) -> list[str]:
    """The fewest parent folders (then the extension too: ``clip_mp4``) that make names differ;
    names compare case-insensitively, as on macOS and Windows file systems."""
    parents = [[part for part in path.parent.parts if part not in ("/", "")] for path in paths]
    for with_suffix in (False, True):
        for depth in range(max(len(p) for p in parents) + 1):
            names = ["_".join([*folders[max(0, len(folders) - depth):],
                               path.name.replace(".", "_") if with_suffix else path.stem])
                     for path, folders in zip(paths, parents, strict=True)]
            if len({name.casefold() for name in names}) == len(names):
                return names
    return [path.stem for path in paths]  # only the case differs: _numbered tells them apart


def _numbered(names: list[str]) -> list[str]:
    """Append _1, _2 ... to names that still clash (they differ only in case)."""
    keys = [name.casefold() for name in names]
    clashing = [i for i, key in enumerate(keys) if keys.count(key) > 1]
    taken = {key for i, key in enumerate(keys) if i not in clashing}
    result = list(names)
    for i in clashing:
        number = 1
        while f"{names[i]}_{number}".casefold() in taken:
            number += 1
        result[i] = f"{names[i]}_{number}"
        taken.add(result[i].casefold())
    return result


def predict_videos(work: Workspace, videos: list[Path], *, run: str | None = None,
                   out_dir: Path | None = None, smooth: str | None = None,
                   detector: str = DEFAULT_DETECTOR, detector_weights: Path | None = None,
                   detect_every: int = 1, detect_size: int | None = None,
                   device: str = "auto", force: bool = False,
                   progress: bool = False) -> dict[str, Any]:
    """Per video: ``<out_dir>/<name>.csv`` (frame, time, has_face, label, 8 probabilities) + PNG.

    ``out_dir`` defaults to ``<work>/predictions``; ``<name>`` comes from ``output_names``.
    Every input and output is checked before the model loads: inputs must be videos, outputs
    new files (or ``force``) outside the data root.
    """
    from abaw_kit.data.video import check_video, video_fps
    from abaw_kit.faces import make_detector
    from abaw_kit.faces.extract import extract_video_faces
    from abaw_kit.infer import load_run_model, predict_faces

    videos = [Path(v) for v in videos]
    for video in videos:
        check_video(video)
    out_dir = work.root / PREDICTIONS_DIR if out_dir is None else Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise AbawError(f"--out-dir {out_dir} is a file; expected a folder")
    outputs = [(output_file(work, out_dir / f"{name}.csv", force=force, option="--out-dir"),
                output_file(work, out_dir / f"{name}.png", force=force, option="--out-dir"))
               for name in output_names(videos)]
    run_dir = RunDir(work.run_dir(run))
    spec = parse_spec(smooth) if smooth else (recorded_smoothing(run_dir.smoothing)
                                              or parse_spec("none"))
    if spec.kind == "auto":
        raise AbawError("--smooth auto needs labels; run `abaw evaluate --split val --smooth auto` "
                        "first (predict then reuses its choice) or give a filter such as mean:15")
    loaded = load_run_model(run_dir, device=device)
    face_detector = make_detector(detector, weights=detector_weights, device=loaded.device.type,
                                  max_size=detect_size)
    results = []
    with progress_bar(progress, "predict", len(videos), unit="videos") as advance:
        for video, (csv_path, png_path) in zip(videos, outputs, strict=True):
            fps = video_fps(video) or 30.0
            extracted = extract_video_faces(video, ["single"], face_detector,
                                            detect_every=detect_every)
            subject = extracted.subjects["single"]
            if not len(subject.has_face):
                raise AbawError(f"cannot decode video {video}: not a single frame decodes")
            probs = np.full((len(subject.has_face), NUM_CLASSES), np.nan, np.float32)
            if len(subject.faces):
                probs[subject.has_face] = predict_faces(loaded, subject.faces)
            groups = np.zeros(len(probs), dtype=np.int64)
            used = spec if smooth else fit_to(spec, len(probs), fps)  # the run's choice, any clip
            final = apply_smoothing(fill_missing(probs, groups), groups, used, fps=fps)
            _write_csv(csv_path, final, subject.has_face, fps)
            plot_timeline(final, png_path, fps=fps, title=f"{video.name} (smoothing {used})",
                          has_face=subject.has_face)
            results.append({"video": str(video), "frames": len(probs),
                            "frames_with_face": int(subject.has_face.sum()),
                            "csv": str(csv_path.resolve()), "timeline": str(png_path.resolve())})
            advance(1)
    return {"run": run_dir.name, "smoothing": str(spec), "out_dir": str(out_dir.resolve()),
            "videos": results}


def _write_csv(path: Path, probs: np.ndarray, has_face: np.ndarray, fps: float) -> None:
    frames = np.arange(1, len(probs) + 1)
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    table = pd.DataFrame({"frame": frames, "time_s": np.round((frames - 1) / fps, 3),
                          "has_face": has_face.astype(int), "label": labels,
                          "expression": np.asarray(CLASS_NAMES)[labels]})
    for k, name in enumerate(CLASS_NAMES):
        table[name] = np.round(probs[:, k], 5)
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
