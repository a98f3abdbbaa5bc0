"""Reading video files with decord: sequential chunks and frame counts that survive broken files.

Why sequential ``next()`` and not ``get_batch``: decoding in order never seeks, which is about
four times faster on mpeg4/h264 than ``get_batch`` on consecutive indices (measured here) and
avoids the seek-near-the-end stalls that decord shows on some damaged files. Why never trust
``len(reader)``: it counts demuxed packets, and a truncated or damaged file can list frames that
do not decode; the reader stops at the first frame that fails and says how many it produced.

Where decord stops but the file is fine, PyAV decodes the rest: decord's threaded decoder gives
up on some HEVC files with EAGAIN ("Error sending packet", -11) after 26-30 of 169 frames of a
phone .mov that PyAV (the same ffmpeg) decodes to the end (tests/test_faces_real.py).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from abaw_kit.errors import AbawError

DEFAULT_CHUNK = 64
TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf"})
"""ffmpeg demuxers that render text (.txt, .nfo, .asc, ANSI art) as 640x400 frames."""


@functools.cache
def _import_decord() -> ModuleType:
    """Import decord, torch first, and silence ffmpeg's per-macroblock complaints.

    Why torch first: decord2 dlopens every library of the ``nvidia`` pip packages with
    RTLD_GLOBAL, libnvblas included; when that happens before torch is loaded, torch's matrix
    products resolve to NVBLAS and crash the process (measured: segfault in the first conv on a
    CPU-only machine). Loaded after torch, it is harmless. Damage is reported via our counters.
    """
    import torch  # noqa: F401  (load order, see above)

    decord = importlib.import_module("decord")
    decord.logging.set_level(decord.logging.QUIET)
    return decord


def _refuse_non_video(path: Path) -> None:
    """Refuse files that ffmpeg opens but that hold no video: it renders a text file as a
    25 fps video (`abaw predict notes.txt` "predicted" 13 frames) and a photo as one frame.

    Files PyAV cannot open are left to decord, whose error then names the reason.
    """
    import av

    try:
        with av.open(str(path)) as container:
            kind = container.format.name
            streams = list(container.streams.video)
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        return
    if kind in TEXT_FORMATS:
        raise AbawError(f"cannot decode video {path}: it is a text file (ffmpeg reads it as "
                        f"'{kind}' text art), not a video")
    if kind == "image2" or kind.endswith("_pipe"):
        raise AbawError(f"cannot decode video {path}: it is a still image ('{kind}'), "
                        "not a video")
    if not streams:
        raise AbawError(f"cannot decode video {path}: no video stream in the '{kind}' file")


def _open_reader(path: Path, num_threads: int):
    """Open a decord reader or raise the one-line error the CLI shows."""
    if not path.exists():
        raise AbawError(f"cannot decode video {path}: file not found")
    if not path.is_file():
        raise AbawError(f"cannot decode video {path}: not a regular file (a folder or device)")
    _refuse_non_video(path)
    decord = _import_decord()
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AbawError(f"cannot decode video {path}: {reason}") from exc


def check_video(path: str | Path) -> None:
    """Raise the one-line AbawError unless ``path`` opens as a video (cheap: nothing decoded),
    so a batch can refuse a bad input before any model is loaded."""
    _open_reader(Path(path), num_threads=1)


def video_frame_count(path: str | Path) -> int | None:
    """The frame count the container reports (demuxed packets, no decoding); None when it has
    none or the file cannot be opened (a summary reports that; ``iter_video_frames`` says why).

    It can exceed the decodable frames of a damaged file; ``VideoFrames.decoded`` is the truth.
    """
    try:
        reader = _open_reader(Path(path), num_threads=1)
    except AbawError:
        return None
    count = len(reader)
    return count if count > 0 else None


def _rgb(frame: np.ndarray) -> np.ndarray:
    """Undo a decord quirk: for some widths (48, 96, ...) it returns the padded RGB rows as an
    [H,W,4] array (row stride 4*W bytes, RGB in the first 3*W); other shapes are errors."""
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        height, width = frame.shape[:2]
        rows = np.ascontiguousarray(frame).reshape(height, -1)[:, : 3 * width]
        return np.ascontiguousarray(rows.reshape(height, width, 3))
    raise RuntimeError(f"decoded frame has shape {frame.shape}, expected [H,W,3]")


def video_fps(path: str | Path) -> float | None:
    """The container's average frame rate; None when it reports none or cannot be opened."""
    try:
        reader = _open_reader(Path(path), num_threads=1)
    except AbawError:
        return None
    fps = float(reader.get_avg_fps())
    return fps if fps > 0 and np.isfinite(fps) else None


