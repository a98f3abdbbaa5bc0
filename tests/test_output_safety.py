"""Issue 10: outputs never overwrite silently nor land in the release; odd inputs are one line.

Through the CLI as users run it. No model is trained: evaluate/submit get the synthetic
probabilities of test_evaluate, predict a stand-in model and a detector that finds no face.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_evaluate import VAL, Provider, make_eval_workspace
from typer.testing import CliRunner, Result

import abaw_kit.evaluate as evaluate_module
import abaw_kit.faces as faces_module
import abaw_kit.infer as infer_module
from abaw_kit.classes import ANNOTATION_HEADER, SUBMISSION_HEADER
from abaw_kit.cli import app
from abaw_kit.data.video import write_video
from abaw_kit.errors import AbawError
from abaw_kit.faces.detector import Detections
from abaw_kit.smoothing import MAX_SIGMA_FRAMES, choose_smoothing, smooth
from abaw_kit.submission import MAX_FILE_BYTES, read_predictions
from abaw_kit.workspace import Workspace

VAL_FRAMES = sum(len(labels) for labels, _ in VAL.values())
LONGEST_VAL_VIDEO = max(len(labels) for labels, _ in VAL.values())


def abaw(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, *expected: str) -> str:
    """Exit 2, no traceback, and one line on stderr that contains every ``expected``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """test_evaluate's workspace (data root: tmp_path/release) whose model is a Provider."""
    monkeypatch.setattr(evaluate_module, "model_probabilities", lambda *a, **k: Provider())
    return make_eval_workspace(tmp_path)


@pytest.fixture
def annotation(tmp_path: Path) -> Path:
    """A release annotation file inside the workspace's data root."""
    path = (tmp_path / "release" / "5th_ABAW_Annotations" / "EXPR_Classification_Challenge"
            / "Train_Set" / "117.txt")
    path.parent.mkdir(parents=True)
    path.write_text(ANNOTATION_HEADER + "\n0\n4\n4\n")
    return path


# ----------------------------------------------------------------------------- problem 1


