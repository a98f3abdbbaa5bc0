"""The demo generator: writes a small synthetic Aff-Wild2 in exactly the official layout.

Why: every command of the toolkit (prepare from crops or from videos, ingest, train, evaluate,
submit) must run end to end without the licensed data, on a laptop, in minutes. Everything is
generated from a seed, so two runs give the same bytes. Layout under the output folder::

    6th_ABAW_Annotations/EXPR_Recognition_Challenge/{Train_Set,Validation_Set}/<name>.txt
    cropped_aligned/<name>/<NNNNN>.jpg          (+ cropped_aligned_new_50_vids/ for two videos)
    batch1/<name>.mp4, batch2/<name>.avi        (mpeg4; one two-person video: <name>_left/_right)
    names_of_videos_in_each_test_set/Expression_Classification_Challenge_test_set_release.txt
    test_set_examples/CVPR_5th_ABAW_EXPR_test_set_example.txt
    unlabeled/folder/<id>/<n>.jpg, unlabeled/recordio/{train.rec,train.idx,property}
    DEMO.json                                   (seed, version, counts; marks a demo release)
    demo_test_labels.txt                        (hidden test labels, prediction format; demo only)
    demo_unlabeled_labels.csv                   (hidden class of each unlabelled face; demo only)

Real-data quirks reproduced on purpose: frames without a face have no crop (occlusion, turning
away), runs of -1 labels, one video that decodes two frames longer than its annotation, and one
test video whose example entry stops three frames before the video ends.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import (
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
)
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from abaw_kit.classes import ANNOTATION_HEADER, IGNORE_LABEL, NUM_CLASSES, SUBMISSION_HEADER
from abaw_kit.demo import (
    DEMO_MARKER,
    TEST_LABELS_FILE,
    UNLABELED_FOLDER,
    UNLABELED_LABELS_FILE,
    UNLABELED_RECORDIO,
    is_demo,
)
from abaw_kit.demo import faces as sf
from abaw_kit.errors import AbawError
from abaw_kit.progress import step_bar

DEMO_VERSION = 3
"""Bump when the generated content changes, so cached demo folders are regenerated."""

ANNOTATION_DIR = "6th_ABAW_Annotations/EXPR_Recognition_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}
CROPS_DIR = "cropped_aligned"
LATE_CROPS_DIR = "cropped_aligned_new_50_vids"
TEST_LIST_FILE = ("names_of_videos_in_each_test_set/"
                  "Expression_Classification_Challenge_test_set_release.txt")
TEST_EXAMPLE_FILE = "test_set_examples/CVPR_5th_ABAW_EXPR_test_set_example.txt"

FRAME_WIDTH, FRAME_HEIGHT = 256, 192
JPEG_QUALITY = 90

# Frame shares per class, from the official Aff-Wild2 train / validation counts.
TRAIN_CLASS_SHARE = np.array([177198, 16573, 10771, 9080, 95463, 78751, 31615, 165866], float)
VAL_CLASS_SHARE = np.array([82258, 6126, 5296, 8408, 34511, 25157, 12332, 106444], float)
# Face-recognition data: mostly neutral and smiling people.
UNLABELED_CLASS_SHARE = np.array([0.46, 0.04, 0.03, 0.02, 0.30, 0.06, 0.05, 0.04])
UNLABELED_PER_IDENTITY = (2, 8)
"""Photos per unlabelled person: like MS1MV2, many people with few photos each."""

# name, container folder, extension, fps, two people, late crops folder, extra decoded frames
_TRAIN_VIDEOS = [
    ("1-30-1280x720", "batch1", "mp4", 30, False, False, 0),
    ("video2", "batch2", "avi", 25, False, False, 0),
    ("13-30-1920x1080", "batch1", "mp4", 30, False, False, 0),
    ("46-30-484x360", "batch1", "mp4", 30, True, False, 0),
    ("video18", "batch2", "avi", 25, False, False, 0),
    ("117", "batch1", "mp4", 30, False, False, 0),
    ("135-24-1920x1080", "batch1", "mp4", 24, False, True, 0),
    ("212", "batch2", "avi", 30, False, False, 0),
    ("video45_1", "batch2", "avi", 25, False, False, 2),
    ("video45_2", "batch2", "avi", 25, False, False, 0),
    ("282", "batch1", "mp4", 30, False, False, 0),
    ("22-30-1920x1080", "batch1", "mp4", 30, False, False, 0),
    ("video71", "batch2", "avi", 25, False, False, 0),
]
_VAL_VIDEOS = [
    ("2-30-640x360", "batch1", "mp4", 30, False, False, 0),
    ("video63", "batch2", "avi", 25, False, True, 0),
    ("118-30-640x480", "batch1", "mp4", 30, False, False, 0),
    ("271", "batch2", "avi", 30, False, False, 0),
    ("video93", "batch2", "avi", 25, False, False, 0),
]
_TEST_VIDEOS = [
    ("3-25-1920x1080", "batch1", "mp4", 25, False, False, 0),
    ("video10_1", "batch2", "avi", 25, False, False, 0),
    ("299", "batch1", "mp4", 30, False, False, 0),
    ("126-30-1080x1920", "batch2", "avi", 30, False, False, 0),
]
_QUIRK_VIDEOS = {"train": _TRAIN_VIDEOS, "val": _VAL_VIDEOS, "test": _TEST_VIDEOS}
"""The hand-made videos that carry the layout's quirks (two people, late crops, extra frames)."""
SUBJECTS_PER_SPLIT = {"train": 64, "val": 20, "test": 20}
"""Annotated people per split at scale >= 1 (disjoint identities): many people, so a split's
score measures how well expressions generalise to people the model has not seen."""
FRAMES_PER_SUBJECT = {"train": (50, 100), "val": (170, 250), "test": (170, 250)}
"""Frame count range of one video at scale 1 (Aff-Wild2's are longer; 2 CPU cores set this).
Val and test get longer videos: more episodes of the rare classes make their scores stable."""
SEGMENT_FRAMES = (12, 60)
"""Length range of one expression episode at scale 1 (of the common classes)."""
RARE_BREVITY = 0.4
"""Shortest episode length factor: a class of share s gets sqrt(s / 10%) of the common length
range, at least this factor (Anger, Disgust, Fear: 6-24 frames)."""
_NAME_STYLES = (("{n}", "batch1", "mp4", 30), ("video{n}", "batch2", "avi", 25),
                ("{n}-30-1280x720", "batch1", "mp4", 30), ("{n}-25-640x480", "batch2", "avi", 25))
