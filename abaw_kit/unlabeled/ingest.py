"""``abaw ingest``: large unlabelled face sets -> a zero-copy index that training streams from.

The index stores where each image's bytes already are (a .rec offset, a file, a tar member's
offset, a parquet row) instead of copying them: ingesting Glint360K costs an index of about
a gigabyte, not another 100 GB of JPEGs. Everything streams: memory holds one part of rows,
one batch of image bytes and the 16-byte digests that exact-duplicate removal needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from abaw_kit.errors import AbawError
from abaw_kit.faces.detector import DEFAULT_DETECTOR
from abaw_kit.progress import counting_bar
from abaw_kit.unlabeled import parts
from abaw_kit.unlabeled.aligning import FaceAligner
from abaw_kit.unlabeled.dedup import DigestSet, hex_column
from abaw_kit.unlabeled.images import EMPTY, content_hash, open_image
from abaw_kit.unlabeled.index import UnlabeledIndex
from abaw_kit.unlabeled.report import summary_table
from abaw_kit.unlabeled.sampling import (
    SUBSET_STREAM,
    VERIFY_STREAM,
    stream_key,
    subset_threshold,
    unit,
    verify_fraction,
)
from abaw_kit.unlabeled.sources import Location, Skip, Source, open_source
from abaw_kit.workspace import atomic_write_json

__all__ = ["check_out_dir", "ingest", "merge", "summary_table"]

PART_ROWS = 50_000
BATCH_ITEMS = 512
BATCH_BYTES = 64 << 20
AUTO_FULL_BELOW = 200_000
VERIFY_MODES = ("auto", "full", "sample", "none")


def ingest(sources: Sequence[str | Path], out_dir: Path, *, format: str | None = None,
           column: str | None = None, verify: str = "auto", align: bool = False,
           detector: Any = None, limit: int | None = None, fraction: float | None = None,
           seed: int = 0, shard: tuple[int, int] = (0, 1), progress: bool = False,
           part_rows: int = PART_ROWS) -> dict[str, Any]:
    """Index ``sources`` into ``out_dir``; resumable, shardable; returns the summary.

    verify: "full" decodes every image, "sample" decodes 1000 + 1% of them (the header of every
    image is still parsed), "none" trusts the bytes, "auto" = full below 200k images.
    align: detect + align images that are not 112x112 crops (``detector``: a name for
    ``abaw_kit.faces.make_detector`` or a detector object). shard=(i, n): this process takes
    every n-th candidate; the last shard to finish merges (or call ``merge``).
    """
    out_dir = Path(out_dir)
    _check_options(sources, verify, limit, fraction, shard, part_rows)
    check_out_dir(out_dir, sources)
    opened: list[Source] = []
    try:
        for sid, path in enumerate(sources):
            opened.append(open_source(sid, path, format, column))
        aligner = (FaceAligner(_resolve_detector(detector), out_dir / "aligned", shard)
                   if align else None)
        options = {"format": format, "column": column, "verify": verify, "align": align,
                   "detector": _detector_name(detector) if align else None, "limit": limit,
                   "fraction": fraction, "seed": seed, "shards": shard[1]}
        state = _ShardRun(opened, out_dir, options, shard, aligner, progress, part_rows).run()
    finally:
        for source in opened:
            source.close()
    others = [parts.ShardState.load(parts.checkpoint_path(out_dir, i)) for i in range(shard[1])]
    if all(s is not None and s.complete and s.fingerprint == state.fingerprint for s in others):
        return merge(out_dir)
    return _shard_summary(out_dir, state)


def _check_options(sources: Sequence[str | Path], verify: str, limit: int | None,
                   fraction: float | None, shard: tuple[int, int], part_rows: int) -> None:
    if not sources:
        raise AbawError("no unlabelled source given; pass a .rec, a folder, .tar shards or "
                        ".parquet files")
    if verify not in VERIFY_MODES:
        raise AbawError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if limit is not None and limit < 1:
        raise AbawError(f"limit must be at least 1, got {limit}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise AbawError(f"fraction must be in (0, 1], got {fraction}")
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise AbawError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    if part_rows < 1:
        raise ValueError(f"part_rows must be positive, got {part_rows}")


def check_out_dir(out_dir: str | Path, sources: Sequence[str | Path]) -> None:
    """Ingest writes only into out_dir, and out_dir must not be part of what it reads.

    Paths only, nothing opened or created: callers run it before making any folder (the CLI
    before the workspace), so a refusal leaves no trace.
    """
    target = Path(out_dir).expanduser().absolute().resolve()
    for source in sources:
        path = Path(source).expanduser().absolute()
        if not path.is_dir():
            continue  # a single file: nothing else in its folder is read
        root = path.resolve()
        if target == root or root in target.parents:
            raise AbawError(f"the output folder {out_dir} lies inside the source {path}; "
                            "choose a workspace outside the data")


def _resolve_detector(detector: Any) -> Any:
    if detector is None or isinstance(detector, str):
        from abaw_kit.faces import make_detector

        return make_detector(detector or DEFAULT_DETECTOR)
    if not callable(getattr(detector, "detect", None)):
        raise AbawError(f"detector {detector!r} has no detect(images) method")
    return detector


def _detector_name(detector: Any) -> str:
    if detector is None or isinstance(detector, str):
        return detector or DEFAULT_DETECTOR
    return str(getattr(detector, "name", type(detector).__name__))


def fingerprint(described: list[dict[str, Any]], options: dict[str, Any]) -> str:
    """Identifies what an ingest reads and how: a rerun resumes only an identical one."""
    blob = json.dumps({"version": parts.FORMAT_VERSION, "sources": described, **options},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class _Rows:
    """Index rows waiting for the next part file, as typed columns (about 90 bytes a row;
    lists of Python ints and hex strings took about 300)."""

    _TYPECODES = {"source": "i", "item": "q", "offset": "q", "length": "q", "row_group": "i",
                  "row": "q", "chunked": "b", "width": "i", "height": "i"}

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.numbers = {name: array(code) for name, code in self._TYPECODES.items()}
        self.texts: dict[str, list[str]] = {"kind": [], "file": [], "member": []}
        self.digests = bytearray()

    def __len__(self) -> int:
        return len(self.numbers["source"])

    def add(self, source: Source, item: int, loc: Location, digest: bytes, width: int,
            height: int) -> None:
        numbers = self.numbers
        for name, value in (("source", source.sid), ("item", item), ("offset", loc.offset),
                            ("length", loc.length), ("row_group", loc.row_group),
                            ("row", loc.row), ("chunked", loc.chunked), ("width", width),
                            ("height", height)):
            numbers[name].append(value)
        self.texts["kind"].append(loc.kind or source.kind)
        self.texts["file"].append(loc.file)
        self.texts["member"].append(loc.member)
        self.digests += digest

    def take(self) -> pa.Table:
        columns: dict[str, Any] = {name: np.frombuffer(values, dtype=values.typecode)
                                   for name, values in self.numbers.items()}
        columns["chunked"] = columns["chunked"].astype(bool)
        columns["hash"] = hex_column(self.digests)
        columns.update(self.texts)
        table = pa.Table.from_pydict({name: columns[name] for name in parts.INDEX_SCHEMA.names},
                                     schema=parts.INDEX_SCHEMA)
        self._reset()
        return table


class _ShardRun:
    """One process's pass over its shard of the candidates, checkpointed part by part."""

    def __init__(self, sources: list[Source], out_dir: Path, options: dict[str, Any],
                 shard: tuple[int, int], aligner: FaceAligner | None, progress: bool,
                 part_rows: int) -> None:
        self.sources, self.out_dir, self.options = sources, out_dir, options
        self.shard, self.aligner, self.progress = shard, aligner, progress
        self.part_rows = part_rows
        self.batch_items = min(BATCH_ITEMS, part_rows)
        self.rows = _Rows()
        self.pending: list[tuple[Source, int, bytes, Location]] = []
        self.pending_bytes = 0
        self.digests = DigestSet()
        self.verify_mode = options["verify"]
        self.verify_share = 1.0
        self.subset = 1.0
        self.done = 0

    def _plan(self) -> int | None:
        """Counts (when needed) decide verify=auto, the verify sample and the limit threshold."""
        opts = self.options
        counts: list[int] | None = None
        if opts["limit"] is not None or opts["verify"] in ("auto", "sample") or self.progress:
            counts = [source.count() for source in self.sources]
        total = None if counts is None else sum(counts)
        if self.verify_mode == "auto":
            self.verify_mode = "full" if (total or 0) < AUTO_FULL_BELOW else "sample"
        self.verify_share = verify_fraction(total or 0, self.verify_mode)
        if opts["limit"] is not None and counts is not None:
            self.subset = subset_threshold(counts, opts["seed"], opts["limit"], opts["fraction"])
        elif opts["fraction"] is not None:
            self.subset = float(opts["fraction"])
        return total

    def run(self) -> parts.ShardState:
        total = self._plan()
        described = [source.describe() for source in self.sources]
        state = parts.open_shard(self.out_dir, self.shard, fingerprint(described, self.options),
                                 described)
        if state.complete:
            return state
        self.digests = parts.shard_digests(self.out_dir, state)
        self.state = state
        self.stats = state.stats
        self.started, self.seconds_before = time.perf_counter(), float(self.stats["seconds"])
        description = f"ingest shard {self.shard[0]}/{self.shard[1]}"
        shard_total = None if total is None else math.ceil(total / self.shard[1])
        with counting_bar(self.progress, description, shard_total) as update:
            self.update = update
            for source in self.sources[state.next[0]:]:
                start = state.next[1] if source.sid == state.next[0] else 0
                self._ingest_source(source, start)
            self._process_pending()
            self._checkpoint((len(self.sources), 0), complete=True)
        return state

    def _ingest_source(self, source: Source, start: int) -> None:
        index, count = self.shard
        subset_key = stream_key(self.options["seed"], SUBSET_STREAM, source.sid)
        usable, problems = 0, Counter[str]()
        for candidate in source.candidates(start):
            if candidate.problem is None:
                usable += 1
            else:
                problems[candidate.problem] += 1
            if (source.sid + candidate.item) % count != index:
                continue
            self.done += 1
            if self.subset < 1.0 and unit(subset_key, candidate.item) >= self.subset:
                continue
            self._count(source, "images_seen")
            if candidate.problem is not None:
                self._skip(source, candidate.problem)
                continue
            try:
                data, loc = source.read(candidate.ref)
            except Skip as skip:
                self._skip(source, skip.reason)
                continue
            self.pending.append((source, candidate.item, data, loc))
            self.pending_bytes += len(data)
            if len(self.pending) >= self.batch_items or self.pending_bytes >= BATCH_BYTES:
                self._process_pending()
                if len(self.rows) >= self.part_rows:
                    self._checkpoint((source.sid, candidate.item + 1))
        if start == 0 and usable == 0:
            found = "; ".join(f"{reason}: {n}" for reason, n in problems.most_common(3))
            raise AbawError(f"no images found in {source.path} ({found or 'it is empty'}); "
                            "expected jpg, jpeg, png, webp or bmp images")

    def _process_pending(self) -> None:
        """Hash a batch, drop exact duplicates of kept images (first one wins), check and
        index the rest.

        Only kept images count as seen: a rejected file (empty, not decodable, no face) is
        rejected again each time, so 10,000 empty files are 10,000 empty files, not one
        empty file and 9,999 duplicates of it.
        """
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        digests = [content_hash(data) for _, _, data, _ in batch]
        known = self.digests.contains(digests)
        kept: set[bytes] = set()
        for (source, item, data, loc), digest, seen in zip(batch, digests, known, strict=True):
            if seen or digest in kept:
                self._count(source, "duplicates")
                continue
            try:
                loc, width, height = self._check(source, item, data, loc)
            except Skip as skip:
                self._skip(source, skip.reason)
                continue
            kept.add(digest)
            self.rows.add(source, item, loc, digest, width, height)
            self._count(source, "ingested")
            self._count(source, "bytes", loc.length)
        self.digests.add(list(kept))
        self.update(self.done, int(self.stats["ingested"]))

    def _check(self, source: Source, item: int, data: bytes,
               loc: Location) -> tuple[Location, int, int]:
        """Verify (header always unless verify=none; pixels for the sample) and align."""
        if not data:
            raise Skip(EMPTY)
        if self.verify_mode == "none" and self.aligner is None:
            width, height = source.image_size() or (-1, -1)
            return loc, width, height
        decode = self.verify_share >= 1.0 or (
            self.verify_share > 0.0
            and unit(stream_key(self.options["seed"], VERIFY_STREAM, source.sid), item)
            < self.verify_share)
        image = open_image(data, decode=decode)
        width, height = image.size
        if self.aligner is not None and self.aligner.needs_alignment(width, height):
            _, loc = self.aligner(image, source.sid, item)
            width = height = 112
        return loc, width, height

    def _count(self, source: Source, key: str, amount: int = 1) -> None:
        if key in self.stats:  # "skipped" is kept per reason in the totals
            self.stats[key] += amount
        mine = self.stats["per_source"].setdefault(
            str(source.sid), {"images_seen": 0, "ingested": 0, "duplicates": 0, "skipped": 0,
                              "bytes": 0})
        mine[key] += amount

    def _skip(self, source: Source, reason: str) -> None:
        reasons = self.stats["skipped_by_reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
        self._count(source, "skipped")

    def _checkpoint(self, next_position: tuple[int, int], complete: bool = False) -> None:
        if len(self.rows):
            parts.write_part(self.out_dir, self.state, self.rows.take())
        self.stats["seconds"] = self.seconds_before + time.perf_counter() - self.started
        self.state.next = next_position
        self.state.complete = complete
        self.state.save(self.out_dir)


def _totals(stats: dict[str, Any]) -> dict[str, Any]:
    seconds = float(stats["seconds"])
    return {"images_seen": int(stats["images_seen"]), "ingested": int(stats["ingested"]),
            "skipped": sum(stats["skipped_by_reason"].values()),
            "skipped_by_reason": dict(sorted(stats["skipped_by_reason"].items())),
            "duplicates": int(stats["duplicates"]), "bytes": int(stats["bytes"]),
            "seconds": round(seconds, 3),
            "images_per_s": round(stats["images_seen"] / seconds, 1) if seconds > 0 else 0.0}


def _shard_summary(out_dir: Path, state: parts.ShardState) -> dict[str, Any]:
    described = json.loads((parts.parts_dir(out_dir) / "sources.json").read_text())["sources"]
    sources = []
    for info in described:
        mine = state.stats["per_source"].get(str(info["id"]), {})
        sources.append({"id": info["id"], "kind": info["kind"], "path": info["path"],
                        "seen": mine.get("images_seen", 0), "ingested": mine.get("ingested", 0)})
    index, count = state.shard
    return {"out_dir": str(out_dir), "shard": f"{index}/{count}", "merged": False,
            **_totals(state.stats), "sources": sources,
            "warnings": [f"shard {index}/{count} done; the index is merged once every shard "
                         "has finished (or run merge)"]}


def merge(out_dir: Path) -> dict[str, Any]:
    """Merge every finished shard's parts into ``index.parquet`` (duplicates across shards
    removed, candidate order kept) and write ``sources.json`` and ``summary.json``."""
    out_dir = Path(out_dir)
    parts.load_shards(out_dir)  # the clear errors first, before anything is created
    with parts.locked(out_dir):  # two shards finishing together: the second finds it done
        states = parts.load_shards(out_dir)
        saved = out_dir / "summary.json"
        if saved.is_file() and (out_dir / "index.parquet").is_file():
            with contextlib.suppress(ValueError):
                previous = json.loads(saved.read_text())
                if previous.get("fingerprint") == states[0].fingerprint and _readable(out_dir):
                    return previous
        parts.sweep_merge_temporaries(out_dir)  # a merge killed before left its files
        return _merge(out_dir, states)


def _readable(out_dir: Path) -> bool:
    """Done means the index opens as training opens it, not merely that its files are there."""
    try:
        UnlabeledIndex(out_dir).close()
    except AbawError:
        return False
    return True


def _merge(out_dir: Path, states: list[parts.ShardState]) -> dict[str, Any]:
    fp = states[0].fingerprint
    saved = out_dir / "summary.json"
    described = json.loads((parts.parts_dir(out_dir) / "sources.json").read_text())
    if described.get("fingerprint") != fp:
        raise AbawError(f"{parts.parts_dir(out_dir)}/sources.json does not belong to these parts;"
                        " rerun `abaw ingest`")
    merged = parts.write_index(out_dir, states)
    stats = parts.empty_stats()
    for state in states:
        for key in ("images_seen", "duplicates", "seconds"):
            stats[key] += state.stats[key]
        for reason, n in state.stats["skipped_by_reason"].items():
            stats["skipped_by_reason"][reason] = stats["skipped_by_reason"].get(reason, 0) + n
    sources, warnings = [], []
    for info in described["sources"]:
        sid = info["id"]
        shard_counts = [s.stats["per_source"].get(str(sid), {}) for s in states]
        result = merged.get(sid, {})
        row = {"id": sid, "kind": info["kind"], "path": info["path"],
               "seen": sum(c.get("images_seen", 0) for c in shard_counts),
               "skipped": sum(c.get("skipped", 0) for c in shard_counts),
               "duplicates": sum(c.get("duplicates", 0) for c in shard_counts)
               + result.get("duplicates", 0),
               "ingested": result.get("ingested", 0)}
        stats["duplicates"] += result.get("duplicates", 0)
        stats["ingested"] += row["ingested"]
        stats["bytes"] += result.get("bytes", 0)
        sources.append(row)
        if row["seen"] and not row["ingested"] and not row["duplicates"]:
            warnings.append(f"nothing usable in {info['path']} ({row['skipped']} skipped)")
    if stats["ingested"] == 0:
        (out_dir / "index.parquet").unlink(missing_ok=True)
        reasons = "; ".join(f"{r}: {n}" for r, n in sorted(stats["skipped_by_reason"].items()))
        raise AbawError(f"no usable image in {', '.join(str(i['path']) for i in sources)} "
                        f"({reasons or 'nothing selected'})")
    atomic_write_json(out_dir / "sources.json", {
        "version": parts.FORMAT_VERSION, "fingerprint": fp, "aligned_dir": "aligned",
        "sources": [{**info, **row} for info, row in zip(described["sources"], sources,
                                                         strict=True)]})
    summary = {"out_dir": str(out_dir), "index": str(out_dir / "index.parquet"), "merged": True,
               "shards": states[0].shard[1], **_totals(stats), "sources": sources,
               "warnings": warnings, "fingerprint": fp}
    atomic_write_json(saved, summary)
    return summary
