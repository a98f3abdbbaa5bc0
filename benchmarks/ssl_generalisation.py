"""Does semi-supervised training on unlabelled faces generalise to new people? (issue #9 table)

Trains every method of ``--methods`` for every seed of ``--seeds`` on the demo, with the same
demo config and step budget within a setting, and scores the final EMA weights on raw frames
(no smoothing) of the validation split and of the demo's hidden test labels; both splits hold
people the model never saw. Settings:

- ``all``: the paper's setting: every labelled train frame + the demo's face-recognition images;
- ``few``: ``--fraction`` of the labelled train frames; the rest join the unlabelled pool.

For each setting it prints mean +- std per method and, for every method against ``none``, the
per-seed paired difference (same seed = same labelled subset, same initialisation) with its
mean and spread, and (where ``none`` ran for that seed in the same call) the std of that
difference over bootstrap draws of the split's videos: the same 20 people score every seed,
so the seed spread cannot show how much a gain depends on which people were drawn; this
does. ``--pretrained FILE`` starts every run from that file (e.g. torchvision's
ImageNet MobileNetV2 with ``--set model.backbone=mobilenetv2_100``).

    python benchmarks/ssl_generalisation.py --settings all few --seeds 0 1 2 --out table.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from abaw_kit import submission as sub
from abaw_kit.config import resolve_train_config
from abaw_kit.data.store import FaceStore
from abaw_kit.demo import TEST_LABELS_FILE
from abaw_kit.infer import load_run_model, predict_rows
from abaw_kit.metrics import macro_f1, paired_bootstrap
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

METHODS = ("none", "fixmatch", "flexmatch", "freematch", "dtm")
ORACLE = "oracle"
"""Not a method: the true classes of the demo's unlabelled faces instead of pseudo-labels
(``ssl.oracle``), the most the unlabelled data can give this model; ``--methods ... oracle``."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="workspace (default: a temporary one, demo generated there)")
    parser.add_argument("--settings", nargs="+", default=["all", "few"], choices=("all", "few"))
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="labelled fraction of the 'few' setting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the demo config's")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=(*METHODS, ORACLE))
    parser.add_argument("--pretrained", default=None, help="initial weights file for every run")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides, key=value (every run)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    work = Workspace(args.work or Path(tempfile.mkdtemp(prefix="abaw-ssl-")))
    data_root = ensure_demo_workspace(work)
    scorer = SplitScorer(work, data_root)
    results: dict[str, Any] = {"settings": {}, "args": vars(args) | {"work": str(work.root)}}
    started = time.perf_counter()
    for setting in args.settings:
        rows = run_setting(work, scorer, setting, args)
        results["settings"][setting] = rows
        print_summary(setting, rows, args.methods)
        if args.out:
            write_json(args.out, results)
    minutes = (time.perf_counter() - started) / 60
    results["minutes"] = round(minutes, 1)
    print(f"\nall runs: {minutes:.1f} min")
    if args.out:
        write_json(args.out, results)


def ensure_demo_workspace(work: Workspace) -> Path:
    """Prepare the demo (train, val, test) once; `prepare` ingests its unlabelled faces too."""
    if not all((folder / "index.parquet").is_file()
               for folder in (work.store_dir("test"), work.unlabeled_dir)):
        prepare(work, PrepareOptions(splits=("train", "val", "test")))
    return work.data_root()


class SplitScorer:
    """Raw-frame macro-F1 of a run's final EMA weights on val and on the demo's hidden test."""

    def __init__(self, work: Workspace, data_root: Path) -> None:
        self.stores = {split: FaceStore(work.store_dir(split)) for split in ("val", "test")}
        truth = sub.read_predictions(data_root / TEST_LABELS_FILE)
        index = self.stores["test"].index[["video", "frame"]].reset_index(drop=True)
        merged = index.merge(truth, on=["video", "frame"], how="left")
        self.labels = {"val": self.stores["val"].index["label"].to_numpy(np.int64),
                       "test": merged["label"].fillna(-1).to_numpy(np.int64)}
        self.rows = {split: self._scored_rows(split) for split in self.stores}

    def __call__(self, run_dir: Path) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The scores and the predicted class of every scored frame, per split."""
        loaded = load_run_model(run_dir, device="cpu", which="last")
        scores, predictions = {}, {}
        for split, store in self.stores.items():
            rows = self.rows[split]
            probs = predict_rows(loaded.model, loaded.normalize, store, rows, batch_size=256)
            predictions[split] = probs.argmax(axis=1)
            scores[split] = round(macro_f1(self.labels[split][rows], predictions[split]), 4)
        return scores, predictions

    def _scored_rows(self, split: str) -> np.ndarray:
        """Rows with a face and a label: the frames every score is taken on."""
        rows = self.stores[split].rows(labelled=None, with_face=True)
        return rows[self.labels[split][rows] >= 0]

    def people_spread(self, baseline: dict[str, np.ndarray],
                      other: dict[str, np.ndarray]) -> dict[str, float]:
        """Per split, the std and the 95 % interval of other - baseline over draws of the
        split's videos (people)."""
        spread = {}
        for split in self.stores:
            rows = self.rows[split]
            videos = self.stores[split].index["video"].to_numpy()[rows]
            result = paired_bootstrap(self.labels[split][rows], baseline[split], other[split],
                                      videos)
            for key in ("std", "low", "high"):
                spread[f"{split}_people_{key}"] = round(result[key], 4)
        return spread


