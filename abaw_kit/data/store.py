"""The face store: every frame of a split as 112x112 RGB uint8, read at memory speed.

On disk, per split (``<work>/faces/<split>/``)::

    shards/<shard>.npy       uint8 [faces_in_video, 112, 112, 3], one per annotation file
    shards/<shard>.parquet   that video's frames: frame, label, has_face, offset; its footer
                             holds the shard record (video, counts, .npy size, how it was made)
    index.parquet            all videos concatenated (+ column ``shard``): what readers use
    meta.json                split, source, counts

Why shards per video: ``prepare`` can resume after a crash by skipping videos whose shard is
complete (each file is written atomically, the record last, and checked against the files),
and nothing has to be copied into one giant file at the end; readers memory-map the shards
lazily. ``<shard>`` is ``shard_name(video)``: one file per video, also on case-blind disks.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from abaw_kit.errors import AbawError
from abaw_kit.workspace import atomic_path, atomic_write_json

FACE_SIZE = 112
INDEX_COLUMNS = ("video", "frame", "label", "has_face", "shard", "offset")
RECORD_KEY = b"abaw_shard"
"""Key of the shard record (JSON) in the footer of ``shards/<shard>.parquet``."""
REDO = "rerun `abaw prepare`, which redoes it"

_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_READ_ERRORS = (OSError, ValueError, EOFError, pa.ArrowException)


def shard_name(video: str) -> str:
    """The shard file name of a video: the name itself when plain (lowercase letters, digits,
    ``._-``), else the sanitised name + ``+`` + a hash of the original name.

    Why: replacing characters alone maps ``a b`` and ``a_b`` to one file, and a case-blind
    disk maps ``A`` and ``a`` to one file; a plain name never holds ``+``, so none can meet.
    """
    if _PLAIN_NAME.fullmatch(video):
        return video
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video).lstrip(".")[:60] or "_"
    digest = hashlib.sha256(video.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe}+{digest}"


def shard_names(videos: list[str]) -> list[str]:
    """``shard_name`` of each video; an error if two would share a shard file (or repeat)."""
    owner: dict[str, str] = {}
    for video in videos:
        key = shard_name(video).lower()
        if key in owner:
            what = (f"video {video!r} is listed twice" if owner[key] == video else
                    f"videos {owner[key]!r} and {video!r} would share the shard '{key}'")
            raise AbawError(f"face store: {what}; rename one of the annotation files")
        owner[key] = video
    return [shard_name(video) for video in videos]


def _one_line(exc: BaseException) -> str:
    """The gist of a reader's exception: first sentence, without pyarrow's 'cannot open <path>'."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno}"
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^Could not open Parquet input source '.*?':\s*", "", lines[0] if lines else "")
    return text.split(". ")[0][:120] or type(exc).__name__


def _unreadable(path: Path, exc: BaseException, what: str = "") -> AbawError:
    """One line for a workspace file that cannot be used: which, why, and the fix."""
    if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
        return AbawError(f"{what}{path} cannot be read ({exc.strerror or exc}); {REDO}")
    return AbawError(f"{what}{path} is damaged ({_one_line(exc)}); {REDO}")


def read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a ``.npy`` file, reading only its header.

    Raises OSError (FileNotFoundError when missing), ValueError or EOFError like numpy does.
    """
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"a .npy file of unsupported version {version}")
        return tuple(shape), bool(fortran), dtype, handle.tell()


def npy_array_problem(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a ``.npy`` that should hold ``dtype`` ``shape`` (C order, exactly
    those bytes: a truncated copy does not), or None. Only the header is read."""
    try:
        size = path.stat().st_size
        found, fortran, found_dtype, start = read_npy_header(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except (ValueError, EOFError) as exc:
        return f"is not a readable .npy file ({_one_line(exc)})"
    wanted = np.dtype(dtype)
    if found_dtype != wanted or fortran or found != tuple(shape):
        return f"holds {found_dtype} {found}, expected {wanted} {tuple(shape)}"
    expected = start + int(np.prod(shape)) * wanted.itemsize
    if size != expected:
        return f"has {size} bytes, expected {expected} (truncated or overwritten)"
    return None


def npy_problem(path: Path, faces: int) -> str | None:
    """What is wrong with a shard ``.npy``, or None: the header must describe uint8
    [faces, 112, 112, 3] and the file must hold exactly those bytes (a truncated copy does
    not). Only the header is read, so checking every shard of a split is cheap."""
    return npy_array_problem(path, np.uint8, (faces, FACE_SIZE, FACE_SIZE, 3))


def read_shard_record(path: Path) -> dict[str, Any] | None:
    """The record in a shard table's footer, or None when the table is missing, unreadable
    (a truncated parquet loses its footer) or was written without one (older versions)."""
    try:
        footer = pq.read_metadata(path)
        record = json.loads((footer.metadata or {})[RECORD_KEY])
    except (*_READ_ERRORS, KeyError):
        return None
    fields = {"video": str, "frames": int, "faces": int, "npy_bytes": int, "made_with": dict}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t)
                                           for k, t in fields.items()):
        return None
    return record if footer.num_rows == record["frames"] else None


