"""Worker CPU time per network image: what one DataLoader worker spends to feed the network.

In-process and single-threaded (the work of one worker), CPU seconds (``process_time``) of:

* ``UnlabelledBatches.__getitem__`` per network image (each pool image gives a weak and a
  strong view), reading from an unlabelled index built by ``ingest`` from a RecordIO file and
  from an image folder;
* ``LabelledBatches.__getitem__`` per network image (face-store read + weak view);
* ``UnlabeledIndex.read_bytes`` per image, and ``safe_join`` alone (the path-safety check);
* with ``data.views: device``: the same unlabelled batch when workers only decode and draw
  the views' parameters (bound: decoding the bytes in memory into one array), its share of
  the PIL batch's worker time, and what applying the views costs in the training step on
  this CPU (one thread; on a GPU that work moves to the device).

Each figure is printed as a ratio to a bound measured in the same run on the same images: the
same work with nothing but the unavoidable part. Batches: bytes already in memory, decoded and
augmented with the same PIL operations and random draws, written into one output array. Reads:
``os.pread`` from an open descriptor (RecordIO), or opening and reading a known path (folder).
Real and bound runs alternate and the median of the per-round ratios is printed, so a burst of
someone else's load on a shared machine does not decide the result.

Run it against another checkout (e.g. the code before a change) with PYTHONPATH:

    python benchmarks/bench_feed.py
    PYTHONPATH=/tmp/before python benchmarks/bench_feed.py
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from abaw_kit.config import resolve_config
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.train.data import (
    IndexImages,
    LabelledBatches,
    UnlabelledBatches,
    UnlabelledPool,
    Views,
    batch_rng,
    seeded_globals,
)
from abaw_kit.unlabeled.index import UnlabeledIndex
from abaw_kit.unlabeled.ingest import ingest
from abaw_kit.unlabeled.recordio import write_recordio
from abaw_kit.workspace import safe_join


def face_jpegs(count: int, rng: np.random.Generator) -> list[bytes]:
    """Smooth 112x112 JPEGs of about a face crop's size (aligned FR crops are this size)."""
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((112, 112), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (112, 112, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG",
                                                                        quality=90)
        out.append(buffer.getvalue())
    return out


def build(root: Path, count: int) -> tuple[dict[str, UnlabeledIndex], FaceStore, list[bytes]]:
    rng = np.random.default_rng(0)
    jpegs = face_jpegs(count, rng)
    write_recordio(root / "rec" / "train.rec", root / "rec" / "train.idx", jpegs)
    folder = root / "folder"
    for i, data in enumerate(jpegs):
        (folder / f"id{i % 16:03d}").mkdir(parents=True, exist_ok=True)
        (folder / f"id{i % 16:03d}" / f"{i:06d}.jpg").write_bytes(data)
    indexes = {}
    for name, source in (("recordio", root / "rec"), ("folder", folder)):
        ingest([source], root / f"index-{name}", verify="none")
        indexes[name] = UnlabeledIndex(root / f"index-{name}")
    writer = FaceStoreWriter(root / "store")
    faces = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs])
    writer.write_video("v", np.arange(1, count + 1), rng.integers(0, 8, count),
                       np.ones(count, bool), faces)
    writer.finalize(["v"], {"split": "train"})
    return indexes, FaceStore(root / "store"), jpegs


def cpu_seconds(work: Callable[[], object], repeat: int) -> float:
    begin = time.process_time()
    for _ in range(repeat):
        work()
    return (time.process_time() - begin) / repeat


def unlabelled_bound(views: Views, jpegs: list[bytes], positions: np.ndarray,
                     k: int) -> np.ndarray:
    """Decode + weak + strong of bytes in memory, into one uint8 array."""
    rng = batch_rng(0, 2, 0, k)
    out = np.empty((2, len(positions), views.size, views.size, 3), np.uint8)
    weak = []
    for j, i in enumerate(positions):
        with Image.open(io.BytesIO(jpegs[int(i)])) as decoded:
            image = views.weak(decoded.convert("RGB"), rng)
        out[0, j] = image
        weak.append(image)
    with seeded_globals(int(rng.integers(2**63))):
        for j, image in enumerate(weak):
            out[1, j] = views.strong(image)
    return out