def run_setting(work: Workspace, scorer: SplitScorer, setting: str,
                args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    baselines: dict[int, dict[str, np.ndarray]] = {}  # the none run's predictions per seed
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        for method in args.methods:
            overrides = [f"train.seed={seed}", *args.overrides]
            if setting == "few":
                overrides.append(f"data.labelled_fraction={args.fraction}")
            if args.steps:
                overrides.append(f"train.steps={args.steps}")
            if args.pretrained:
                overrides.append(f"model.pretrained={args.pretrained}")
            if method == ORACLE:
                overrides.append("ssl.oracle=true")
            cfg = resolve_train_config(work, "demo", overrides,
                                       {"ssl": "dtm" if method == ORACLE else method})
            start = time.perf_counter()
            summary = train(work, cfg, run_name=f"{setting}-{method}-s{seed}-{stamp}",
                            progress=False)
            scores, predictions = scorer(Path(summary["run_dir"]))
            seconds = time.perf_counter() - start
            quality = late_pseudo_label_quality(Path(summary["metrics_csv"]))
            if method == "none":
                baselines[seed] = predictions
            spread = (scorer.people_spread(baselines[seed], predictions)
                      if method != "none" and seed in baselines else {})
            rows.append({"method": method, "seed": seed, **scores, **quality, **spread,
                         "seconds": round(seconds)})
            print(f"{setting:<4} seed {seed} {method:<10} val {scores['val']:.4f} "
                  f"test {scores['test']:.4f} ({seconds:.0f} s)"
                  + "".join(f"  {k} {v:.3f}" for k, v in quality.items()), flush=True)
    return rows


def late_pseudo_label_quality(metrics_csv: Path) -> dict[str, float]:
    """Mean mask_ratio and pseudo_acc (where known) over the last quarter of the logged rows."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    late = rows[len(rows) * 3 // 4:]
    quality = {}
    for key in ("mask_ratio", "pseudo_acc"):
        values = [float(r[key]) for r in late if r.get(key)]
        if values:
            quality[key] = round(statistics.mean(values), 4)
    return quality


def print_summary(setting: str, rows: list[dict[str, Any]], methods: list[str]) -> None:
    print(f"\nsetting '{setting}': raw-frame macro-F1, mean +- std over seeds")
    print(f"{'method':<10} {'val':>15} {'test':>15} {'val - none':>20} {'test - none':>20}")
    by = {(r["method"], r["seed"]): r for r in rows}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = [_mean_std([r[split] for r in mine]) for split in ("val", "test")]
        diffs = []
        for split in ("val", "test"):
            paired = [r[split] - by[("none", r["seed"])][split] for r in mine
                      if ("none", r["seed"]) in by]
            diffs.append(_mean_std(paired, signed=True) if method != "none" and paired else "")
        print(f"{method:<10} {cells[0]:>15} {cells[1]:>15} {diffs[0]:>20} {diffs[1]:>20}")
    for method in methods:
        spreads = [r for r in rows if r["method"] == method and "val_people_std" in r]
        if spreads:
            print(f"{method} - none, std over draws of the people, per seed: val "
                  f"{[r['val_people_std'] for r in spreads]}, test "
                  f"{[r['test_people_std'] for r in spreads]}")
    baseline = [r for r in rows if r["method"] == "none"]
    if len(baseline) > 1:  # issue #9's demo checks: val and test agree, seeds agree
        gap = abs(statistics.mean(r["val"] for r in baseline)
                  - statistics.mean(r["test"] for r in baseline))
        spread = statistics.stdev(r["val"] for r in baseline)
        print(f"demo checks (none): |val - test| {gap:.4f} (target <= 0.05), "
              f"seed std of val {spread:.4f} (target <= 0.015)")


def _mean_std(values: list[float], signed: bool = False) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.mean(values)
    return f"{mean:+.4f} +- {std:.4f}" if signed else f"{mean:.4f} +- {std:.4f}"


def write_json(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