_NAME_BASE = {"train": 300, "val": 600, "test": 800}


def _split_videos(split: str, scale: float) -> list[tuple[str, str, str, int, bool, bool, int]]:
    """The quirk videos plus generated one-person videos up to the split's subject count.

    Below scale 1 the generated part shrinks with the scale (tests keep every quirk)."""
    videos = list(_QUIRK_VIDEOS[split])
    people = sum(2 if v[4] else 1 for v in videos)
    extra = round(max(SUBJECTS_PER_SPLIT[split] - people, 0) * min(scale, 1.0))
    for i in range(extra):
        pattern, folder, ext, fps = _NAME_STYLES[i % len(_NAME_STYLES)]
        videos.append((pattern.format(n=_NAME_BASE[split] + i), folder, ext, fps, False, False,
                       0))
    return videos
GENERATION_PROCESSES = 2
"""Rendering processes (the demo must generate in about a minute on a 2-core laptop)."""
EXAMPLE_SHORTFALL = 3
"""Frames at the end of the first test video that its example entry leaves out."""


# ----------------------------------------------------------------------------- public API

def read_demo_info(root: str | Path) -> dict[str, Any]:
    """The contents of ``DEMO.json`` (seed, version, scale, counts, per-video facts)."""
    marker = Path(root) / DEMO_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise AbawError(f"{marker}: cannot read the demo marker ({exc}); "
                        "delete the folder and generate the demo again") from exc


def generate_demo(out_dir: str | Path, seed: int = 0, *, progress: bool = False,
                  scale: float = 1.0) -> Path:
    """Write the demo release into ``out_dir`` and return it.

    Idempotent: does nothing when ``out_dir`` already holds a demo with the same seed, version
    and scale. The release is written into a temporary folder beside ``out_dir`` and renamed
    into place, so a crash never leaves half a dataset. ``scale`` shrinks frame and image counts
    (tests use about 0.2); 1.0 is the documented size.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if not 0.01 <= scale <= 4.0:
        raise AbawError(f"demo scale {scale} is out of range; expected 0.01..4")
    if is_demo(out_dir):
        info = read_demo_info(out_dir)
        if (info.get("seed"), info.get("version"), info.get("scale")) == (seed, DEMO_VERSION,
                                                                           scale) \
                and _complete(out_dir, info):
            return out_dir
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AbawError(f"{out_dir} exists and is not a demo release; refusing to overwrite it, "
                        "choose an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the release is ordinary data
    try:
        _write_release(staging, seed, scale, progress)
        _swap_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def demo_counts(seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Frame and class counts per split that :func:`generate_demo` would write (no rendering)."""
    return _split_counts(_plan(seed, scale))