def labelled_bound(views: Views, faces: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    rng = batch_rng(0, 1, 0, k)
    out = np.empty((len(positions), views.size, views.size, 3), np.uint8)
    for j, i in enumerate(positions):
        out[j] = views.weak(faces[int(i)], rng)
    return out


def median_ratio(real: Callable[[], object], bound: Callable[[], object], rounds: int,
                 repeat: int) -> tuple[float, float, float]:
    """(median real s, median bound s, median per-round ratio) per call."""
    real(), bound()  # caches, descriptors, lazy imports
    pairs = [(cpu_seconds(real, repeat), cpu_seconds(bound, repeat)) for _ in range(rounds)]
    reals, bounds = zip(*pairs, strict=True)
    ratio = float(np.median([r / b for r, b in pairs]))
    return float(np.median(reals)), float(np.median(bounds)), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="pool / store images")
    parser.add_argument("--batch", type=int, default=64, help="pool images per batch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="batches per round")
    parser.add_argument("--reads", type=int, default=2000, help="reads per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = resolve_config(None, [], {"ssl": "dtm"})
    views = Views(cfg.data)
    rng = np.random.default_rng(1)
    batches = [(k, rng.choice(args.images, args.batch, replace=False)) for k in range(64)]
    with tempfile.TemporaryDirectory(prefix="abaw-bench-feed-") as tmp:
        indexes, store, jpegs = build(Path(tmp), args.images)
        faces = store.faces(np.arange(args.images))
        print(f"worker CPU time per network image, {args.batch} pool images a batch, "
              f"{cfg.data.input_size}px, RandAugment {cfg.data.randaugment}; "
              f"median of {args.rounds} rounds")
        turn = iter(range(10**9))
        for name, index in indexes.items():
            data = UnlabelledBatches(UnlabelledPool({"unlabeled_index": IndexImages(index)}),
                                     views, seed=0)

            def real(data: UnlabelledBatches = data) -> object:
                return data[batches[next(turn) % len(batches)]]

            def bound() -> object:
                k, positions = batches[next(turn) % len(batches)]
                return unlabelled_bound(views, jpegs, positions, k)

            r, b, ratio = median_ratio(real, bound, args.rounds, args.repeat)
            per = 2 * args.batch
            print(f"  unlabelled batch ({name:8s}) {1e6 * r / per:7.1f} us   bound "
                  f"{1e6 * b / per:7.1f} us   ratio {ratio:.3f}")
        labelled = LabelledBatches(store, np.arange(args.images),
                                   np.zeros(args.images, np.int64), views, seed=0)

        def real_labelled() -> object:
            return labelled[batches[next(turn) % len(batches)]]

        def bound_labelled() -> object:
            k, positions = batches[next(turn) % len(batches)]
            return labelled_bound(views, faces, positions, k)

        r, b, ratio = median_ratio(real_labelled, bound_labelled, args.rounds, args.repeat)
        print(f"  labelled batch            {1e6 * r / args.batch:7.1f} us   bound "
              f"{1e6 * b / args.batch:7.1f} us   ratio {ratio:.3f}")
        bench_device_views(indexes["recordio"], jpegs, batches, args)
        bench_reads(indexes, Path(tmp), args)


def decode_bound(jpegs: list[bytes], positions: np.ndarray) -> np.ndarray:
    """Decoding the batch's bytes in memory into one uint8 array: all a device-views worker
    has to do besides drawing numbers."""
    out = np.empty((len(positions), 112, 112, 3), np.uint8)
    for j, i in enumerate(positions):
        with Image.open(io.BytesIO(jpegs[int(i)])) as decoded:
            out[j] = decoded.convert("RGB")
    return out


def bench_device_views(index: UnlabeledIndex, jpegs: list[bytes],
                       batches: list[tuple[int, np.ndarray]], args: argparse.Namespace) -> None:
    from abaw_kit.train.device_views import unlabelled_views

    cfg = resolve_config(None, [], {"ssl": "dtm"})
    device_cfg = resolve_config(None, ["data.views=device"], {"ssl": "dtm"})
    pool = UnlabelledPool({"unlabeled_index": IndexImages(index)})
    pil = UnlabelledBatches(pool, Views(cfg.data), seed=0)
    device = UnlabelledBatches(pool, Views(device_cfg.data), seed=0)
    turn = iter(range(10**9))
    per = 2 * args.batch

    def real() -> object:
        return device[batches[next(turn) % len(batches)]]

    def bound() -> object:
        return decode_bound(jpegs, batches[next(turn) % len(batches)][1])

    def worker_views() -> object:
        return pil[batches[next(turn) % len(batches)]]

    r, b, ratio = median_ratio(real, bound, args.rounds, args.repeat)
    _, pil_seconds, share = median_ratio(real, worker_views, args.rounds, args.repeat)
    print(f"  unlabelled batch (recordio, data.views=device) {1e6 * r / per:7.1f} us   bound "
          f"(decode only) {1e6 * b / per:7.1f} us   ratio {ratio:.3f}; "
          f"{share:.3f} of the PIL views' worker time ({1e6 * pil_seconds / per:.1f} us)")
    prepared = [device[batch][:3] for batch in batches[:8]]
    cpu = torch.device("cpu")
    step = cpu_seconds(lambda: [unlabelled_views(*p, cpu, cfg.data.input_size)
                                for p in prepared], 1) / len(prepared)
    print(f"  applying them in the step on this CPU (1 thread): {1e6 * step / per:7.1f} us "
          "per network image")


def read_file(path: str) -> bytes:
    with os.fdopen(os.open(path, os.O_RDONLY), "rb") as handle:
        return handle.read()


def bench_reads(indexes: dict[str, UnlabeledIndex], root: Path, args: argparse.Namespace
                ) -> None:
    order = np.random.default_rng(2).integers(0, args.images, args.reads)
    rec = indexes["recordio"]
    fd = os.open(root / "rec" / "train.rec", os.O_RDONLY)
    spans = [(int(rec._offset[i]), int(rec._length[i])) for i in range(len(rec))]
    folder = indexes["folder"]
    rels = [folder._file_name(i) for i in range(len(folder))]
    paths = [str(root / "folder" / rel) for rel in rels]
    try:
        for name, index, raw in (
                ("recordio", rec, lambda i: os.pread(fd, spans[i][1], spans[i][0])),
                ("folder", folder, lambda i: read_file(paths[i]))):
            def real(index: UnlabeledIndex = index) -> object:
                return [index.read_bytes(int(i)) for i in order]

            def bound(raw: Callable[[int], bytes] = raw) -> object:
                return [raw(int(i)) for i in order]

            r, b, ratio = median_ratio(real, bound, args.rounds, 1)
            print(f"  read_bytes ({name:8s})     {1e6 * r / len(order):7.1f} us   bound "
                  f"{1e6 * b / len(order):7.1f} us   ratio {ratio:.3f}")
    finally:
        os.close(fd)
    source_root = root / "folder"
    check = cpu_seconds(lambda: [safe_join(source_root, rels[int(i)]) for i in order[:500]],
                        3) / 500
    print(f"  safe_join alone           {1e6 * check:7.1f} us per call")


if __name__ == "__main__":
    main()
