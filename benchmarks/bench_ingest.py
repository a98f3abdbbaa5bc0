"""How close `ingest(verify="full")` runs to its bound, and whether its memory stays flat.

For each N it writes a RecordIO file of N distinct 112x112 JPEGs (like MS1MV2's), then, in a
fresh process so peak RSS belongs to that N alone:
  * times ``ingest(verify="full")`` into an empty folder -> images/s;
  * times plain PIL decoding of the same image bytes in the same process, before and after
    ingest -> the bound (ingest must at least decode every image, so it cannot beat this);
  * reports ingest/bound (by wall time, and by CPU time, which a busy machine disturbs less)
    and the peak RSS (ru_maxrss) reached during ingest.

    python benchmarks/bench_ingest.py --sizes 5000 20000 50000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BOUND_CHUNK = 1024


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Distinct smooth 112x112 JPEGs of about a face crop's size (smooth, not noise)."""
    rng = np.random.default_rng(seed)
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


def generate(count: int, folder: Path) -> None:
    from abaw_kit.unlabeled.recordio import write_recordio

    folder.mkdir(parents=True, exist_ok=True)
    write_recordio(folder / "train.rec", folder / "train.idx", synthetic_jpegs(count))
    (folder / "property").write_text("1,112,112\n")


def measure(folder: Path, out_dir: Path) -> dict[str, float]:
    import pyarrow as pa

    from abaw_kit.unlabeled.ingest import ingest

    pa.array([0])  # pyarrow imports pandas on first use (~0.7 s, once per process): not timed
    before = decode_rate(folder)  # the machine may be shared: bracket ingest with the bound
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = ingest([folder], out_dir, verify="full")
    ingest_s, ingest_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    after = decode_rate(folder)
    count = summary["ingested"]
    return {"images": count, "ingest_per_s": count / ingest_s,
            "decode_per_s": (before[0] + after[0]) / 2,
            "ingest_per_cpu_s": count / ingest_cpu,
            "decode_per_cpu_s": (before[1] + after[1]) / 2,
            "rss_peak_mib": rss_peak / 1024,
            "index_mib": (out_dir / "index.parquet").stat().st_size / 2**20}


def decode_rate(folder: Path) -> tuple[float, float]:
    """Images per second and per CPU second of PIL decoding every image of the .rec (bytes
    are read outside the timing)."""
    from abaw_kit.unlabeled.recordio import iter_recordio

    seconds, cpu, decoded = 0.0, 0.0, 0
    fd = os.open(folder / "train.rec", os.O_RDONLY)
    try:
        chunk: list[bytes] = []
        for record in iter_recordio(folder / "train.rec", folder / "train.idx"):
            if record.image_length:
                chunk.append(os.pread(fd, record.image_length, record.image_offset))
            if len(chunk) == BOUND_CHUNK:
                wall, used = _decode_all(chunk)
                seconds, cpu = seconds + wall, cpu + used
                decoded, chunk = decoded + len(chunk), []
        wall, used = _decode_all(chunk)
        seconds, cpu, decoded = seconds + wall, cpu + used, decoded + len(chunk)
    finally:
        os.close(fd)
    return decoded / seconds, decoded / cpu


def _decode_all(blobs: list[bytes]) -> tuple[float, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--_generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._generate:
        generate(args._generate, args._folder)
        return
    if args._measure:
        print(json.dumps(measure(args._folder, args._folder.parent / "index")))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        print(f"{'N':>8} {'ingest img/s':>13} {'decode img/s':>13} {'ratio':>6} "
              f"{'ratio (CPU s)':>13} {'peak RSS MiB':>13} {'index MiB':>10}")
        for count in args.sizes:
            folder = Path(tmp) / str(count) / "rec"
            _child("--_generate", str(count), "--_folder", str(folder))
            result = json.loads(_child("--_measure", "--_folder", str(folder)))
            ratio = result["ingest_per_s"] / result["decode_per_s"]
            cpu_ratio = result["ingest_per_cpu_s"] / result["decode_per_cpu_s"]
            print(f"{count:>8} {result['ingest_per_s']:>13,.0f} {result['decode_per_s']:>13,.0f}"
                  f" {ratio:>6.2f} {cpu_ratio:>13.2f} {result['rss_peak_mib']:>13,.1f}"
                  f" {result['index_mib']:>10.2f}", flush=True)


def _child(*args: str) -> str:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          check=True)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


if __name__ == "__main__":
    main()