def _file_sizes(root: Path) -> dict[str, list[int]]:
    """Per folder of the release (``.``: the top), its number of files and their total bytes:
    what ``DEMO.json`` records so a later run can tell a deleted or truncated file."""
    sizes: dict[str, list[int]] = {}
    for folder, _dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        names = [name for name in files if not (rel == "." and name == DEMO_MARKER)]
        if names:
            sizes[rel] = [len(names), sum((Path(folder) / name).stat().st_size
                                          for name in names)]
    return dict(sorted(sizes.items()))


def _complete(root: Path, info: dict[str, Any]) -> bool:
    """Every folder ``DEMO.json`` lists still holds its files with their bytes (a marker from
    before the list was kept proves nothing: the release is generated again)."""
    recorded = info.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return False
    try:
        found = _file_sizes(root)
    except OSError:
        return False
    return all(found.get(folder) == list(entry) for folder, entry in recorded.items())


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


# ----------------------------------------------------------------------------- planning

@dataclass
class _Subject:
    """One annotated person in a video: labels, per-frame cues, pose, light, visibility."""

    annotation_name: str
    identity: sf.Identity
    labels: np.ndarray          # int [n_video]; what the annotation/labels file says
    cues: np.ndarray            # float [n_video, NUM_CUES]
    hidden: list[str | None]    # per frame: None (face visible), "hand" or "away"
    poses: list[sf.Pose]
    lights: list[sf.Light]
    track_x: np.ndarray         # float [n_video]: horizontal centre in the video frame (pixels)
    track_y: np.ndarray
    track_size: np.ndarray      # float [n_video]: rendered canvas size in the frame (pixels)


@dataclass
class _Video:
    name: str
    split: str
    folder: str
    ext: str
    fps: int
    crops_dir: str
    n_video: int                # decoded frames
    n_annotated: int            # annotation lines (or example lines for test)
    subjects: list[_Subject] = field(default_factory=list)


Segment = tuple[int, int, int]
"""(start, end, class) of one expression episode inside a subject's frames."""


