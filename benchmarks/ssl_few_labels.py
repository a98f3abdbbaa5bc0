"""Few-label protocol on the demo: does DTM beat the supervised baseline at the same step budget?

Keeps ``--fraction`` of the labelled demo train frames (stratified); the rest of the train frames
and the demo's unlabelled face-recognition images form the unlabelled pool. Every method trains
the same steps from the same demo config; the script prints val macro-F1 (raw frames, EMA
weights) per method and seed, the means, and DTM minus none. For SSL runs it also prints, over
the last quarter of training, the share of unlabelled images accepted and how many of the
accepted pseudo-labels on withheld train frames are right (the ``pseudo_acc`` log column).

    python benchmarks/ssl_few_labels.py --fraction 0.05 --seeds 0 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

from abaw_kit.config import resolve_train_config
from abaw_kit.prepare import PrepareOptions, ingest_demo_unlabeled, prepare
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

METHODS = ("none", "fixmatch", "flexmatch", "freematch", "dtm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="workspace (default: a temporary one, demo generated there)")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides, key=value")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    work = Workspace(args.work or Path(tempfile.mkdtemp(prefix="abaw-fewlabels-")))
    if not (work.store_dir("val") / "index.parquet").is_file():
        result = prepare(work, PrepareOptions(splits=("train", "val")))
        ingest_demo_unlabeled(work, Path(result["data_root"]))
    results: dict[str, list[float]] = {m: [] for m in args.methods}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        for method in args.methods:
            overrides = [f"data.labelled_fraction={args.fraction}", f"train.seed={seed}",
                         f"train.steps={args.steps}", *args.overrides]
            cfg = resolve_train_config(work, "demo", overrides, {"ssl": method})
            start = time.perf_counter()
            summary = train(work, cfg, run_name=f"few{args.fraction:g}-{method}-s{seed}-{stamp}",
                            progress=False)
            f1 = float(summary["last_val_f1"])
            results[method].append(f1)
            quality = late_pseudo_label_quality(Path(summary["metrics_csv"]))
            print(f"seed {seed}  {method:<10} val macro-F1 {f1:.4f}  "
                  f"(best {summary['best_val_f1']:.4f}, {time.perf_counter() - start:.0f} s)"
                  + "".join(f"  {k} {v:.3f}" for k, v in quality.items()), flush=True)
    print(f"\nlabelled fraction {args.fraction:g}, {args.steps} steps, seeds {args.seeds}")
    print(f"{'method':<10} {'mean F1':>8} {'std':>7}")
    for method, scores in results.items():
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"{method:<10} {statistics.mean(scores):8.4f} {std:7.4f}")
    if "dtm" in results and "none" in results:
        gain = statistics.mean(results["dtm"]) - statistics.mean(results["none"])
        print(f"dtm - none: {gain:+.4f} macro-F1 (mean over {len(args.seeds)} seeds)")
    if args.out:
        args.out.write_text(json.dumps({"fraction": args.fraction, "steps": args.steps,
                                        "seeds": args.seeds, "val_f1": results}, indent=2))


def late_pseudo_label_quality(metrics_csv: Path) -> dict[str, float]:
    """Mean mask_ratio and pseudo_acc over the last quarter of the logged rows."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    late = rows[len(rows) * 3 // 4:]
    quality = {}
    for key in ("mask_ratio", "pseudo_acc"):
        values = [float(r[key]) for r in late if r.get(key)]
        if values:
            quality[key] = statistics.mean(values)
    return quality


if __name__ == "__main__":
    main()
