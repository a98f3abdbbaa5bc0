"""The on-disk state of an ingest: index part files, per-shard checkpoints, and the merge.

Layout of ``out_dir``::

    parts/sources.json            the sources as every shard opened them
    parts/checkpoint-<i>.json     shard i: its parts, where to resume, its counters
    parts/part-<i>-<k>.parquet    shard i's k-th chunk of index rows (atomic, never rewritten)
    parts/.lock                   held while a process writes files every shard shares
    index.parquet                 all shards merged in candidate order, duplicates removed
    sources.json                  how to find each source's bytes again (+ per-source counts)
    summary.json                  the summary ``ingest`` returned
    aligned/                      crops written by ``--align``

A part is written before the checkpoint that lists it, both atomically: after a kill the rerun
finds the last checkpoint, drops any part it does not list, and continues from there. A kill
also leaves the temporary file of the write it interrupted (``.<name>.<random>.<ext>``): the
next run sweeps the ones it owns (its shard's; shared files under ``parts/.lock``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.dedup import DigestSet, digests_from_hex_column
from abaw_kit.workspace import atomic_path, atomic_write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; shards there must not finish at once
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
FINGERPRINT_KEY = b"abaw_fingerprint"
ITEM_BITS = 40  # merge key = source << 40 | item: 10^12 items per source
INDEX_SCHEMA = pa.schema([
    ("source", pa.int32()), ("item", pa.int64()), ("kind", pa.string()), ("file", pa.string()),
    ("member", pa.string()), ("offset", pa.int64()), ("length", pa.int64()),
    ("row_group", pa.int32()), ("row", pa.int64()), ("chunked", pa.bool_()),
    ("hash", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])
MERGE_ROW_GROUP = 100_000
LOCK_NAME = ".lock"
MERGE_OUTPUTS = ("index.parquet", "sources.json", "summary.json")


def parts_dir(out_dir: Path) -> Path:
    return out_dir / "parts"


def checkpoint_path(out_dir: Path, shard: int) -> Path:
    return parts_dir(out_dir) / f"checkpoint-{shard}.json"


def part_name(shard: int, number: int) -> str:
    return f"part-{shard}-{number:05d}.parquet"


def empty_stats() -> dict[str, Any]:
    return {"images_seen": 0, "ingested": 0, "duplicates": 0, "bytes": 0, "seconds": 0.0,
            "skipped_by_reason": {}, "per_source": {}}


@dataclass
class ShardState:
    """One shard's checkpoint: everything before ``next`` = (source, item) is done."""

    fingerprint: str
    shard: tuple[int, int]
    parts: list[str] = field(default_factory=list)
    next: tuple[int, int] = (0, 0)
    complete: bool = False
    stats: dict[str, Any] = field(default_factory=empty_stats)
    version: int = FORMAT_VERSION

    def save(self, out_dir: Path) -> None:
        atomic_write_json(checkpoint_path(out_dir, self.shard[0]), asdict(self))

    @classmethod
    def load(cls, path: Path) -> ShardState | None:
        try:
            raw = json.loads(path.read_text())
            state = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None
        state.shard = (int(state.shard[0]), int(state.shard[1]))
        state.next = (int(state.next[0]), int(state.next[1]))
        return state if state.version == FORMAT_VERSION else None


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the ingest's lock while touching files all shards share (``parts/sources.json``,
    the merge's outputs): shards that finish together take turns, and the holder may sweep
    their temporary files, since nobody else is writing them. A killed holder's lock goes
    with its process."""
    folder = parts_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def sweep_temporaries(folder: Path, *names: str) -> None:
    """Remove the temporary files ``atomic_path`` left for targets named like ``names``
    (glob patterns) when a kill interrupted the write."""
    for name in names:
        for path in folder.glob(f".{name}.*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def _shard_temporaries(shard: int | str) -> tuple[str, str]:
    return f"part-{shard}-*.parquet", f"checkpoint-{shard}.json"


def open_shard(out_dir: Path, shard: tuple[int, int], fingerprint: str,
               sources: list[dict[str, Any]]) -> ShardState:
    """This shard's checkpoint to resume from, after removing what other options left behind
    and what a kill of this shard left half-written."""
    folder = parts_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(folder, *_shard_temporaries(shard[0]))  # only this process writes them
    with locked(out_dir):
        for path in sorted(folder.glob("checkpoint-*.json")):
            other = ShardState.load(path)
            if other is None or other.fingerprint != fingerprint:
                _remove_shard_files(folder, path)
        sweep_temporaries(folder, "sources.json")
        atomic_write_json(folder / "sources.json", {
            "version": FORMAT_VERSION, "fingerprint": fingerprint, "sources": sources})
    state = ShardState.load(checkpoint_path(out_dir, shard[0]))
    if state is None or state.fingerprint != fingerprint:
        state = ShardState(fingerprint, shard)
    listed = set(state.parts)
    for part in folder.glob(f"part-{shard[0]}-*.parquet"):
        if part.name not in listed:  # written just before a kill, its checkpoint never was
            part.unlink()
    return state


def sweep_merge_temporaries(out_dir: Path) -> None:
    """Every temporary file a killed ingest left; call while holding ``locked`` once every
    shard is complete (then no process writes parts or checkpoints any more)."""
    sweep_temporaries(out_dir, *MERGE_OUTPUTS)
    sweep_temporaries(parts_dir(out_dir), *_shard_temporaries("*"), "sources.json")


def _remove_shard_files(folder: Path, checkpoint: Path) -> None:
    shard = checkpoint.stem.split("-", 1)[1]
    for part in folder.glob(f"part-{shard}-*.parquet"):
        part.unlink()
    sweep_temporaries(folder, *_shard_temporaries(shard))
    checkpoint.unlink()


def write_part(out_dir: Path, state: ShardState, table: pa.Table) -> None:
    """Write the next part file of this shard (atomically) and list it in ``state``."""
    name = part_name(state.shard[0], len(state.parts))
    with atomic_path(parts_dir(out_dir) / name, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    state.parts.append(name)


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One part, read on this thread: ``pq.read_table`` starts Arrow's thread pools, whose
    per-thread allocator caches kept ~90 MB more resident memory in the benchmark."""
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)