def _class_pieces(total: int, share: np.ndarray, rng: np.random.Generator,
                  seg_range: tuple[int, int]) -> list[tuple[int, int]]:
    """(class, length) episodes whose lengths add up to ``total`` with the given class shares.

    Quotas instead of independent draws: a split of a few thousand frames then has the
    challenge's imbalance, and every class gets at least one episode, however rare.
    """
    lo, hi = seg_range
    lo = max(2, min(lo, total // (2 * NUM_CLASSES)))  # tiny releases: every class still fits
    hi = max(hi, lo)
    quotas = share / share.sum() * total
    pieces: list[tuple[int, int]] = []
    for cls in range(NUM_CLASSES):
        # Rare expressions come in short bursts: more, shorter episodes of the rare classes
        # also make a split's per-class F1 rest on more than one or two episodes.
        brevity = float(np.clip(np.sqrt(share[cls] / share.sum() / 0.1), RARE_BREVITY, 1.0))
        c_lo, c_hi = max(2, round(lo * brevity)), max(2, round(hi * brevity))
        remaining = max(float(quotas[cls]), float(c_lo))
        while remaining >= c_lo / 2 or not any(c == cls for c, _ in pieces):
            length = int(min(rng.integers(c_lo, c_hi + 1), max(c_lo, round(remaining))))
            pieces.append((cls, length))
            remaining -= length
    # Absorb the rounding difference in the most frequent classes (Neutral, Other).
    diff = total - sum(length for _, length in pieces)
    common = [i for i, (cls, _) in enumerate(pieces) if cls in (0, 7)]
    for i in rng.permutation(common):
        if diff == 0:
            break
        cls, length = pieces[i]
        new = int(np.clip(length + diff, max(2, lo // 2), hi * 2))
        diff -= new - length
        pieces[i] = (cls, new)
    if diff > 0:
        pieces.append((0, diff))
    while diff < 0:  # only for tiny totals: trim the longest episodes
        i = max(range(len(pieces)), key=lambda k: pieces[k][1])
        cls, length = pieces[i]
        if length <= 1:
            raise ValueError(f"{total} frames cannot hold one episode of every class")
        cut = min(-diff, length - 1)
        pieces[i] = (cls, length - cut)
        diff += cut
    return [pieces[i] for i in rng.permutation(len(pieces))]


def _deal(pieces: list[tuple[int, int]], lengths: Sequence[int]) -> list[list[Segment]]:
    """Cut one stream of episodes into consecutive subjects of the given frame counts."""
    out: list[list[Segment]] = []
    queue = list(pieces)
    for n in lengths:
        segments: list[Segment] = []
        start = 0
        while start < n:
            cls, length = queue.pop(0)
            take = min(length, n - start)
            segments.append((start, start + take, cls))
            if take < length:
                queue.insert(0, (cls, length - take))
            start += take
        out.append(segments)
    return out


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, sigma: float) -> np.ndarray:
    """Slowly varying noise with unit standard deviation (head motion, drifts)."""
    raw = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, (n + 60, dims)), sigma, axis=0,
                                    mode="reflect")[30:30 + n]
    # The filter's own gain, not the sample std: short videos must not get larger motion.
    return raw * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)


def _cue_track(segments: list[Segment], identity: sf.Identity, n: int,
               rng: np.random.Generator) -> np.ndarray:
    """Per-frame expression cues: each segment ramps up to a peak and back down."""
    cues = np.tile(np.asarray(identity.rest_cues), (n, 1))
    for start, end, cls in segments:
        length = end - start
        if cls == 0:
            target = np.zeros(sf.NUM_CUES)
            if rng.random() < 0.3:  # a faint trace of another expression
                target = sf.PROTOTYPES[rng.integers(1, 7)] * rng.uniform(0.1, 0.3)
            peak = 1.0
        else:
            target = sf.other_cues(rng) if cls == 7 else sf.PROTOTYPES[cls].copy()
            target = target + rng.normal(0.0, 0.1, sf.NUM_CUES)
            peak = rng.uniform(0.65, 1.0) * identity.expressiveness
        ramp_up = max(2, int(length * rng.uniform(0.1, 0.3)))
        ramp_down = max(2, int(length * rng.uniform(0.1, 0.3)))
        t = np.arange(length)
        env = np.clip(np.minimum((t + 1) / ramp_up, (length - t) / ramp_down), 0.0, 1.0)
        env = 0.4 + 0.6 * env * env * (3.0 - 2.0 * env)
        cues[start:end] += peak * env[:, None] * target
        if rng.random() < 0.3:  # talking: the mouth opens and closes
            period = rng.uniform(6.0, 10.0)
            cues[start:end, sf.MOUTH_OPEN] += rng.uniform(0.2, 0.4) * np.maximum(
                0.0, np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3)))
    cues += 0.07 * _smooth_noise(rng, n, sf.NUM_CUES, 10.0)
    cues += rng.normal(0.0, 0.04, cues.shape)
    for blink in np.flatnonzero(rng.random(n) < 1.0 / 90.0):
        cues[blink:blink + 3, sf.EYE_OPEN] = -1.1
    return cues


def _runs(rng: np.random.Generator, n: int, count: int, length: tuple[int, int],
          avoid: np.ndarray) -> list[tuple[int, int]]:
    """Up to ``count`` disjoint frame runs that do not touch frames where ``avoid`` is true."""
    runs: list[tuple[int, int]] = []
    taken = avoid.copy()
    for _ in range(count * 8):
        if len(runs) == count:
            break
        size = int(rng.integers(length[0], length[1] + 1))
        if size >= n - 6:
            continue
        start = int(rng.integers(3, n - size - 2))
        if not taken[start:start + size].any():
            runs.append((start, start + size))
            taken[start:start + size] = True
    return runs


PROTECTED_CLASSES = (1, 2, 3, 6)
"""Anger, Disgust, Fear, Surprise (< 6% each): runs of -1 never cover them, so every split
keeps its few episodes of these classes."""


