"""Video path of `abaw prepare`: extract_video_faces frames/s on a real clip vs decoding.

The bound is decord's own sequential decoding of the same file (iter_video_frames, one pass,
nothing kept): extraction decodes every frame at least once, so it cannot be faster. For each
detection size (``--detect-size``, the long side frames are resized to before detection) and each
``--every`` K (detect_every: the detector sees every K-th frame), printed: frames/s, its ratio to
the bound, the detector's and the second (alignment) decoding pass's share of the time and the
share of frames with a face. The clip is short, so every figure (the bound too) is timed over
``--repeats`` passes after one untimed warm-up pass: frames/s = repeats * frames / total seconds.
The bound is timed again after each line and averaged with the previous value (decoding speed
here swings by 1.5x between minutes, more than the extraction itself).

The default clip is ../shared/data/real_faces/single_face.mp4 next to the repository; without it
(or with ``--video generated``) a generated one is used: skimage's astronaut moving and zooming
through the frame. The default detector is retinaface-mobilenet with the released weights from
../shared/weights/ when they are there.

Run: python benchmarks/bench_prepare_video.py --json /tmp/bench_video.json
     (--video CLIP --every 1 5 --detect-size 640 320; --detector retinaface --random-weights:
     RetinaFace-ResNet50 speed without its weights; --detector cascade; --device cuda)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from skimage import data
from skimage.transform import SimilarityTransform, warp

from abaw_kit.data.video import iter_video_frames, write_video
from abaw_kit.faces import Detections, FaceDetector, extract_video_faces, make_detector
from abaw_kit.faces.retinaface import RELEASES

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_VIDEO = SHARED / "data/real_faces/single_face.mp4"
DEFAULT_MOBILENET_WEIGHTS = SHARED / "weights/retinaface_mobilenet0.25_biubug6.pth"
BACKBONES = {release.detector: release.backbone for release in RELEASES.values()}


def moving_astronaut(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Synthetic frames: the astronaut photo sweeping right and zooming in and out."""
    photo = data.astronaut()
    for t in range(frames):
        phase = 2 * np.pi * t / max(frames, 1)
        scale = height / 512 * (0.9 + 0.2 * np.sin(phase))
        # the face (about x 230, y 115 in the photo) sweeps right at 40% of the frame height
        pose = SimilarityTransform(scale=scale, translation=(
            (0.3 + 0.4 * t / max(frames, 1)) * width - 230 * scale, 0.4 * height - 115 * scale))
        yield warp(photo, pose.inverse, output_shape=(height, width), preserve_range=True,
                   cval=90).astype(np.uint8)


class TimedDetector:
    """Wraps a detector and adds up the seconds spent in detect()."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0

    def detect(self, images: np.ndarray) -> list[Detections]:
        started = time.perf_counter()
        try:
            return self.inner.detect(images)
        finally:
            self.seconds += time.perf_counter() - started


def decode_once(path: Path) -> tuple[int, tuple[int, int], str | None]:
    """One sequential decoding pass: frame count, (width, height), a note if PyAV took over."""
    frames = iter_video_frames(path)
    count, size = 0, (0, 0)
    for _, chunk in frames:
        count += len(chunk)
        size = (chunk.shape[2], chunk.shape[1])
    note = frames.fallback or frames.error
    return count, size, note


def decode_fps(path: Path, repeats: int) -> float:
    """The bound: frames/s of ``repeats`` sequential decoding passes (after a warm-up pass)."""
    decode_once(path)
    started = time.perf_counter()
    count = sum(decode_once(path)[0] for _ in range(repeats))
    return count / (time.perf_counter() - started)


def codec_name(path: Path) -> str:
    """The video stream's codec as PyAV names it."""
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name


def resolve_weights(args: argparse.Namespace, folder: Path) -> Path | None:
    """The weights file: random ones (speed only), --weights, or the shared MobileNet file."""
    if args.random_weights:
        if args.detector not in BACKBONES:
            raise SystemExit(f"--random-weights needs a RetinaFace detector, not {args.detector}")
        import torch

        from abaw_kit.faces.retinaface_net import RetinaFaceNet

        weights = folder / f"random_{args.detector}.pth"
        torch.save(RetinaFaceNet(BACKBONES[args.detector]).state_dict(), weights)
        return weights
    if args.weights is not None:
        return Path(args.weights)
    if args.detector == "retinaface-mobilenet" and DEFAULT_MOBILENET_WEIGHTS.is_file():
        return DEFAULT_MOBILENET_WEIGHTS
    return None  # the backend downloads its released weights (or cascade needs none)


