"""Video path of `abaw prepare`: frames/s of extract_video_faces, as a ratio to decoding.

The bound is decord's own sequential decoding of the same file (nothing can be faster than
reading the frames once). Also printed: the detector's share of the extraction time and the cost
of the second (alignment) decoding pass. The video is generated: skimage's astronaut moving and
zooming through the frame.

Run: python benchmarks/bench_prepare_video.py --frames 300 --width 640 --height 360
     (--detector retinaface --random-weights --device cuda: RetinaFace speed without weights)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from skimage import data
from skimage.transform import SimilarityTransform, warp

from abaw_kit.data.video import iter_video_frames, write_video
from abaw_kit.faces import Detections, FaceDetector, extract_video_faces, make_detector


def moving_astronaut(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
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


def decode_fps(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    count = sum(len(chunk) for _, chunk in iter_video_frames(path))
    return count / (time.perf_counter() - started), count


def build_detector(args: argparse.Namespace, folder: Path) -> FaceDetector:
    if args.detector == "retinaface" and args.random_weights:
        import torch

        from abaw_kit.faces.retinaface_net import RetinaFaceNet

        weights = folder / "random_retinaface.pth"
        torch.save(RetinaFaceNet().state_dict(), weights)
        return make_detector("retinaface", weights=weights, device=args.device)
    return make_detector(args.detector, weights=args.weights, device=args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--detector", default="cascade")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        video = folder / "astronaut.mp4"
        write_video(video, moving_astronaut(args.frames, args.width, args.height))
        decode_fps(video)  # warm the page cache
        bound, count = decode_fps(video)
        print(f"video: {count} frames {args.width}x{args.height}, mpeg4"
              + (" (random detector weights: speed only)" if args.random_weights else ""))
        print(f"bound: decord sequential decode {bound:8.1f} frames/s")
        detector = TimedDetector(build_detector(args, folder))
        detector.detect(np.zeros((1, args.height, args.width, 3), np.uint8))  # warm-up
        for every in args.every:
            detector.seconds = 0.0
            started = time.perf_counter()
            result = extract_video_faces(video, ["single"], detector, detect_every=every,
                                         batch_size=args.batch_size)
            total = time.perf_counter() - started
            fps = count / total
            found = result["single"].has_face.mean()
            print(f"{args.detector} detect_every={every}: {fps:7.1f} frames/s "
                  f"({fps / bound:.3f} of the bound), detector {detector.seconds / total:.0%} "
                  f"of the time, align pass {result.timings['align_pass'] / total:.0%}, "
                  f"faces on {found:.0%} of frames")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