class VideoFrames(Iterator[tuple[int, np.ndarray]]):
    """Iterator over ``(start_index, frames uint8 [n,H,W,3] RGB)`` chunks of one video.

    After (or during) iteration: ``decoded`` is the number of frames produced so far,
    ``expected`` the container's count, ``error`` the reason decoding stopped early (None when
    the stream simply ended or ``max_frames`` was reached).
    """

    def __init__(self, path: str | Path, chunk: int = DEFAULT_CHUNK,
                 max_frames: int | None = None, num_threads: int = 0) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.path = Path(path)
        self.chunk = chunk
        self.max_frames = max_frames
        self._reader = _open_reader(self.path, num_threads)
        self.expected: int | None = len(self._reader) or None
        self.decoded = 0
        self.error: str | None = None
        self.fallback: str | None = None  # why PyAV took over from decord, and where
        self._finished = False
        self._position = 0  # frames produced by _next_frame
        self._pyav: Iterator[np.ndarray] | None = None

    @property
    def truncated(self) -> bool:
        """True when decoding stopped on a damaged frame before the reported end."""
        return self.error is not None

    def _next_frame(self) -> np.ndarray | None:
        frame = self._next_pyav_frame() if self._pyav is not None else self._next_decord_frame()
        if frame is not None:
            self._position += 1
        return frame

    def _next_decord_frame(self) -> np.ndarray | None:
        decord = _import_decord()
        try:
            return _rgb(self._reader.next().asnumpy())
        except StopIteration:
            return None
        except (RuntimeError, decord.DECORDError, IndexError) as exc:
            message = str(exc).strip().splitlines()
            reason = message[0].rsplit("] ", 1)[-1] if message else type(exc).__name__
            self.error = f"frame {self._position + 1} failed to decode: {reason}"
            self._reader = None
            self._pyav = _pyav_frames(self.path, skip=self._position)
            frame = self._next_pyav_frame()
            if frame is not None:
                self.error = None
                self.fallback = (f"decord stopped at frame {self._position + 1} ({reason}); "
                                 "PyAV decoded the rest")
            return frame

    def _next_pyav_frame(self) -> np.ndarray | None:
        import av

        assert self._pyav is not None
        try:
            return next(self._pyav)
        except StopIteration:
            return None
        except (av.FFmpegError, OSError, ValueError) as exc:
            if self.error is None:
                self.error = f"frame {self._position + 1} failed to decode: {exc}".splitlines()[0]
            return None

    def __next__(self) -> tuple[int, np.ndarray]:
        if self._finished:
            raise StopIteration
        limit = self.chunk
        if self.max_frames is not None:
            limit = min(limit, self.max_frames - self.decoded)
        frames: list[np.ndarray] = []
        while len(frames) < limit:
            frame = self._next_frame()
            if frame is None:
                self._finished = True
                break
            frames.append(frame)
        if self.max_frames is not None and self.decoded + len(frames) >= self.max_frames:
            self._finished = True
        if not frames:
            self._finished = True
            self._reader = None
            raise StopIteration
        start = self.decoded
        self.decoded += len(frames)
        return start, np.stack(frames)


def _pyav_frames(path: Path, skip: int) -> Iterator[np.ndarray]:
    """RGB frames of ``path`` decoded in order by PyAV, the first ``skip`` dropped."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index >= skip:
                yield frame.to_ndarray(format="rgb24")


def iter_video_frames(path: str | Path, chunk: int = DEFAULT_CHUNK,
                      max_frames: int | None = None, num_threads: int = 0) -> VideoFrames:
    """Decode ``path`` in order, ``chunk`` frames at a time, stopping cleanly at damage.

    Raises AbawError when the file cannot be opened at all (missing, not a video, no index).
    """
    return VideoFrames(path, chunk=chunk, max_frames=max_frames, num_threads=num_threads)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 25,
                codec: str = "mpeg4", bit_rate: int = 4_000_000, faststart: bool = False) -> int:
    """Encode RGB uint8 frames [H,W,3] (even H and W) with PyAV; returns the frame count.

    For generated test and demo videos. ``faststart`` puts the mp4 index first, as streaming
    encoders do, so that a truncated copy still opens.
    """
    import av

    options = {"movflags": "faststart"} if faststart else {}
    count = 0
    with av.open(str(path), mode="w", options=options) as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.bit_rate = bit_rate
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(image))
            count += 1
        if stream is not None:
            container.mux(stream.encode(None))
    return count