def test_evaluate_write_predictions_refuses_an_existing_file_unless_force(
        work: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "val_predictions.txt"
    out.write_text("earlier results\n")
    args = ("evaluate", "--smooth", "none", "--write-predictions", out, "--work", work.root)
    assert_one_line_error(abaw(*args), str(out), "already exists", "--force")
    assert out.read_text() == "earlier results\n"
    assert abaw(*args, "--force").exit_code == 0
    assert len(read_predictions(out)) == VAL_FRAMES


def test_evaluate_never_writes_inside_the_data_root(work: Workspace, tmp_path: Path,
                                                    annotation: Path) -> None:
    before = annotation.read_bytes()
    link = tmp_path / "innocent.txt"
    link.symlink_to(annotation)
    for target in (annotation, annotation.with_name("new.txt"), link):
        result = abaw("evaluate", "--smooth", "none", "--write-predictions", target, "--force",
                      "--work", work.root)
        assert_one_line_error(result, str(target), "inside the data root")
    assert annotation.read_bytes() == before
    assert not annotation.with_name("new.txt").exists()


def test_submit_out_needs_force_and_never_the_data_root(work: Workspace,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "mine.txt"
    out.write_text("an earlier submission\n")
    assert_one_line_error(abaw("submit", "--out", out, "--work", work.root),
                          str(out), "already exists", "--force")
    assert out.read_text() == "an earlier submission\n"
    done = abaw("submit", "--out", out, "--force", "--work", work.root, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["path"] == str(out.resolve())
    assert out.read_text().startswith(SUBMISSION_HEADER + "\n")
    example = tmp_path / "release" / "test_set_examples" / "example.txt"
    before = example.read_bytes()
    assert_one_line_error(abaw("submit", "--out", example, "--force", "--work", work.root),
                          str(example), "inside the data root")
    assert_one_line_error(abaw("submit", "--out", example.parent, "--work", work.root),
                          "inside the data root")
    assert example.read_bytes() == before
    assert sorted(p.name for p in example.parent.iterdir()) == ["example.txt"]


# ----------------------------------------------------------------------------- problems 2, 3, 5


@pytest.fixture
def stand_in_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """predict without a trained model: a CPU stand-in and a detector that finds no face (every
    frame then gets the uniform distribution; the output files are what these tests check)."""

    class NoFaces:
        name = "none"

        def detect(self, images: np.ndarray) -> list[Detections]:
            return [Detections.empty() for _ in images]

    monkeypatch.setattr(infer_module, "load_run_model",
                        lambda run_dir, device="auto": SimpleNamespace(
                            device=SimpleNamespace(type="cpu")))
    monkeypatch.setattr(faces_module, "make_detector", lambda *a, **k: NoFaces())


def _clip(path: Path, frames: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, [np.full((64, 64, 3), 40 + 10 * i, np.uint8) for i in range(frames)])
    return path


def test_predict_same_stem_videos_get_their_own_outputs(work: Workspace, tmp_path: Path,
                                                        stand_in_model: None) -> None:
    first, second = _clip(tmp_path / "a" / "clip.mp4", 6), _clip(tmp_path / "b" / "clip.mp4", 8)
    out = tmp_path / "out"
    result = abaw("predict", first, second, "--out-dir", out, "--work", work.root, "--json")
    assert result.exit_code == 0, result.output
    csvs = [Path(v["csv"]) for v in json.loads(result.stdout)["videos"]]
    assert [p.name for p in csvs] == ["a_clip.csv", "b_clip.csv"]
    assert [len(p.read_text().splitlines()) for p in csvs] == [7, 9]  # header + one per frame
    assert sorted(p.name for p in out.iterdir()) == ["a_clip.csv", "a_clip.png",
                                                      "b_clip.csv", "b_clip.png"]


def test_predict_refuses_to_overwrite_earlier_predictions_unless_force(
        work: Workspace, tmp_path: Path, stand_in_model: None) -> None:
    video = _clip(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert abaw("predict", video, "--out-dir", out, "--work", work.root).exit_code == 0
    earlier = out / "clip.csv"
    earlier.write_text("kept\n")
    assert_one_line_error(abaw("predict", video, "--out-dir", out, "--work", work.root),
                          str(earlier), "already exists", "--force")
    assert earlier.read_text() == "kept\n"
    again = abaw("predict", video, "--out-dir", out, "--force", "--work", work.root)
    assert again.exit_code == 0, again.output
    assert earlier.read_text().startswith("frame,")


def test_default_outputs_go_to_the_workspace(work: Workspace, tmp_path: Path,
                                             stand_in_model: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    video = _clip(tmp_path / "clip.mp4")
    assert abaw("predict", video, "--work", work.root).exit_code == 0
    assert abaw("submit", "--work", work.root).exit_code == 0
    assert list(elsewhere.iterdir()) == []
    assert (work.root / "predictions" / "clip.csv").is_file()
    assert (work.root / "submissions" / "expr_submission_1.txt").is_file()


def test_predict_refuses_text_and_images_as_videos(work: Workspace, tmp_path: Path,
                                                   stand_in_model: None) -> None:
    notes = tmp_path / "notes.txt"  # ffmpeg renders such text as a 25 fps "video"
    notes.write_text("\n".join(f"frame {i}: Neutral,Anger,Disgust,Fear,Happiness,Sadness"
                               for i in range(60)) + "\n")
    assert_one_line_error(abaw("predict", notes, "--work", work.root),
                          str(notes), "text file", "not a video")
    photo = tmp_path / "photo.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)
    assert_one_line_error(abaw("predict", photo, "--work", work.root),
                          str(photo), "still image")
    assert not (work.root / "predictions").exists()


# ----------------------------------------------------------------------------- problem 4


def _odd_input(kind: str, tmp_path: Path) -> Path:
    if kind == "folder":
        path = tmp_path / "a_folder"
        path.mkdir()
        return path
    if kind == "device":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero here")
        return Path("/dev/zero")
    path = tmp_path / "huge.txt"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    return path


@pytest.mark.parametrize("command", [("evaluate", "--predictions"), ("submit", "--check")],
                         ids=["evaluate", "submit"])
@pytest.mark.parametrize("kind", ["folder", "device", "huge"])
def test_prediction_file_that_is_no_text_file_is_one_line(
        work: Workspace, tmp_path: Path, command: tuple[str, str], kind: str) -> None:
    path = _odd_input(kind, tmp_path)
    expected = {"folder": "is a folder", "device": "not a regular file", "huge": "larger than"}
    assert_one_line_error(abaw(*command, path, "--work", work.root), str(path), expected[kind])


@pytest.mark.parametrize("spec", ["gauss:10000000", "mean:1000000000000", "median:61",
                                  "mean:" + "9" * 400])
def test_smoothing_longer_than_the_longest_video_is_an_error(work: Workspace,
                                                             spec: str) -> None:
    result = abaw("evaluate", "--smooth", spec, "--work", work.root)
    assert_one_line_error(result, "smoothing")
    if "9" * 400 not in spec:
        assert f"longest video ({LONGEST_VAL_VIDEO} frames)" in result.stderr


def test_sigma_cap_and_auto_candidates_fit_the_videos() -> None:
    probs = np.random.default_rng(0).random((1500, 8))
    with pytest.raises(AbawError, match=f"above the limit of {MAX_SIGMA_FRAMES:g} frames"):
        smooth(probs, ["long"] * 1500, "gauss:1200")
    short = probs[:60]
    labels = np.repeat(np.arange(6), 10)
    _, table = choose_smoothing(short, labels, ["a"] * 30 + ["b"] * 30)
    assert table[0]["spec"] == "none" and max(row["frames"] for row in table) <= 30