def measure(video: Path, detector: TimedDetector, every: int, batch_size: int,
            repeats: int, count: int) -> dict[str, float]:
    """One warm-up pass, then ``repeats`` timed passes of extract_video_faces."""
    started = time.perf_counter()
    extract_video_faces(video, ["single"], detector, detect_every=every, batch_size=batch_size)
    warmup = time.perf_counter() - started
    detector.seconds = 0.0
    align = 0.0
    started = time.perf_counter()
    for _ in range(repeats):
        result = extract_video_faces(video, ["single"], detector, detect_every=every,
                                     batch_size=batch_size)
        align += result.timings["align_pass"]
    total = time.perf_counter() - started
    return {"seconds": total, "fps": repeats * count / total,
            "detector_share": detector.seconds / total, "align_share": align / total,
            "face_share": float(result["single"].has_face.mean()),
            "warmup_fps": count / warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=None,
                        help=f"a real clip (default {DEFAULT_VIDEO} if it exists; 'generated': "
                             "the moving astronaut)")
    parser.add_argument("--frames", type=int, default=300, help="generated video only")
    parser.add_argument("--width", type=int, default=640, help="generated video only")
    parser.add_argument("--height", type=int, default=360, help="generated video only")
    parser.add_argument("--detector", default="retinaface-mobilenet",
                        choices=["retinaface-mobilenet", "retinaface", "cascade"])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--random-weights", action="store_true",
                        help="random RetinaFace weights: speed only, faces found mean nothing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--detect-size", type=int, nargs="+", default=[640, 320])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    folder = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        if args.video not in (None, "generated"):
            video = Path(args.video)
            if not video.is_file():
                parser.error(f"no video at {video}")
        elif args.video is None and DEFAULT_VIDEO.is_file():
            video = DEFAULT_VIDEO
        else:
            if args.video is None:
                print(f"no real clip at {DEFAULT_VIDEO}: using the generated moving astronaut")
            video = folder / "astronaut.mp4"
            write_video(video, moving_astronaut(args.frames, args.width, args.height))
        count, (width, height), note = decode_once(video)  # also warms the page cache
        weights = resolve_weights(args, folder)
        print(f"video: {video} ({count} frames {width}x{height}, {codec_name(video)})"
              + (f"; decoding: {note}" if note else ""))
        print(f"detector: {args.detector} on {args.device}, weights "
              + ("random (speed only)" if args.random_weights else str(weights or "default"))
              + f"; {args.repeats} timed passes after one warm-up pass per line")
        bound = decode_fps(video, args.repeats)
        print(f"bound: decord sequential decode {bound:8.1f} frames/s"
              + (" (PyAV after decord stopped, as noted above)" if note else ""))
        rows: list[dict[str, Any]] = []
        for size in args.detect_size:
            detector = TimedDetector(make_detector(args.detector, weights=weights,
                                                   device=args.device, max_size=size))
            for every in args.every:
                figures = measure(video, detector, every, args.batch_size, args.repeats, count)
                # the bound again right after, averaged: a noisy machine shifts both together
                bound = (bound + decode_fps(video, args.repeats)) / 2
                ratio = figures["fps"] / bound
                print(f"{args.detector} size={size} detect_every={every}: "
                      f"{figures['fps']:7.1f} frames/s ({ratio:.3f} of the bound), detector "
                      f"{figures['detector_share']:.0%} of the time, align pass "
                      f"{figures['align_share']:.0%}, faces on {figures['face_share']:.0%} "
                      "of frames")
                rows.append({"video": str(video), "frames": count, "width": width,
                             "height": height, "detector": args.detector,
                             "random_weights": args.random_weights, "device": args.device,
                             "detect_size": size, "every": every, "repeats": args.repeats,
                             "bound_fps": bound, "ratio": ratio, **figures})
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
