"""Per-frame embeddings of a run (``abaw embed``), and the reader a temporal model trains from.

An embedding is the backbone's pooled feature vector before the classifier (timm's
``forward_features`` + ``forward_head(pre_logits=True)``), computed from the run's EMA
weights with the run's normalisation and input size, for every frame with a face.

Layout of ``<run>/embeddings/<split>/`` (the folder: ``RunDir.embeddings``, abaw_kit.run_dir)::

    <shard>.npy    float16 [faces_in_video, dim], one per video of the face store, named like
                   its face shard; row i belongs to the video's i-th frame with a face
    record.json    what they were computed from: run, checkpoint file + sha256, backbone, dim,
                   sha256 of the face store's index.parquet; ``complete`` once all are written

Why per video and memory-mapped: a temporal model reads windows of consecutive frames of one
video, so nothing has to hold a split in memory. Why the record: a rerun keeps a video only
when its file is whole and the record names the same run, checkpoint, backbone and face
store (resume after a kill); anything else is deleted before new files appear (the record
goes first, and returns with ``complete: false`` before the first video), so files of two
checkpoints never mix, and the reader refuses embeddings that no longer match the run.
The reader needs neither torch nor the model; torch is imported only to compute embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from abaw_kit.data.store import FACE_SIZE, FaceStore, npy_array_problem
from abaw_kit.errors import AbawError
from abaw_kit.run_dir import RunDir
from abaw_kit.workspace import SPLITS, Workspace, atomic_path, atomic_write_json, check_split

if TYPE_CHECKING:
    import torch
    from torch import nn

    from abaw_kit.infer import LoadedModel

FORMAT = "abaw-kit-embeddings-1"
RECORD = "record.json"
DTYPE = np.dtype(np.float16)
IDENTITY = ("format", "run", "checkpoint", "checkpoint_sha256", "backbone",
            "store_index_sha256")
"""Record fields that must match for embeddings to count as this run's (``dim`` follows)."""
_LABELS = {"run": "run", "checkpoint": "checkpoint", "checkpoint_sha256": "checkpoint sha256",
           "backbone": "backbone", "store_index_sha256": "face-store index sha256",
           "format": "format"}
_WRITES_IN_FLIGHT = 2  # whole videos queued for the writer thread: bounds host memory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's input (timm's pre-logits), as float16: half the bytes to copy out."""
    return model.forward_head(model.forward_features(x), pre_logits=True).half()


@dataclass(frozen=True)
class _Video:
    name: str
    shard: str
    rows: np.ndarray  # index rows of all its frames, in order

    def file(self, folder: Path) -> Path:
        return folder / f"{self.shard}.npy"


def _videos(store: FaceStore) -> list[_Video]:
    """The store's videos in index order (one face shard, hence one embeddings file, each)."""
    index = store.index
    groups = index.groupby("video", sort=False).indices
    shards = index["shard"].to_numpy()
    return [_Video(str(name), str(shards[rows[0]]), np.asarray(rows, np.int64))
            for name, rows in groups.items()]


def read_record(folder: Path) -> dict[str, Any] | None:
    """The split's record, or None when missing or unreadable (the writer redoes the split)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# -- writing -----------------------------------------------------------------------------------


def embed_run(work: Workspace, run: str | None = None, splits: Sequence[str] | None = None, *,
              device: str = "auto", batch_size: int | None = None, force: bool = False,
              progress: bool = False, log: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Embed every frame with a face of ``splits`` (default: every split with a face store)."""
    from abaw_kit.infer import load_run_model

    say = log or (lambda _m: None)
    run_dir = RunDir(work.run_dir(run))
    if splits:
        names = list(dict.fromkeys(check_split(s) for s in splits))
    else:
        names = [s for s in SPLITS if (work.store_dir(s) / "index.parquet").is_file()]
        if not names:
            raise AbawError(f"no face store in {work.root / 'faces'}; run `abaw prepare` first")
    stores = {split: FaceStore(work.store_dir(split)) for split in names}  # fail before the model
    loaded = load_run_model(run_dir, device=device)
    if loaded.note:
        say(loaded.note)
    dim = feature_dim(loaded)
    identity = {"format": FORMAT, "run": run_dir.name, "checkpoint": loaded.checkpoint.name,
                "checkpoint_sha256": file_sha256(loaded.checkpoint),
                "backbone": loaded.cfg.model.backbone}
    result: dict[str, Any] = {
        "run": run_dir.name, "checkpoint": str(loaded.checkpoint), "step": loaded.step,
        "checkpoint_sha256": identity["checkpoint_sha256"], "backbone": identity["backbone"],
        "dim": dim, "device": str(loaded.device), "splits": {}}
    for split, store in stores.items():
        key = {**identity, "store_index_sha256": store.index_sha256(), "dim": dim}
        result["splits"][split] = embed_split(loaded, store, run_dir.embeddings(split),
                                              key, split=split, batch_size=batch_size,
                                              force=force, progress=progress, log=say)
    return result