class FaceStoreWriter:
    """Writes one split's store video by video; each video is atomic, so reruns resume."""

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        self.shard_dir = self.split_dir / "shards"

    def is_done(self, video: str, made_with: dict[str, Any] | None = None) -> bool:
        """Whether ``video``'s shard is complete: its record names this video and ``made_with``
        (how the faces were made), and the ``.npy`` matches the record in shape and size."""
        name = shard_name(video)
        record = read_shard_record(self.shard_dir / f"{name}.parquet")
        if record is None or record["video"] != video or record["made_with"] != (made_with or {}):
            return False
        npy = self.shard_dir / f"{name}.npy"
        return (npy_problem(npy, record["faces"]) is None
                and npy.stat().st_size == record["npy_bytes"])

    def write_video(self, video: str, frames: np.ndarray, labels: np.ndarray,
                    has_face: np.ndarray, faces: np.ndarray,
                    made_with: dict[str, Any] | None = None) -> None:
        """Store one video: ``faces`` holds only the frames where ``has_face`` is true, in order.

        The table (with the record) is written after the ``.npy``: it marks the video done.
        """
        frames = np.asarray(frames, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        has_face = np.asarray(has_face, dtype=bool)
        faces = np.ascontiguousarray(faces, dtype=np.uint8).reshape(-1, FACE_SIZE, FACE_SIZE, 3)
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
            npy_bytes = tmp.stat().st_size
        frame = pd.DataFrame({"video": video, "frame": frames, "label": labels,
                              "has_face": has_face, "shard": name, "offset": offset})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        record = {"video": video, "frames": len(frames), "faces": len(faces),
                  "npy_bytes": npy_bytes, "made_with": made_with or {}}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               RECORD_KEY: json.dumps(record).encode()})
        with atomic_path(self.shard_dir / f"{name}.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)

    def finalize(self, videos: list[str], meta: dict[str, Any]) -> pd.DataFrame:
        """Join the per-video tables (in ``videos`` order) into ``index.parquet``."""
        names = shard_names(videos)
        parts = [self._read_table(video, name) for video, name in zip(videos, names, strict=True)]
        if parts:
            index = pd.concat(parts, ignore_index=True)
        else:
            index = pd.DataFrame({c: pd.Series(dtype="int64") for c in INDEX_COLUMNS})
        with atomic_path(self.split_dir / "index.parquet", suffix=".parquet") as tmp:
            index.to_parquet(tmp, index=False)
        atomic_write_json(self.split_dir / "meta.json", {**meta, **store_counts(index)})
        self._sweep_leftovers(names)
        return index

    def _read_table(self, video: str, name: str) -> pd.DataFrame:
        path = self.shard_dir / f"{name}.parquet"
        try:
            table = pd.read_parquet(path)
        except _READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
        if set(table["video"].unique()) - {video}:
            raise AbawError(f"{path} holds frames of another video than '{video}'; {REDO}")
        return table

    def _sweep_leftovers(self, names: list[str]) -> None:
        """Remove temporary files a killed run left behind (shard names never start with a
        dot, temporary files always do) and shards of videos no longer in the split (or named
        by an older version): a resumed store is as clean as a fresh one."""
        keep = {f"{name}{suffix}" for name in names for suffix in (".npy", ".parquet")}
        if self.shard_dir.is_dir():
            for path in self.shard_dir.iterdir():
                stale = path.name.startswith(".") or (
                    path.suffix in {".npy", ".parquet"} and path.name not in keep)
                if stale and path.is_file():
                    path.unlink(missing_ok=True)


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

    Every file is checked on opening (shards by their header and size only), so a damaged
    workspace fails here with the file's name, not later inside a DataLoader worker.
    Safe to hand to DataLoader workers: memory maps are reopened lazily in each process.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        index_path = self.split_dir / "index.parquet"
        if not index_path.is_file():
            split = self.split_dir.name
            raise AbawError(f"no face store for split '{split}' at {self.split_dir}; "
                            "run `abaw prepare` first")
        try:
            self.index = pd.read_parquet(index_path)
        except _READ_ERRORS as exc:
            raise _unreadable(index_path, exc) from None
        missing = [c for c in INDEX_COLUMNS if c not in self.index.columns]
        if missing:
            raise AbawError(f"{index_path} lacks the columns {', '.join(missing)}; {REDO}")
        self.meta = self._read_meta(self.split_dir / "meta.json")
        self._shard_codes, self._shard_names = pd.factorize(self.index["shard"])
        self._offsets = self.index["offset"].to_numpy(np.int64)
        self._check_shards()
        self._maps: dict[int, np.ndarray] = {}

    @staticmethod
    def _read_meta(path: Path) -> dict[str, Any]:
        if not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        if not isinstance(meta, dict):
            raise AbawError(f"{path} holds no JSON object; {REDO}")
        return meta

    def _shard_path(self, code: int) -> Path:
        return self.split_dir / "shards" / f"{self._shard_names[code]}.npy"

    def _check_shards(self) -> None:
        """Each shard must hold exactly the faces the index points into."""
        has = self._offsets >= 0
        codes = self._shard_codes[has]
        counts = np.bincount(codes, minlength=len(self._shard_names))
        last = np.full(len(self._shard_names), -1, dtype=np.int64)
        np.maximum.at(last, codes, self._offsets[has])
        for code, (count, top) in enumerate(zip(counts, last, strict=True)):
            path = self._shard_path(code)
            if top + 1 != count:
                raise AbawError(f"{self.split_dir / 'index.parquet'} points past the faces of "
                                f"shard {path.name}; {REDO}")
            problem = npy_problem(path, int(count))
            if problem is not None:
                raise AbawError(f"face-store shard {path} {problem}; {REDO}")

    def __len__(self) -> int:
        return len(self.index)

    def index_sha256(self) -> str:
        """sha256 of ``index.parquet``: what results cached per frame (probabilities,
        embeddings) are keyed on, so a store rebuilt with other videos or faces misses."""
        return hashlib.sha256((self.split_dir / "index.parquet").read_bytes()).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _shard(self, code: int) -> np.ndarray:
        array = self._maps.get(code)
        if array is None:
            path = self._shard_path(code)
            try:
                array = np.load(path, mmap_mode="r")
            except _READ_ERRORS as exc:
                raise _unreadable(path, exc, "face-store shard ") from None
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
