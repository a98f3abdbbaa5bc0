"""`abaw predict` on real videos with the released RetinaFace weights, through the CLI.

Needs the shared media and weights next to the repository (``<repo>/../shared``); skipped
where they are absent. The model is test_infer's tiny run (a few CPU steps): these tests check
faces found, frames filled and files written, not what the expressions are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import make_workspace, tiny_config
from typer.testing import CliRunner

from abaw_kit.classes import CLASS_NAMES
from abaw_kit.cli import app
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "retinaface_mobilenet0.25_biubug6.pth"
SINGLE_FACE = SHARED / "data" / "real_faces" / "single_face.mp4"
FACE_NOFACE = SHARED / "data" / "real_faces" / "face_noface.mov"
FACE_FRAMES = 72  # face_noface.mov: frames 1-72 show a face, 73-169 a cartoon without one
SLACK = 2  # frames of tolerance at the face / no-face boundary

pytestmark = pytest.mark.slow  # a tiny training run, then detection on two real videos

_absent = [p for p in (WEIGHTS, SINGLE_FACE, FACE_NOFACE) if not p.is_file()]
if _absent:
    pytest.skip(f"shared test media or weights absent: {', '.join(map(str, _absent))}",
                allow_module_level=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace holding one tiny trained run (test_infer's recipe)."""
    ws = make_workspace(tmp_path_factory.mktemp("real_video") / "work")
    train(ws, tiny_config("train.steps=2", "eval.every=2", ssl="none"), run_name="run",
          progress=False)
    return ws


def predict(work: Workspace, out_dir: Path, *videos: Path) -> dict:
    result = CliRunner().invoke(app, ["predict", *map(str, videos), "--detector-weights",
                                      str(WEIGHTS), "--device", "cpu", "--out-dir", str(out_dir),
                                      "--work", str(work.root), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def predicted(work: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One call on both videos (detection on CPU is the slow part: each video runs once); the
    per-video tests read its outputs, which the loop writes the same as a one-video call."""
    out = tmp_path_factory.mktemp("predictions")
    return out, predict(work, out, SINGLE_FACE, FACE_NOFACE)


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(has_face per row, the 8 probabilities per row) of a predict CSV."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(1, len(rows) + 1))
    has_face = np.array([int(r["has_face"]) for r in rows])
    probs = np.array([[float(r[name]) for name in CLASS_NAMES] for r in rows])
    return has_face, probs


def assert_distributions(probs: np.ndarray) -> None:
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0


def video_result(predicted: tuple[Path, dict], video: Path) -> dict:
    return next(v for v in predicted[1]["videos"] if Path(v["video"]) == video)


def test_single_face_video_has_a_face_on_every_frame(predicted: tuple[Path, dict]) -> None:
    video = video_result(predicted, SINGLE_FACE)
    assert video["frames"] == 72 and video["frames_with_face"] == 72
    has_face, probs = read_rows(Path(video["csv"]))
    assert len(has_face) == 72 and (has_face == 1).all()
    assert_distributions(probs)
    assert_png(Path(video["timeline"]))


def test_frames_without_a_face_are_marked_and_filled(predicted: tuple[Path, dict]) -> None:
    video = video_result(predicted, FACE_NOFACE)
    assert video["frames"] == 169
    assert FACE_FRAMES - SLACK <= video["frames_with_face"] <= FACE_FRAMES
    has_face, probs = read_rows(Path(video["csv"]))
    assert len(has_face) == 169 and has_face.sum() == video["frames_with_face"]
    assert (has_face[:FACE_FRAMES - SLACK] == 1).all()  # rows 1..70
    assert (has_face[FACE_FRAMES + SLACK:] == 0).all()  # rows 75..169
    # the boundary may move by SLACK frames but not flicker: faces first, then none
    assert (np.diff(has_face) <= 0).all()
    assert_distributions(probs[has_face == 0])
    assert_png(Path(video["timeline"]))


def test_two_videos_in_one_call_give_two_csvs(predicted: tuple[Path, dict]) -> None:
    out, result = predicted
    assert [Path(v["video"]) for v in result["videos"]] == [SINGLE_FACE, FACE_NOFACE]
    assert sorted(p.name for p in out.iterdir()) == ["face_noface.csv", "face_noface.png",
                                                      "single_face.csv", "single_face.png"]
    assert [Path(v["csv"]) for v in result["videos"]] == [(out / "single_face.csv").resolve(),
                                                          (out / "face_noface.csv").resolve()]