def feature_dim(loaded: LoadedModel) -> int:
    """D of the pooled features, from one blank face (also for splits without any face)."""
    import torch

    blank = torch.zeros((1, FACE_SIZE, FACE_SIZE, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = pooled_features(loaded.model, loaded.normalize(blank))
    if out.ndim != 2:
        raise AbawError(f"backbone {loaded.cfg.model.backbone}: pooled features have shape "
                        f"{tuple(out.shape)}, expected [batch, dim]")
    return int(out.shape[1])


def embed_split(loaded: LoadedModel, store: FaceStore, folder: Path, key: dict[str, Any], *,
                split: str, batch_size: int | None = None, force: bool = False,
                progress: bool = False, log: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Write the embeddings of one split into ``folder``, keeping whole videos of the same key."""
    import torch

    from abaw_kit.infer import stream_rows

    dim, say = int(key["dim"]), log or (lambda _m: None)
    videos = _videos(store)
    record = read_record(folder)
    same = record is not None and all(record.get(k) == key[k] for k in (*IDENTITY, "dim"))
    rewritten = None
    if force or not same:
        if record is not None or any(folder.glob("*.npy")):
            rewritten = ("--force" if force and same else
                         _differences(record, key) if record else "no readable record")
            say(f"embeddings of {split}: redoing them ({rewritten})")
        _clear(folder)
    _sweep_temporary(folder)
    has_face = store.index["has_face"].to_numpy(bool)
    todo = [v for v in videos if npy_array_problem(
        v.file(folder), DTYPE, (int(has_face[v.rows].sum()), dim)) is not None]
    face_rows = [v.rows[has_face[v.rows]] for v in todo]
    frames = int(sum(len(r) for r in face_rows))
    report = {"dir": str(folder), "videos": len(videos), "videos_embedded": len(todo),
              "videos_skipped_done": len(videos) - len(todo), "frames_embedded": frames,
              "frames_with_face": int(has_face.sum()), "dim": dim, "rewritten": rewritten}
    if same and not force and not todo and record is not None and record.get("complete"):
        return report  # all done: write nothing, so readers never see it incomplete
    base = {**key, "split": split, "dtype": str(DTYPE), "videos": len(videos),
            "frames_with_face": report["frames_with_face"]}
    atomic_write_json(folder / RECORD, {**base, "complete": False})  # before any video
    with _VideoWriter(folder, dim) as writer:
        cutter = _VideoCutter(todo, [len(r) for r in face_rows], writer.put)

        def consume(pending: list[torch.Tensor]) -> None:
            cutter.feed(torch.cat(pending).cpu().numpy())

        cutter.flush_empty()
        rows = np.concatenate(face_rows) if face_rows else np.empty(0, np.int64)
        stream_rows(loaded.model, loaded.normalize, store, rows, consume,
                    head=pooled_features, batch_size=batch_size, amp_dtype=loaded.amp_dtype,
                    progress=progress, description=f"embed {split}")
        cutter.finish()
    atomic_write_json(folder / RECORD, {**base, "complete": True, "step": loaded.step,
                                        "computed_on": str(loaded.device),
                                        "amp": str(loaded.amp_dtype) if loaded.amp_dtype
                                        else None})
    return report


def _differences(record: dict[str, Any], key: dict[str, Any]) -> str:
    """"checkpoint sha256 '1a2b3c4d5e6f' (embeddings) vs '9f8e7d6c5b4a' (now)", for each
    field of ``key`` that differs."""
    parts = []
    for field in (f for f in (*IDENTITY, "dim") if f in key):
        old, new = record.get(field), key.get(field)
        if old != new:
            shown = [v[:12] if isinstance(v, str) and field.endswith("sha256") else v
                     for v in (old, new)]
            parts.append(f"{_LABELS.get(field, field)} {shown[0]!r} (embeddings) vs "
                         f"{shown[1]!r} (now)")
    return "; ".join(parts) or "same record"


def _clear(folder: Path) -> None:
    """Remove a split's embeddings, the record first: a kill midway leaves no usable claim
    (temporary files: ``_sweep_temporary``, which every run calls next)."""
    (folder / RECORD).unlink(missing_ok=True)
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and path.suffix == ".npy":
                path.unlink(missing_ok=True)


def _sweep_temporary(folder: Path) -> None:
    """Temporary files a killed run left (atomic_path names them with a leading dot)."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and path.name.startswith("."):
                path.unlink(missing_ok=True)


class _VideoCutter:
    """Cuts the stream of embedding rows (the faces of ``videos``, in order) into whole videos."""

    def __init__(self, videos: list[_Video], faces: list[int],
                 put: Callable[[_Video, np.ndarray], None]) -> None:
        self.videos, self.faces, self.put = videos, faces, put
        self.current, self.have = 0, 0  # the video being filled; its rows so far
        self.pieces: list[np.ndarray] = []

    def flush_empty(self) -> None:
        """Videos without a face (at the front, or after a finished one) get [0, dim] files."""
        while self.current < len(self.videos) and self.faces[self.current] == 0:
            self.put(self.videos[self.current], np.empty((0, 0), DTYPE))
            self.current += 1

    def feed(self, block: np.ndarray) -> None:
        if not np.isfinite(block).all():
            name = self.videos[min(self.current, len(self.videos) - 1)].name
            raise AbawError(f"non-finite embeddings near video {name} (float16 overflow or a "
                            "diverged checkpoint); check the run's validation F1")
        while len(block):
            self.flush_empty()
            need = self.faces[self.current] - self.have
            take, block = block[:need], block[need:]
            self.pieces.append(take)
            self.have += len(take)
            if self.have == self.faces[self.current]:
                self.put(self.videos[self.current], np.concatenate(self.pieces))
                self.current, self.pieces, self.have = self.current + 1, [], 0
        self.flush_empty()

    def finish(self) -> None:
        self.flush_empty()
        if self.current != len(self.videos):
            raise RuntimeError(f"embedding stream ended at video {self.current} of "
                               f"{len(self.videos)}")  # a bug, not bad input


class _VideoWriter:
    """Saves videos atomically on one background thread, so fsync never stalls the model."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder, self.dim = folder, dim
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-write")
        self.pending: deque[Future[None]] = deque()

    def __enter__(self) -> _VideoWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def put(self, video: _Video, array: np.ndarray) -> None:
        array = array.reshape(len(array), self.dim)
        self.pending.append(self.pool.submit(self._save, video.file(self.folder), array))
        while len(self.pending) > _WRITES_IN_FLIGHT:
            self.pending.popleft().result()

    @staticmethod
    def _save(path: Path, array: np.ndarray) -> None:
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(array, dtype=DTYPE))

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if exc_type is None:
                    future.result()
                else:
                    future.exception()  # wait; the error in flight is the one to report
        finally:
            self.pool.shutdown(wait=True)


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoEmbeddings:
    """One video: all its frames (as in the face store) and the embeddings of those with a face.

    ``embeddings[i]`` belongs to ``frames[has_face][i]``; frames without a face have none.
    """

    video: str
    rows: np.ndarray  # int64 [n] rows of the face store's index
    frames: np.ndarray  # int64 [n]
    has_face: np.ndarray  # bool [n]
    labels: np.ndarray  # int64 [n], -1 where unlabelled
    embeddings: np.ndarray  # float16 [has_face.sum(), dim], memory-mapped


class EmbeddingStore:
    """Read side of one split's embeddings; checked on opening against the run as it is now.

    Opening hashes the run's checkpoint and the face store's index and reads every file's
    header (cheap), so embeddings of another run, backbone, checkpoint or store, or a damaged
    file, fail here with one line rather than inside training.
    """

    def __init__(self, run_dir: str | Path | RunDir, store: FaceStore,
                 split: str | None = None) -> None:
        run_dir = RunDir(run_dir)
        self.split = check_split(split or store.split_dir.name)
        self.store, self.run = store, run_dir.name
        self.folder = run_dir.embeddings(self.split)
        redo = f"run `abaw embed --run {self.run}`"
        record = read_record(self.folder)
        if record is None:
            what = "damaged" if (self.folder / RECORD).exists() else "missing"
            raise AbawError(f"no embeddings of split '{self.split}' for run '{self.run}' "
                            f"({self.folder / RECORD} is {what}); {redo} first")
        if not record.get("complete"):
            raise AbawError(f"the embeddings of split '{self.split}' in {self.folder} are "
                            f"incomplete (abaw embed stopped before the end); {redo} to finish")
        now = _run_identity(run_dir, record, store)
        if any(record.get(k) != now[k] for k in IDENTITY):
            raise AbawError(f"the embeddings in {self.folder} were not made by run "
                            f"'{self.run}' as it is now: {_differences(record, now)}; "
                            f"{redo} to redo them")
        self.record, self.dim = record, int(record["dim"])
        self._frames = store.index["frame"].to_numpy(np.int64)
        self._has_face = store.index["has_face"].to_numpy(bool)
        self._labels = store.index["label"].to_numpy(np.int64)
        self._videos = {v.name: v for v in _videos(store)}
        for video in self._videos.values():
            path = video.file(self.folder)
            faces = int(self._has_face[video.rows].sum())
            problem = npy_array_problem(path, DTYPE, (faces, self.dim))
            if problem is not None:
                raise AbawError(f"embeddings file {path} (video {video.name}) {problem}; "
                                f"{redo}, which redoes it")

    @classmethod
    def open(cls, work: Workspace, split: str, run: str | None = None) -> EmbeddingStore:
        """The embeddings of ``split`` for run ``run`` (default: the latest run)."""
        return cls(work.run_dir(run), FaceStore(work.store_dir(split)), split)

    @property
    def videos(self) -> list[str]:
        return list(self._videos)

    def __len__(self) -> int:
        return len(self._videos)

    def __iter__(self) -> Iterator[VideoEmbeddings]:
        return (self.video(name) for name in self._videos)

    def video(self, name: str) -> VideoEmbeddings:
        entry = self._videos.get(name)
        if entry is None:
            raise KeyError(f"video {name!r} is not in split '{self.split}'")
        return VideoEmbeddings(
            video=name, rows=entry.rows, frames=self._frames[entry.rows],
            has_face=self._has_face[entry.rows], labels=self._labels[entry.rows],
            embeddings=np.load(entry.file(self.folder), mmap_mode="r"))


def _run_identity(run_dir: RunDir, record: dict[str, Any], store: FaceStore
                  ) -> dict[str, Any]:
    """The identity fields of the run as it is now, without torch: the checkpoint the record
    names must still exist with the same bytes (a resumed run rotates its step files and may
    write a new best), and config.yaml names the backbone."""
    name = str(record.get("checkpoint", ""))
    path = run_dir.checkpoints / name
    sha = file_sha256(path) if name and path.is_file() else "missing"
    return {"format": FORMAT, "run": run_dir.name, "checkpoint": name, "checkpoint_sha256": sha,
            "backbone": _config_backbone(run_dir), "store_index_sha256": store.index_sha256()}


def _config_backbone(run_dir: RunDir) -> str | None:
    """``model.backbone`` of the run's config.yaml, read as plain YAML: ``load_config``
    validates ``ssl.params`` by building the method's threshold, which imports torch."""
    config = run_dir.require_config()
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AbawError(f"{config} cannot be read ({exc}); pass another --run") from None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("backbone") if isinstance(model, dict) else None