def _make_subject(name: str, split: str, segments: list[Segment], rng: np.random.Generator,
                  slot: int, slots: int) -> _Subject:
    n_video = segments[-1][1]
    identity = sf.sample_identity(rng)
    labels = np.zeros(n_video, dtype=np.int64)
    for start, end, cls in segments:
        labels[start:end] = cls
    cues = _cue_track(segments, identity, n_video, rng)
    if split != "test":  # runs of "not annotated"
        protected = np.isin(labels, PROTECTED_CLASSES)
        longest = max(5, min(40, n_video // 8))
        for start, end in _runs(rng, n_video, int(rng.integers(0, 3)), (3, longest), protected):
            labels[start:end] = IGNORE_LABEL
    hidden: list[str | None] = [None] * n_video
    longest = max(3, min(14, n_video // 25))  # short gaps: occlusion, turning away
    gaps = int(rng.integers(1, 3)) if n_video >= 40 else int(rng.integers(0, 2))  # tiny: tests
    for start, end in _runs(rng, n_video, gaps, (2, longest), np.zeros(n_video, bool)):
        how = "hand" if rng.random() < 0.5 else "away"
        hidden[start:end] = [how] * (end - start)
    motion = np.clip(_smooth_noise(rng, n_video, 8, 12.0), -2.2, 2.2)
    poses = [sf.Pose(angle=3.0 * m[0], dx=1.5 * m[1], dy=1.5 * m[2], scale=1.0 + 0.03 * m[3])
             for m in motion]
    gain = rng.uniform(0.82, 1.12)
    gradient = rng.uniform(0.0, 0.35)
    direction = rng.uniform(0.0, 2 * np.pi)
    lights = [sf.Light(gain=gain * (1.0 + 0.04 * m[4]), gradient=gradient,
                       direction=direction + 0.3 * m[5]) for m in motion]
    base_size = 150.0 if slots == 1 else 118.0
    centre_x = FRAME_WIDTH * (slot + 0.5) / slots
    wander_x = 22.0 if slots == 1 else 6.0
    return _Subject(
        annotation_name=name, identity=identity, labels=labels, cues=cues, hidden=hidden,
        poses=poses, lights=lights,
        track_x=centre_x + wander_x * motion[:, 6],
        track_y=FRAME_HEIGHT / 2 + 4.0 + 6.0 * motion[:, 7],
        track_size=base_size * (1.0 + 0.04 * motion[:, 3]),
    )


def _frame_count(rng: np.random.Generator, split: str, scale: float) -> int:
    low, high = FRAMES_PER_SUBJECT[split]
    return max(12, round(rng.integers(low, high + 1) * scale))


def _plan(seed: int, scale: float) -> list[_Video]:
    """All videos of the release, derived from the seed alone (no I/O)."""
    videos: list[_Video] = []
    low, high = SEGMENT_FRAMES
    seg_range = (max(6, round(low * min(scale, 1.0))), max(12, round(high * min(scale, 1.0))))
    for split_id, split in enumerate(("train", "val", "test")):
        split_videos: list[_Video] = []
        slots: list[tuple[_Video, str, int, int]] = []
        for index, (name, folder, ext, fps, two_people, late, extra) in enumerate(
                _split_videos(split, scale)):
            rng = np.random.default_rng([seed, split_id, index])
            n_annotated = _frame_count(rng, split, scale)
            n_video = n_annotated + extra
            if split == "test" and index == 0:
                n_annotated = n_video - EXAMPLE_SHORTFALL
            video = _Video(name=name, split=split, folder=folder, ext=ext, fps=fps,
                           crops_dir=LATE_CROPS_DIR if late else CROPS_DIR,
                           n_video=n_video, n_annotated=n_annotated)
            split_videos.append(video)
            if two_people:
                slots += [(video, f"{name}_left", 0, 2), (video, f"{name}_right", 1, 2)]
            else:
                slots.append((video, name, 0, 1))
        share = TRAIN_CLASS_SHARE if split == "train" else VAL_CLASS_SHARE
        rng = np.random.default_rng([seed, split_id, 1000])
        lengths = [video.n_video for video, _, _, _ in slots]
        streams = _deal(_class_pieces(sum(lengths), share, rng, seg_range), lengths)
        for (video, name, slot, count), segments in zip(slots, streams, strict=True):
            video.subjects.append(_make_subject(name, split, segments, rng, slot, count))
        videos += split_videos
    return videos


# ----------------------------------------------------------------------------- writing

def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A room-like backdrop: a colour gradient with a few soft blocks (float32 RGB)."""
    top, bottom = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = np.broadcast_to(top + (bottom - top) * ramp, (height, width, 3)).copy()
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height))
        image[y0:y0 + h, x0:x0 + w] = image[y0:y0 + h, x0:x0 + w] * 0.4 + rng.uniform(
            20, 235, 3) * 0.6
    return ndimage.gaussian_filter(image, (2.0, 2.0, 0.0)).astype(np.float32)


class _NoiseBank:
    """Pre-drawn sensor noise, reused with varying offsets (drawing it per frame is slow)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, sigma: float) -> None:
        self.fields = rng.normal(0.0, sigma, (4, height + 16, width + 16, 3)).astype(np.float32)
        self.height, self.width = height, width
        self._rng = rng

    def sample(self) -> np.ndarray:
        k, dy, dx = (int(v) for v in self._rng.integers(0, [4, 16, 16]))
        return self.fields[k, dy:dy + self.height, dx:dx + self.width]


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


@contextmanager
def _video_writer(path: Path, fps: int) -> Iterator[Any]:
    """An mpeg4 encoder (bit-exact, so the same frames give the same file)."""
    import av

    container = av.open(str(path), mode="w", options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream("mpeg4", rate=fps, options={"flags": "+bitexact"})
        stream.width, stream.height, stream.pix_fmt = FRAME_WIDTH, FRAME_HEIGHT, "yuv420p"
        stream.bit_rate = 1_200_000
        stream.thread_count = 1

        def encode(frame: np.ndarray | None) -> None:
            packets = stream.encode(None if frame is None else
                                    av.VideoFrame.from_ndarray(frame, format="rgb24"))
            for packet in packets:
                container.mux(packet)

        yield encode
        encode(None)
    finally:
        container.close()


def _write_video(root: Path, video: _Video, seed: int, video_index: int) -> None:
    """Render every frame once: the video frame and the aligned crops come from the same face."""
    rng = np.random.default_rng([seed, 7, video_index])
    backdrop = _background(rng, FRAME_WIDTH, FRAME_HEIGHT)
    backdrop_image = Image.fromarray(_to_uint8(backdrop))
    frame_noise = _NoiseBank(rng, FRAME_HEIGHT, FRAME_WIDTH, rng.uniform(1.5, 3.5))
    crop_noise = _NoiseBank(rng, sf.FACE_SIZE, sf.FACE_SIZE, rng.uniform(2.0, 5.0))
    renderers = [sf.FaceRenderer(subject.identity) for subject in video.subjects]
    crop_backgrounds = [_crop_background(backdrop, subject) for subject in video.subjects]
    crop_dirs = [root / video.crops_dir / subject.annotation_name for subject in video.subjects]
    for folder in crop_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    (root / video.folder).mkdir(parents=True, exist_ok=True)
    with _video_writer(root / video.folder / f"{video.name}.{video.ext}", video.fps) as encode:
        for t in range(video.n_video):
            frame = backdrop_image.copy()
            for subject, renderer, crop_bg, crop_dir in zip(
                    video.subjects, renderers, crop_backgrounds, crop_dirs, strict=True):
                rgb, alpha = renderer.render(subject.cues[t], subject.poses[t],
                                             subject.lights[t], subject.hidden[t])
                if subject.hidden[t] is None:
                    canvas = rgb * alpha[..., None] + crop_bg * (1.0 - alpha[..., None])
                    crop = _to_uint8(sf.centre_crop(canvas) + crop_noise.sample())
                    (crop_dir / f"{t + 1:05d}.jpg").write_bytes(_jpeg_bytes(crop))
                _paste(frame, rgb, alpha, subject, t)
            encode(_to_uint8(np.asarray(frame, dtype=np.float32) + frame_noise.sample()))


def _crop_background(backdrop: np.ndarray, subject: _Subject) -> np.ndarray:
    """What lies behind the head in the video, at canvas resolution (for the aligned crops)."""
    size = float(subject.track_size.mean())
    pad = int(np.ceil(size))  # the head may reach past the frame edge
    cx, cy = float(subject.track_x.mean()) + pad, float(subject.track_y.mean()) + pad
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    padded = np.pad(_to_uint8(backdrop), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    image = Image.fromarray(padded).resize((sf.CANVAS_SIZE, sf.CANVAS_SIZE),
                                           Image.Resampling.BILINEAR, box=box)
    return np.asarray(image, dtype=np.float32)


def _paste(frame: Image.Image, rgb: np.ndarray, alpha: np.ndarray, subject: _Subject,
           t: int) -> None:
    size = max(8, round(float(subject.track_size[t])))
    rgba = np.concatenate([_to_uint8(rgb), _to_uint8(alpha * 255.0)[..., None]], axis=-1)
    face = Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.BILINEAR)
    left = round(float(subject.track_x[t]) - size / 2)
    top = round(float(subject.track_y[t]) - size / 2)
    frame.paste(face, (left, top), face)


def _write_annotations(root: Path, video: _Video) -> None:
    for subject in video.subjects:
        folder = root / ANNOTATION_DIR / SPLIT_DIRS[video.split]
        folder.mkdir(parents=True, exist_ok=True)
        lines = [ANNOTATION_HEADER, *(str(int(v)) for v in subject.labels[:video.n_annotated])]
        (folder / f"{subject.annotation_name}.txt").write_text("\n".join(lines) + "\n")


def _write_test_files(root: Path, test_videos: list[_Video]) -> None:
    names = [s.annotation_name for v in test_videos for s in v.subjects]
    (root / TEST_LIST_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / TEST_LIST_FILE).write_text("\n".join(names) + "\n")
    example, hidden = [SUBMISSION_HEADER], [SUBMISSION_HEADER]
    for video in test_videos:
        for subject in video.subjects:
            for t in range(video.n_annotated):
                location = f"{subject.annotation_name}/{t + 1:05d}.jpg"
                example.append(f"{location},")
                hidden.append(f"{location},{int(subject.labels[t])}")
    (root / TEST_EXAMPLE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / TEST_EXAMPLE_FILE).write_text("\n".join(example) + "\n")
    (root / TEST_LABELS_FILE).write_text("\n".join(hidden) + "\n")


_UNLABELED_STREAMS = {"folder": (11, 900), "recordio": (12, 2100)}
"""Unlabelled source -> (seed stream, images at scale 1)."""


def _photos_per_person(seed: int, source: str, scale: float) -> list[int]:
    """How many photos each unlabelled person of ``source`` has (planning only, no render)."""
    stream, images = _UNLABELED_STREAMS[source]
    count = max(20 if source == "folder" else 40, round(images * scale))
    rng = np.random.default_rng([seed, stream, 0])
    low, high = UNLABELED_PER_IDENTITY
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(min(int(rng.integers(low, high + 1)), count - sum(sizes)))
    return sizes


def _unlabeled_plan_counts(seed: int, scale: float) -> dict[str, int]:
    """Images and people of all unlabelled sources together (no rendering)."""
    sizes = [n for source in _UNLABELED_STREAMS for n in _photos_per_person(seed, source, scale)]
    return {"images": sum(sizes), "identities": len(sizes)}


def _unlabeled_faces(seed: int, source: str, scale: float) -> Iterator[tuple[int, int, bytes]]:
    """Face-recognition-style images: (identity id, class drawn, JPEG bytes), a few photos
    per person."""
    rng = np.random.default_rng([seed, _UNLABELED_STREAMS[source][0]])
    noise = _NoiseBank(rng, sf.FACE_SIZE, sf.FACE_SIZE, 3.0)
    probs = UNLABELED_CLASS_SHARE / UNLABELED_CLASS_SHARE.sum()
    for identity_id, photos in enumerate(_photos_per_person(seed, source, scale)):
        identity = sf.sample_identity(rng)
        renderer = sf.FaceRenderer(identity)
        for _ in range(photos):
            cls = int(rng.choice(NUM_CLASSES, p=probs))
            target = sf.other_cues(rng) if cls == 7 else sf.PROTOTYPES[cls]
            cues = (np.asarray(identity.rest_cues) + rng.uniform(0.3, 1.0) * target
                    + rng.normal(0.0, 0.08, sf.NUM_CUES))
            pose = sf.Pose(angle=rng.normal(0, 4), dx=rng.normal(0, 1.5), dy=rng.normal(0, 1.5),
                           scale=1.0 + rng.normal(0, 0.03))
            light = sf.Light(gain=rng.uniform(0.75, 1.15), gradient=rng.uniform(0, 0.4),
                             direction=rng.uniform(0, 2 * np.pi))
            rgb, alpha = renderer.render(cues, pose, light)
            backdrop = rng.uniform(20, 235, 3).astype(np.float32)
            canvas = rgb * alpha[..., None] + backdrop * (1.0 - alpha[..., None])
            yield identity_id, cls, _jpeg_bytes(
                _to_uint8(sf.centre_crop(canvas) + noise.sample()))


def _write_unlabeled(root: Path, seed: int, scale: float) -> dict[str, int]:
    from abaw_kit.unlabeled.images import content_hash
    from abaw_kit.unlabeled.recordio import write_recordio

    folder_root = root / UNLABELED_FOLDER
    per_identity: dict[int, int] = {}
    hidden = ["path,label,hash"]
    for identity_id, cls, jpeg in _unlabeled_faces(seed, "folder", scale):
        index = per_identity.get(identity_id, 0)
        per_identity[identity_id] = index + 1
        person = folder_root / f"{identity_id:05d}"
        person.mkdir(parents=True, exist_ok=True)
        (person / f"{index:03d}.jpg").write_bytes(jpeg)
        hidden.append(f"{UNLABELED_FOLDER}/{identity_id:05d}/{index:03d}.jpg,{cls},"
                      f"{content_hash(jpeg).hex()}")
    images: list[bytes] = []
    ids: list[float] = []
    for identity_id, cls, jpeg in _unlabeled_faces(seed, "recordio", scale):
        hidden.append(f"{UNLABELED_RECORDIO}/train.rec#{len(images)},{cls},"
                      f"{content_hash(jpeg).hex()}")
        images.append(jpeg)
        ids.append(float(identity_id))
    (root / UNLABELED_LABELS_FILE).write_text("\n".join(hidden) + "\n")
    rec_root = root / UNLABELED_RECORDIO
    rec_root.mkdir(parents=True, exist_ok=True)
    write_recordio(rec_root / "train.rec", rec_root / "train.idx", images, ids)
    num_ids = int(max(ids)) + 1
    (rec_root / "property").write_text(f"{num_ids},{sf.FACE_SIZE},{sf.FACE_SIZE}\n")
    return {"folder_images": sum(per_identity.values()), "folder_identities": len(per_identity),
            "recordio_images": len(images), "recordio_identities": num_ids}


def _split_counts(videos: list[_Video]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        chosen = [v for v in videos if v.split == split]
        labels = np.concatenate([s.labels[:v.n_annotated] for v in chosen for s in v.subjects])
        faces = sum(sum(h is None for h in s.hidden[:v.n_annotated])
                    for v in chosen for s in v.subjects)
        counts[split] = {
            "videos": len(chosen),
            "annotation_files": sum(len(v.subjects) for v in chosen),
            "frames": int(len(labels)),
            "frames_with_face": int(faces),
            "labelled_frames": int((labels >= 0).sum()),
            "class_counts": np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).tolist(),
        }
    return counts


def _video_info(video: _Video) -> dict[str, Any]:
    return {
        "split": video.split, "file": f"{video.folder}/{video.name}.{video.ext}",
        "fps": video.fps, "video_frames": video.n_video, "annotated_frames": video.n_annotated,
        "crops_dir": video.crops_dir,
        "subjects": [s.annotation_name for s in video.subjects],
    }


def _write_release(root: Path, seed: int, scale: float, progress: bool) -> None:
    videos = _plan(seed, scale)
    steps = len(videos) + 1
    with step_bar(progress, "demo data", steps) as advance, _pool() as pool:
        # Every job draws from its own seeded generator, so the bytes do not depend on the
        # number of processes or the order in which jobs finish.
        unlabeled_job = pool.submit(_write_unlabeled, root, seed, scale)
        jobs = {pool.submit(_write_video, root, video, seed, index): video
                for index, video in enumerate(videos)}
        for job in as_completed(jobs):
            job.result()
            advance(f"video {jobs[job].name}")
        for video in videos:
            if video.split != "test":
                _write_annotations(root, video)
        _write_test_files(root, [v for v in videos if v.split == "test"])
        unlabeled = unlabeled_job.result()
        advance("unlabelled faces")
    info = {
        "seed": seed, "version": DEMO_VERSION, "scale": scale,
        # the module's name when DEMO_VERSION 3 was made, kept so the release stays byte-identical
        "generator": "abaw_kit.data.demo",
        "counts": {**_split_counts(videos), "unlabeled": unlabeled},
        "test_labels": TEST_LABELS_FILE,
        "videos": {v.name: _video_info(v) for v in videos},
        "files": _file_sizes(root),
    }
    (root / DEMO_MARKER).write_text(json.dumps(info, indent=2) + "\n")


@contextmanager
def _pool() -> Iterator[Executor]:
    """Processes for the rendering (one per core, at most ``GENERATION_PROCESSES``)."""
    workers = max(1, min(GENERATION_PROCESSES, len(os.sched_getaffinity(0))))
    if workers == 1:
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield pool
        return
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool
