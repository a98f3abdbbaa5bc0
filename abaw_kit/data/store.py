"""The face store: every frame of a split as 112x112 RGB uint8, read at memory speed.

On disk, per split (``<work>/faces/<split>/``)::

    shards/<video>.npy       uint8 [faces_in_video, 112, 112, 3], one per annotation file
    shards/<video>.parquet   that video's frames: frame, label, has_face, offset
    index.parquet            all videos concatenated (+ column ``shard``): what readers use
    meta.json                split, source, counts

Why shards per video: ``prepare`` can resume after a crash by skipping videos whose shard
exists (each shard is written atomically), and nothing has to be copied into one giant file
at the end; readers memory-map the shards lazily.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_kit.errors import AbawError
from abaw_kit.workspace import atomic_path, atomic_write_json

FACE_SIZE = 112
INDEX_COLUMNS = ("video", "frame", "label", "has_face", "shard", "offset")


def shard_name(video: str) -> str:
    """A file-system-safe shard name for a video name (names come from data files)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video).lstrip(".")
    return safe or "_"


class FaceStoreWriter:
    """Writes one split's store video by video; each video is atomic, so reruns resume."""

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        self.shard_dir = self.split_dir / "shards"

    def is_done(self, video: str) -> bool:
        name = shard_name(video)
        return (self.shard_dir / f"{name}.parquet").is_file() and (
            self.shard_dir / f"{name}.npy").is_file()

    def write_video(self, video: str, frames: np.ndarray, labels: np.ndarray,
                    has_face: np.ndarray, faces: np.ndarray) -> None:
        """Store one video: ``faces`` holds only the frames where ``has_face`` is true, in order."""
        frames = np.asarray(frames, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        has_face = np.asarray(has_face, dtype=bool)
        faces = np.asarray(faces, dtype=np.uint8).reshape(-1, FACE_SIZE, FACE_SIZE, 3)
        if not (len(frames) == len(labels) == len(has_face)):
            raise ValueError(f"{video}: frames, labels and has_face differ in length")
        if int(has_face.sum()) != len(faces):
            raise ValueError(f"{video}: {int(has_face.sum())} frames with a face but "
                             f"{len(faces)} face images")
        offset = np.full(len(frames), -1, dtype=np.int64)
        offset[has_face] = np.arange(len(faces))
        name = shard_name(video)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.shard_dir / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, faces)
        table = pd.DataFrame({"video": video, "frame": frames, "label": labels,
                              "has_face": has_face, "shard": name, "offset": offset})
        with atomic_path(self.shard_dir / f"{name}.parquet", suffix=".parquet") as tmp:
            table.to_parquet(tmp, index=False)

    def finalize(self, videos: list[str], meta: dict[str, Any]) -> pd.DataFrame:
        """Join the per-video tables (in ``videos`` order) into ``index.parquet``."""
        parts = [pd.read_parquet(self.shard_dir / f"{shard_name(v)}.parquet") for v in videos]
        if parts:
            index = pd.concat(parts, ignore_index=True)
        else:
            index = pd.DataFrame({c: pd.Series(dtype="int64") for c in INDEX_COLUMNS})
        with atomic_path(self.split_dir / "index.parquet", suffix=".parquet") as tmp:
            index.to_parquet(tmp, index=False)
        atomic_write_json(self.split_dir / "meta.json", {**meta, **store_counts(index)})
        self._sweep_leftovers()
        return index

    def _sweep_leftovers(self) -> None:
        """Remove temporary shard files a killed run left behind (shard names never start
        with a dot, temporary files always do): a resumed store is as clean as a fresh one."""
        if self.shard_dir.is_dir():
            for leftover in self.shard_dir.glob(".*"):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)


def store_counts(index: pd.DataFrame) -> dict[str, int]:
    labelled = index["label"] >= 0
    return {
        "videos": int(index["video"].nunique()),
        "frames": len(index),
        "frames_with_face": int(index["has_face"].sum()),
        "labelled_frames": int(labelled.sum()),
        "labelled_frames_with_face": int((labelled & index["has_face"]).sum()),
    }


class FaceStore:
    """Read side of a split's store. Rows are positions in ``index`` (all frames, in order).

    Safe to hand to DataLoader workers: memory maps are reopened lazily in each process.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        index_path = self.split_dir / "index.parquet"
        if not index_path.is_file():
            split = self.split_dir.name
            raise AbawError(f"no face store for split '{split}' at {self.split_dir}; "
                            "run `abaw prepare` first")
        self.index = pd.read_parquet(index_path)
        meta_path = self.split_dir / "meta.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self._shard_codes, self._shard_names = pd.factorize(self.index["shard"])
        self._offsets = self.index["offset"].to_numpy(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _shard(self, code: int) -> np.ndarray:
        array = self._maps.get(code)
        if array is None:
            path = self.split_dir / "shards" / f"{self._shard_names[code]}.npy"
            array = np.load(path, mmap_mode="r")
            self._maps[code] = array
        return array

    def face(self, row: int) -> np.ndarray:
        """The 112x112x3 uint8 face of index row ``row`` (error if that frame has no face)."""
        offset = int(self._offsets[row])
        if offset < 0:
            raise IndexError(f"row {row} ({self.index.at[row, 'video']} frame "
                             f"{self.index.at[row, 'frame']}) has no face")
        return np.asarray(self._shard(int(self._shard_codes[row]))[offset])

    def faces(self, rows: np.ndarray) -> np.ndarray:
        """A batch [len(rows), 112, 112, 3] uint8, for rows that all have a face."""
        out = np.empty((len(rows), FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = self.face(int(row))
        return out

    def rows(self, *, labelled: bool | None = None, with_face: bool = True) -> np.ndarray:
        """Row numbers filtered by having a label (>= 0) / no label (-1) and having a face."""
        mask = np.ones(len(self.index), dtype=bool)
        if with_face:
            mask &= self.index["has_face"].to_numpy(bool)
        if labelled is not None:
            is_labelled = self.index["label"].to_numpy() >= 0
            mask &= is_labelled if labelled else ~is_labelled
        return np.flatnonzero(mask)
