"""Unlabelled images that passed `ingest --verify sample` but do not decode: training skips
them (the next pool image takes their place, the same on every run), counts them and says so
at the end; a user error in a loader worker reaches the console as its own one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, make_workspace, tiny_config
from test_unlabeled_recordio import make_jpeg

from abaw_kit.errors import AbawError
from abaw_kit.train.checkpoint import load_checkpoint
from abaw_kit.train.data import UnlabelledBatches, UnlabelledPool, Views
from abaw_kit.train.run import train
from abaw_kit.unlabeled.index import BrokenImage
from abaw_kit.unlabeled.ingest import ingest
from abaw_kit.workspace import Workspace

BROKEN = (3, 7, 12)  # pool positions of the images whose pixels are cut off
POOL = 13
# The pool is the ingested index alone, and two steps of 8 x 2 images draw all of it.
SMALL_POOL = ["data.use_affwild_unlabelled=false", "train.steps=2", "train.ckpt_every=2",
              "eval.every=0"]


def ingest_with_broken_images(work: Workspace) -> Path:
    """A folder of POOL JPEGs, those at BROKEN cut short (their header still parses), indexed
    without decoding, as `--verify sample` does for most images of a large set."""
    folder = work.root.parent / "faces"
    folder.mkdir()
    for i in range(POOL):
        data = make_jpeg(100 + i, size=48)
        (folder / f"{i:02d}.jpg").write_bytes(data[:-400] if i in BROKEN else data)
    summary = ingest([folder], work.unlabeled_dir, verify="none")
    assert summary["ingested"] == POOL
    return folder


class FlakySource:
    """Pool images where some positions do not decode."""

    def __init__(self, count: int, broken: set[int]) -> None:
        self.count, self.broken = count, broken

    def __len__(self) -> int:
        return self.count

    def image(self, i: int) -> np.ndarray:
        if i in self.broken:
            raise BrokenImage(f"image {i} does not decode")
        return np.full((112, 112, 3), i * 10, dtype=np.uint8)


def test_a_broken_image_is_replaced_by_the_next_one_the_same_way_every_time() -> None:
    views = Views(tiny_config().data)
    batches = UnlabelledBatches(UnlabelledPool({"index": FlakySource(6, {1, 2, 5})}), views,
                                seed=3)
    item = (4, np.array([0, 1, 5, 3]))
    weak, strong, used, broken = batches[item]
    assert used.tolist() == [0, 3, 0, 3]  # 1 and 2 -> 3; 5 wraps round to 0
    assert broken.tolist() == [1, 2, 5]
    again = batches[item]  # a resumed run rebuilds batch 4 exactly
    assert torch.equal(weak, again[0]) and torch.equal(strong, again[1])
    assert torch.equal(used, again[2]) and torch.equal(broken, again[3])
    dead = UnlabelledBatches(UnlabelledPool({"index": FlakySource(3, {0, 1, 2})}), views,
                             seed=3)
    with pytest.raises(AbawError, match=r"3 unlabelled images in a row do not decode") as err:
        dead[(0, np.array([1]))]
    assert "\n" not in str(err.value)


def test_training_skips_broken_images_met_in_workers_and_reports_them(tmp_path: Path) -> None:
    work = make_workspace(tmp_path / "work")
    ingest_with_broken_images(work)
    lines: list[str] = []
    summary = train(work, tiny_config(*SMALL_POOL, "data.num_workers=1", ssl="fixmatch"),
                    run_name="broken", progress=False, log=lines.append)
    assert summary["completed"] and summary["unlabelled_images"] == POOL
    assert summary["unlabelled_broken"] == len(BROKEN)
    [note] = [line for line in lines if "do not decode" in line]
    assert note.startswith(f"skipped {len(BROKEN)} unlabelled image(s)") and "03.jpg" in note


@pytest.mark.slow
def test_a_user_error_in_a_loader_worker_is_one_line_on_the_console(tmp_path: Path) -> None:
    work = make_workspace(tmp_path / "work")
    folder = ingest_with_broken_images(work)
    (folder / "05.jpg").unlink()  # the data changed since ingest: not a broken image
    settings = [*TINY, *SMALL_POOL, "data.num_workers=1"]  # the last setting wins
    args = ["train", "--ssl", "fixmatch", "--work", str(work.root), "--run", "gone", "--json",
            *(arg for s in settings for arg in ("--set", s))]
    proc = subprocess.run([sys.executable, "-m", "abaw_kit", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unlabelled image 5 ")
    assert "05.jpg" in lines[0] and "cannot be read" in lines[0]


@pytest.mark.slow
def test_a_resumed_run_meets_the_same_replacements_and_ends_identical(tmp_path: Path) -> None:
    work = make_workspace(tmp_path / "work")
    ingest_with_broken_images(work)
    # flexmatch keeps per-image state by pool index: the replacement's index must be the same
    cfg = tiny_config(*SMALL_POOL, "train.steps=3", "train.ckpt_every=1", ssl="flexmatch")
    whole = train(work, cfg, run_name="whole", progress=False)
    train(work, cfg, run_name="split", progress=False, stop_after=1)
    train(work, None, run_name="split", resume=True, progress=False)
    for (a, state_a), (b, state_b) in [(load_checkpoint(work.runs_dir / r / "checkpoints")
                                        for r in ("whole", "split"))]:
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(state_b["threshold"][k]))
                   for k, v in state_a["threshold"].items())
    assert whole["unlabelled_broken"] == len(BROKEN)
