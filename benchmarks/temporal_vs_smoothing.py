"""Does the temporal model beat frame-wise prediction plus the best smoothing? (issue #12 table)

For every seed of ``--seeds``, on the built-in demo: trains the demo's frame model (the default
chain, ``abaw train`` with demo.yaml and that seed), embeds every split (``abaw embed``), trains
the temporal model on the same frame model (``abaw train-temporal``, the run's ``temporal``
section plus ``--set`` overrides, same seed), and scores four rows with the same evaluation
code as ``abaw evaluate`` / ``abaw submit`` (no-face interpolation included):

- frame: the frame model's raw frames;             - frame + smoothing: the filter chosen on val;
- temporal: the stitched temporal outputs, raw;    - temporal + smoothing: its own choice on val.

A fifth row, the segment vote, is a ceiling and not a method: every run of one true label in
a video gets the argmax of the frame model's mean probability over the run, i.e. what
aggregating the frame predictions over time could give at most if the segment boundaries were
known (the true labels place them).

Scores: val macro-F1 and the demo's hidden test macro-F1 (the submission's). It prints mean
+- std per row and the per-seed paired difference temporal - (frame + smoothing) with its
spread. Frame runs and embeddings are kept in ``--work`` and reused by a rerun (only the
temporal model is retrained), so trying temporal settings costs one temporal training per seed.

    python benchmarks/temporal_vs_smoothing.py --seeds 0 1 2 --work /tmp/tbench --out t.json

``--fit-on-val`` is a diagnostic: the temporal model is trained on the val split's people
(whom the frame model never saw, so their embeddings carry the errors it makes on new people)
instead of the train split's, in a view of the workspace (``<work>/fit-on-val``: the val store
and embeddings stand in for train, the originals are not touched). Only the test column is then
a fair score; val is the training people.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_kit import submission
from abaw_kit.config import resolve_train_config
from abaw_kit.data.store import FaceStore
from abaw_kit.embed import embed_run
from abaw_kit.evaluate import evaluate_split, make_submission
from abaw_kit.infer import split_probabilities
from abaw_kit.metrics import macro_f1
from abaw_kit.prepare import PrepareOptions, prepare
from abaw_kit.run_dir import RunDir
from abaw_kit.smoothing import fill_missing
from abaw_kit.temporal.train import resolve_temporal_config, train_temporal
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

ROWS = (("frame", "none"), ("frame", "auto"), ("temporal", "none"), ("temporal", "auto"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="workspace (default: a temporary one, demo generated there)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="temporal override, e.g. --set temporal.model=tcn (repeatable)")
    parser.add_argument("--fit-on-val", action="store_true",
                        help="diagnostic: train the temporal model on the val people (see above)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abaw-temporal-") as scratch:
        work = Workspace(args.work or Path(scratch) / "work").ensure()
        ensure_demo_workspace(work)
        started = time.perf_counter()
        rows = []
        for seed in args.seeds:
            name = ensure_frame_run(work, seed)
            fit = fit_on_val_view(work, name) if args.fit_on_val else work
            rows.append(score_seed(fit, name, seed, args.overrides))
        minutes = (time.perf_counter() - started) / 60
    print_summary(rows)
    print(f"took {minutes:.1f} min for {len(args.seeds)} seeds")
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps({"overrides": args.overrides, "fit_on_val": args.fit_on_val,
                                   "rows": rows,
                                   "minutes": round(minutes, 1)}, indent=2) + "\n")
        tmp.replace(args.out)


def ensure_demo_workspace(work: Workspace) -> None:
    """Prepare the demo (train, val, test) once; `prepare` ingests its unlabelled faces too."""
    if not all((folder / "index.parquet").is_file()
               for folder in (work.store_dir("test"), work.unlabeled_dir)):
        prepare(work, PrepareOptions(splits=("train", "val", "test")))


def ensure_frame_run(work: Workspace, seed: int) -> str:
    """The seed's frame run and its embeddings, made once and kept; its name."""
    name = f"frame-seed{seed}"
    if not RunDir(work.run_path(name)).best.is_file():
        cfg = resolve_train_config(work, None, [], {"seed": seed})
        train(work, cfg, run_name=name, progress=False)
    embed_run(work, name)
    return name