def shard_digests(out_dir: Path, state: ShardState) -> DigestSet:
    """The digests of the rows this shard already wrote: dedup state for a resumed run."""
    seen = DigestSet()
    for name in state.parts:
        hashes = read_part(parts_dir(out_dir) / name, columns=["hash"]).column("hash")
        seen.add(digests_from_hex_column(hashes))
    return seen


def merge_key(table: pa.Table) -> np.ndarray:
    source = table.column("source").to_numpy().astype(np.int64)
    return (source << ITEM_BITS) | table.column("item").to_numpy().astype(np.int64)


def _read_parts(out_dir: Path, names: list[str]) -> Iterator[pa.Table]:
    for name in names:
        table = read_part(parts_dir(out_dir) / name).cast(INDEX_SCHEMA)
        if table.num_rows:
            yield table


def ordered_rows(streams: list[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """K-way merge of per-shard row streams (each sorted by merge key) into one sorted stream.

    Memory holds one part per shard: each round emits every buffered row up to the smallest
    "last key" among the buffers, which empties at least one buffer.
    """
    buffers: list[pa.Table | None] = [next(stream, None) for stream in streams]
    while True:
        active = [i for i, table in enumerate(buffers) if table is not None]
        if not active:
            return
        keys = {i: merge_key(buffers[i]) for i in active}  # type: ignore[arg-type]
        frontier = min(keys[i][-1] for i in active)
        pieces = []
        for i in active:
            table = buffers[i]
            assert table is not None
            cut = int(np.searchsorted(keys[i], frontier, side="right"))
            pieces.append(table.slice(0, cut))
            rest = table.slice(cut)
            buffers[i] = rest if rest.num_rows else next(streams[i], None)
        merged = pa.concat_tables(pieces)
        yield merged.take(np.argsort(merge_key(merged), kind="stable"))


def load_shards(out_dir: Path) -> list[ShardState]:
    """All checkpoints of the current ingest; AbawError naming what is missing."""
    folder = parts_dir(out_dir)
    states = [s for p in sorted(folder.glob("checkpoint-*.json"))
              if (s := ShardState.load(p)) is not None]
    if not states:
        raise AbawError(f"no ingest parts in {folder}; run `abaw ingest SOURCE` first")
    if len({s.fingerprint for s in states}) > 1 or len({s.shard[1] for s in states}) > 1:
        raise AbawError(f"{folder} holds parts of ingests run with different options; "
                        "rerun every shard with the same options")
    count = states[0].shard[1]
    done = {s.shard[0] for s in states if s.complete}
    missing = [i for i in range(count) if i not in done]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing)
        raise AbawError(f"shard(s) {listed} of the ingest in {out_dir} have not finished; run "
                        f"`abaw ingest SOURCES --shard i/{count}` for each, then merge")
    return sorted(states, key=lambda s: s.shard[0])


def write_index(out_dir: Path, states: list[ShardState]) -> dict[str, Any]:
    """Merge every shard's parts into ``index.parquet``; return per-source merge counts."""
    fingerprint = states[0].fingerprint
    seen = DigestSet()
    schema = INDEX_SCHEMA.with_metadata({FINGERPRINT_KEY: fingerprint.encode()})
    per_source: dict[int, dict[str, int]] = {}
    streams = [_read_parts(out_dir, s.parts) for s in states]
    with atomic_path(out_dir / "index.parquet", suffix=".parquet") as tmp, \
            pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for table in ordered_rows(streams):
            if len(states) == 1:  # one shard deduplicated everything already
                fresh = np.ones(table.num_rows, dtype=bool)
            else:
                fresh = seen.add(digests_from_hex_column(table.column("hash")))
            kept = table.filter(pa.array(fresh))
            sources = table.column("source").to_numpy()
            lengths = kept.column("length").to_numpy()
            for sid in np.unique(sources):
                counts = per_source.setdefault(int(sid), {"ingested": 0, "duplicates": 0})
                mine = sources == sid
                counts["duplicates"] += int((mine & ~fresh).sum())
            kept_sources = kept.column("source").to_numpy()
            for sid in np.unique(kept_sources):
                counts = per_source[int(sid)]
                counts["ingested"] += int((kept_sources == sid).sum())
                counts.setdefault("bytes", 0)
                counts["bytes"] += int(lengths[kept_sources == sid].sum())
            writer.write_table(kept, row_group_size=MERGE_ROW_GROUP)
    return per_source
