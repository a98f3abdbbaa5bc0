"""How right would a trained run's pseudo-labels be? Accuracy against confidence, on the demo.

Pseudo-labelling only helps when the teacher's confident predictions on the unlabelled images
are mostly right. The demo knows every hidden label, so this measures it for one run's EMA
weights (last checkpoint) on three sets, without augmentation:

- withheld: the train frames a few-label run (``data.labelled_fraction`` < 1) did not train on
  (the same identities as its labelled frames);
- unlabelled: the demo's face-recognition images (``demo_unlabeled_labels.csv``; new identities);
- val: the validation frames (new identities, the Aff-Wild2 side).

For each it prints the accuracy of all predictions, and the share and accuracy of those whose
confidence reaches 0.5 / 0.8 / 0.95 (the range pseudo-label thresholds live in).

    python benchmarks/pseudo_label_quality.py --work WORK --run few0.02-none-s0-...
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from abaw_kit import demo
from abaw_kit.classes import CLASS_NAMES
from abaw_kit.data.store import FaceStore
from abaw_kit.infer import load_run_model, predict_faces, predict_rows
from abaw_kit.train.data import few_label_subset
from abaw_kit.unlabeled.recordio import iter_recordio, read_image_at
from abaw_kit.workspace import Workspace

CUTOFFS = (0.5, 0.8, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="workspace prepared from the demo")
    parser.add_argument("--run", required=True, help="run name under <work>/runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    work = Workspace(args.work)
    loaded = load_run_model(work.run_dir(args.run), device="cpu", which="last")
    data_root = work.data_root()
    results = {}
    train = FaceStore(work.store_dir("train"))
    rows = train.rows(labelled=True, with_face=True)
    labels = train.index["label"].to_numpy(np.int64)[rows]
    keep = few_label_subset(labels, loaded.cfg.data.labelled_fraction, loaded.cfg.train.seed)
    if not keep.all():
        probs = predict_rows(loaded.model, loaded.normalize, train, rows[~keep], batch_size=256,
                             num_workers=0)
        results["withheld"] = quality(probs, labels[~keep])
    faces, truth = demo_unlabelled_faces(data_root)
    unlabelled_probs = predict_faces(loaded, faces)
    results["unlabelled"] = quality(unlabelled_probs, truth)
    results["unlabelled_per_class"] = per_class(unlabelled_probs, truth)
    val = FaceStore(work.store_dir("val"))
    val_rows = val.rows(labelled=True, with_face=True)
    probs = predict_rows(loaded.model, loaded.normalize, val, val_rows, batch_size=256,
                         num_workers=0)
    results["val"] = quality(probs, val.index["label"].to_numpy(np.int64)[val_rows])

    print(f"run {args.run} (step {loaded.step}, EMA weights)")
    print(f"{'set':<11} {'images':>7} {'acc':>6}" + "".join(
        f"  {'share@' + str(c):>10} {'acc@' + str(c):>8}" for c in CUTOFFS))
    for name, row in results.items():
        if name.endswith("per_class"):
            continue
        print(f"{name:<11} {row['images']:>7} {row['accuracy']:6.3f}" + "".join(
            f"  {row[f'share@{c}']:10.3f} {row[f'acc@{c}']:8.3f}" for c in CUTOFFS))
    print(f"\nunlabelled photos per class (argmax; recall also at confidence >= {CUTOFFS[-1]})")
    print(f"{'class':<10} {'share':>6} {'predicted':>9} {'precision':>9} {'recall':>7} "
          f"{'recall@' + str(CUTOFFS[-1]):>12}")
    for name, row in results["unlabelled_per_class"].items():
        print(f"{name:<10} {row['share']:6.3f} {row['predicted']:9.3f} {row['precision']:9.2f} "
              f"{row['recall']:7.2f} {row['recall_confident']:12.2f}")
    if args.out:
        args.out.write_text(json.dumps({"run": args.run, **results}, indent=2))


def per_class(probs: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Per class: share of the images, share predicted, precision and recall of the argmax, and
    recall among predictions confident enough for a pseudo-label threshold to keep them.

    Why: a threshold can only choose among the teacher's predictions; a class the teacher
    rarely predicts right on these images cannot gain pseudo-labels at any threshold.
    """
    confident = probs.max(axis=1) >= CUTOFFS[-1]
    predicted = probs.argmax(axis=1)
    out = {}
    for index, name in enumerate(CLASS_NAMES):
        is_class, called = truth == index, predicted == index
        hits = is_class & called
        out[name] = {"share": float(is_class.mean()), "predicted": float(called.mean()),
                     "precision": float(hits.sum() / max(called.sum(), 1)),
                     "recall": float(hits.sum() / max(is_class.sum(), 1)),
                     "recall_confident": float((hits & confident).sum() / max(is_class.sum(), 1))}
    return out


def quality(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    right = predicted == truth
    row: dict[str, float] = {"images": len(truth), "accuracy": float(right.mean())}
    for cutoff in CUTOFFS:
        passed = confidence >= cutoff
        row[f"share@{cutoff}"] = float(passed.mean())
        row[f"acc@{cutoff}"] = float(right[passed].mean()) if passed.any() else float("nan")
    return row


def demo_unlabelled_faces(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The demo's unlabelled faces (folder and RecordIO) with the class each was drawn with."""
    table = pd.read_csv(root / demo.UNLABELED_LABELS_FILE)
    rec_dir = root / demo.UNLABELED_RECORDIO
    records = list(iter_recordio(rec_dir / "train.rec", rec_dir / "train.idx"))[1:]  # meta first
    fd = os.open(rec_dir / "train.rec", os.O_RDONLY)
    faces = []
    try:
        for path in table["path"]:
            if "#" in path:
                data = read_image_at(fd, records[int(path.rsplit("#", 1)[1])].offset)
                image = Image.open(io.BytesIO(data))
            else:
                image = Image.open(root / path)
            faces.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    finally:
        os.close(fd)
    return np.stack(faces), table["label"].to_numpy(np.int64)


if __name__ == "__main__":
    main()