def fit_on_val_view(work: Workspace, name: str) -> Workspace:
    """``<work>/fit-on-val``: the workspace with the val store and the run's val embeddings as
    its train split (symbolic links to the stores, copies of the run's small files, so that
    nothing written there reaches the original)."""
    view = Workspace(work.root / "fit-on-val")
    view.root.mkdir(exist_ok=True)
    own = {work.store_dir("train").parent.name, work.runs_dir.name, view.root.name}
    for entry in work.root.iterdir():
        if entry.name not in own and not (view.root / entry.name).exists():
            (view.root / entry.name).symlink_to(entry.resolve())
    for split, source in (("train", "val"), ("val", "val"), ("test", "test")):
        link = view.store_dir(split)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(work.store_dir(source).resolve())
    run, copy = RunDir(work.run_path(name)), view.run_path(name)
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    shutil.copy2(run.path / "config.yaml", copy / "config.yaml")
    shutil.copytree(run.path / "checkpoints", copy / "checkpoints")
    for split, source in (("train", "val"), ("val", "val"), ("test", "test")):
        shutil.copytree(run.embeddings(source), copy / "embeddings" / split)
    return view


def score_seed(work: Workspace, name: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The temporal model (retrained) on frame run ``name``, and the four scored rows."""
    run_dir = work.run_dir(name)
    cfg = resolve_temporal_config(run_dir, None, overrides, {"temporal.seed": seed})
    started = time.perf_counter()
    summary = train_temporal(work, cfg, run=name, force=True, progress=False,
                             log=lambda m: None)
    result: dict[str, Any] = {"seed": seed, "temporal_minutes":
                              round((time.perf_counter() - started) / 60, 2),
                              "temporal_windows_per_s": round(summary["windows_per_s"], 1)}
    with tempfile.TemporaryDirectory() as out:
        for model, smooth in ROWS:
            val = evaluate_split(work, "val", run=name, smooth=smooth, model=model)
            test = make_submission(work, run=name, out=Path(out) / "sub.txt", force=True,
                                   smooth=None if smooth == "auto" else smooth, model=model)
            key = model if smooth == "none" else f"{model}+smoothing"
            result[key] = {"val": round(val["macro_f1"], 4),
                           "test": round(test["demo_test_macro_f1"], 4),
                           "smoothing": val["smoothing"]}
    result["segment vote"] = {split: segment_vote_f1(work, name, split)
                              for split in ("val", "test")}
    print(json.dumps(result))
    return result


def segment_vote_f1(work: Workspace, name: str, split: str) -> float:
    """Macro-F1 when every run of one true label in a video takes the argmax of the frame
    model's mean probability over the run (the module docstring's ceiling)."""
    store = FaceStore(work.store_dir(split))
    index = store.index
    labels = index["label"].to_numpy()
    if split == "test":  # the store hides them: the demo's hidden file has them
        truth = submission.read_predictions(work.read_source().test_labels_file)
        labels = index[["video", "frame"]].merge(truth, on=["video", "frame"], how="left")[
            "label"].fillna(-1).astype(int).to_numpy()
    probs = split_probabilities(work.run_dir(name), store, split)
    probs = fill_missing(probs, index["video"])  # frames without a face, as evaluate does
    new_video = index["video"].ne(index["video"].shift()).to_numpy()
    new_label = np.r_[True, labels[1:] != labels[:-1]]
    runs = np.cumsum(new_video | new_label)
    scored = labels >= 0
    means = pd.DataFrame(probs[scored]).groupby(runs[scored]).mean()
    votes = means.to_numpy().argmax(axis=1)[np.searchsorted(means.index.to_numpy(),
                                                            runs[scored])]
    return round(macro_f1(labels[scored], votes), 4)


def print_summary(rows: list[dict[str, Any]]) -> None:
    keys = [*(m if s == "none" else f"{m}+smoothing" for m, s in ROWS), "segment vote"]
    print("\nmacro-F1, mean +- std over seeds (demo val and hidden test)")
    print(f"{'row':<22} {'val':>16} {'test':>16} {'val - f+s':>18} {'test - f+s':>18}")
    for key in keys:
        cells = [_mean_std([r[key][split] for r in rows]) for split in ("val", "test")]
        diffs = ["", ""]
        if key.startswith("temporal"):
            diffs = [_mean_std([r[key][split] - r["frame+smoothing"][split] for r in rows],
                               signed=True) for split in ("val", "test")]
        print(f"{key:<22} {cells[0]:>16} {cells[1]:>16} {diffs[0]:>18} {diffs[1]:>18}")
    for key in ("temporal", "temporal+smoothing"):
        for split in ("val", "test"):
            paired = [round(r[key][split] - r["frame+smoothing"][split], 4) for r in rows]
            print(f"per seed {key} - frame+smoothing ({split}): {paired}")


def _mean_std(values: list[float], signed: bool = False) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.mean(values)
    return f"{mean:+.4f} +- {std:.4f}" if signed else f"{mean:.4f} +- {std:.4f}"


if __name__ == "__main__":
    main()
