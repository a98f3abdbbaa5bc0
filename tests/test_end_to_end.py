"""The whole chain on a small demo release, through the CLI as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from abaw_kit.data.release import read_example_file
from abaw_kit.demo.generate import generate_demo


def abaw(*args, work):
    proc = subprocess.run([sys.executable, "-m", "abaw_kit", *args, "--work", str(work),
                           "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "release", scale=0.2)


@pytest.mark.slow
def test_prepare_train_evaluate_submit(demo_root, tmp_path):
    work = tmp_path / "work"
    prepared = abaw("prepare", "--data-root", str(demo_root), work=work)
    assert prepared["is_demo"] and prepared["unlabeled"]["ingested"] > 0
    assert prepared["splits"]["train"]["labelled_frames_with_face"] > 0

    trained = abaw("train", "--ssl", "dtm", "--steps", "12", "--set", "eval.every=6",
                   "--set", "train.log_every=3", "--set", "ssl.params.warmup_steps=3",
                   "--set", "ssl.params.min_threshold=0.05",
                   "--run", "e2e", work=work)
    assert trained["completed"] and trained["steps"] == 12
    assert 0.0 <= trained["best_val_f1"] <= 1.0
    run_dir = work / "runs" / "e2e"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    # the demo knows the class of its unlabelled faces: the log says how right pseudo-labels are
    with (run_dir / "metrics.csv").open(newline="") as handle:
        accuracy = [float(r["pseudo_acc"]) for r in csv.DictReader(handle) if r["pseudo_acc"]]
    assert accuracy and all(0.0 <= a <= 1.0 for a in accuracy)
    assert (run_dir / "plots" / "ssl_overview.png").is_file()

    evaluated = abaw("evaluate", "--split", "val", work=work)
    assert evaluated["run"] == "e2e" and 0.0 <= evaluated["macro_f1"] <= 1.0
    assert (run_dir / "smoothing.json").is_file()

    out = tmp_path / "sub.txt"
    submitted = abaw("submit", "--out", str(out), work=work)
    example = read_example_file(next((demo_root / "test_set_examples").glob("*.txt")))
    assert submitted["frames"] == len(example)
    lines = out.read_text().splitlines()
    assert len(lines) == len(example) + 1
    assert lines[1].split(",")[0] == f"{example.video[0]}/{example.frame[0]:05d}.jpg"
    checked = abaw("submit", "--check", str(out), work=work)
    assert checked["frames"] == len(example)
