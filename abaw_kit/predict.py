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
from abaw_kit.evaluate import recorded_smoothing
from abaw_kit.plots.eval import plot_timeline
from abaw_kit.progress import progress_bar
from abaw_kit.smoothing import fill_missing, parse_spec
from abaw_kit.smoothing import smooth as apply_smoothing
from abaw_kit.workspace import Workspace, atomic_path


def predict_videos(work: Workspace, videos: list[Path], *, run: str | None = None,
                   out_dir: Path = Path("predictions"), smooth: str | None = None,
                   detector: str = "retinaface", detector_weights: Path | None = None,
                   detect_every: int = 1, device: str = "auto",
                   progress: bool = False) -> dict[str, Any]:
    """Per video: ``<out_dir>/<stem>.csv`` (frame, time, has_face, label, 8 probabilities) + PNG."""
    from abaw_kit.data.video import video_fps
    from abaw_kit.faces import make_detector
    from abaw_kit.faces.extract import extract_video_faces
    from abaw_kit.infer import load_run_model, predict_faces

    missing = [str(v) for v in videos if not Path(v).is_file()]
    if missing:
        raise AbawError(f"video file not found: {missing[0]}")
    run_dir = work.run_dir(run)
    spec = parse_spec(smooth) if smooth else (recorded_smoothing(run_dir) or parse_spec("none"))
    if spec.kind == "auto":
        raise AbawError("--smooth auto needs labels; run `abaw evaluate --split val --smooth auto` "
                        "first (predict then reuses its choice) or give a filter such as mean:15")
    loaded = load_run_model(run_dir, device=device)
    face_detector = make_detector(detector, weights=detector_weights, device=loaded.device.type)
    out_dir = Path(out_dir)
    results = []
    with progress_bar(progress, "predict", len(videos), unit="videos") as advance:
        for video in map(Path, videos):
            fps = video_fps(video) or 30.0
            extracted = extract_video_faces(video, ["single"], face_detector,
                                            detect_every=detect_every)
            subject = extracted.subjects["single"]
            probs = np.full((len(subject.has_face), NUM_CLASSES), np.nan, np.float32)
            if len(subject.faces):
                probs[subject.has_face] = predict_faces(loaded, subject.faces)
            groups = np.zeros(len(probs), dtype=np.int64)
            final = apply_smoothing(fill_missing(probs, groups), groups, spec, fps=fps)
            csv_path, png_path = out_dir / f"{video.stem}.csv", out_dir / f"{video.stem}.png"
            _write_csv(csv_path, final, subject.has_face, fps)
            plot_timeline(final, png_path, fps=fps, title=f"{video.name} ({spec})")
            results.append({"video": str(video), "frames": len(probs),
                            "frames_with_face": int(subject.has_face.sum()),
                            "csv": str(csv_path.resolve()), "timeline": str(png_path.resolve())})
            advance(1)
    return {"run": run_dir.name, "smoothing": str(spec), "videos": results}


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
