"""`abaw evaluate` / `abaw submit` orchestration on a tiny face store with synthetic probabilities.

No model: a probability provider stands in for abaw_kit.infer.split_probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abaw_kit.classes import SUBMISSION_HEADER
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.errors import AbawError
from abaw_kit.evaluate import (
    check_file,
    evaluate_split,
    evaluation_tables,
    make_submission,
)
from abaw_kit.metrics import macro_f1
from abaw_kit.smoothing import fill_missing, smooth
from abaw_kit.submission import check_submission, format_frame, read_predictions
from abaw_kit.workspace import Workspace

# video: (labels per frame, frames without a face)
VAL = {
    "clip_a": (np.repeat([0, 4, 5, 0], 15), [3, 4, 5, 30]),
    "10-60-1280x720_left": (np.repeat([4, 6], 20), [0, 1]),
    "10-60-1280x720_right": (np.repeat([5, 1, 3], 12), [35]),
    "clip_b": (np.concatenate([np.repeat([7, 2], 20), np.full(5, -1)]), []),
}
# test video: (frames in the store, frames in the example file)
TEST = {
    "t_left": (30, 30),
    "t_right": (30, 30),
    "t_long": (40, 34),   # the video decodes longer than its example entry: extra frames dropped
    "t_short": (20, 25),  # the example lists more frames: the last prediction is repeated
}
TEST_CLASS = {"t_left": 4, "t_right": 5, "t_long": 6, "t_short": 3}
NO_FACE_TEST = {"t_left": [0, 1, 10], "t_long": [39]}


def _write_store(split_dir: Path, videos: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    writer = FaceStoreWriter(split_dir)
    for name, (labels, no_face) in videos.items():
        has_face = np.ones(len(labels), dtype=bool)
        has_face[no_face] = False
        faces = np.zeros((int(has_face.sum()), 112, 112, 3), dtype=np.uint8)
        writer.write_video(name, np.arange(1, len(labels) + 1), labels, has_face, faces)
    writer.finalize(list(videos), {"split": split_dir.name})


def _synthetic_probs(index: pd.DataFrame, split: str) -> np.ndarray:
    """Noisy probabilities that point at the true class (or the test video's class)."""
    rng = np.random.default_rng(7 if split == "val" else 11)
    if split == "test":
        target = index["video"].map(TEST_CLASS).to_numpy()
    else:
        target = np.maximum(index["label"].to_numpy(), 0)
    strength = 0.45 if split == "val" else 1.5  # test: clear enough to check each subject
    probs = np.eye(8)[target] * strength + rng.random((len(index), 8))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    probs[~index["has_face"].to_numpy(bool)] = np.nan
    return probs


class Provider:
    """Records the calls; returns the synthetic probabilities of a split."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, run_dir: Path, store: FaceStore, split: str) -> np.ndarray:
        assert run_dir.name == "r1"
        self.calls.append(split)
        return _synthetic_probs(store.index, split)


def make_eval_workspace(tmp_path: Path) -> Workspace:
    """A prepared workspace: val and test face stores, the release's example file (in
    ``tmp_path/release``, the data root source.json records) and an empty run r1."""
    ws = Workspace(tmp_path / "work").ensure()
    _write_store(ws.store_dir("val"), VAL)
    test_videos = {}
    for name, (n_store, _) in TEST.items():
        test_videos[name] = (np.full(n_store, -1), NO_FACE_TEST.get(name, []))
    _write_store(ws.store_dir("test"), test_videos)
    example = tmp_path / "release" / "test_set_examples" / "example.txt"
    example.parent.mkdir(parents=True)
    lines = [SUBMISSION_HEADER] + [f"{format_frame(name, f)}," for name, (_, n) in TEST.items()
                                   for f in range(1, n + 1)]
    example.write_text("\n".join(lines) + "\n")
    ws.source_file.write_text(json.dumps({"data_root": str(tmp_path / "release"),
                                          "example_file": str(example), "is_demo": False}))
    (ws.runs_dir / "r1").mkdir(parents=True)
    ws.set_latest_run("r1")
    return ws


@pytest.fixture
def work(tmp_path: Path) -> Workspace:
    return make_eval_workspace(tmp_path)


def _example(work: Workspace) -> Path:
    return Path(json.loads(work.source_file.read_text())["example_file"])


def test_evaluate_auto_chooses_records_and_reports(work: Workspace) -> None:
    provider = Provider()
    result = evaluate_split(work, split="val", smooth="auto", probabilities=provider)
    run_dir = work.runs_dir / "r1"
    index = FaceStore(work.store_dir("val")).index
    filled = fill_missing(_synthetic_probs(index, "val"), index["video"])
    labels = index["label"].to_numpy()
    # The reported numbers are the metric of the filled (then smoothed) probabilities.
    assert result["macro_f1_before_smoothing"] == pytest.approx(
        macro_f1(labels, filled.argmax(1)))
    expected = macro_f1(labels, smooth(filled, index["video"], result["smoothing"]).argmax(1))
    assert result["macro_f1"] == pytest.approx(expected)
    assert result["macro_f1"] >= result["macro_f1_before_smoothing"]
    assert result["smoothing"] != "none" and result["smoothing_chosen_on_this_split"]
    assert result["frames_filled"] == 7 and result["videos_without_face"] == []
    assert result["n_frames"] == int((labels >= 0).sum())
    assert set(result["per_video_f1"]) == set(VAL)
    recorded = json.loads((run_dir / "smoothing.json").read_text())
    assert recorded["spec"] == result["smoothing"] and recorded["chosen_on"] == "val"
    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["macro_f1"] == pytest.approx(result["macro_f1"])
    for name in ("confusion", "per_class_f1", "f1_vs_window"):
        assert Path(result["plots"][name]).read_bytes()[:4] == b"\x89PNG"
    assert len(evaluation_tables(result)) == 3
    assert provider.calls == ["val"]


def test_written_predictions_score_the_same_as_in_memory(work: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "val_predictions.txt"
    in_memory = evaluate_split(work, split="val", smooth="mean:5", write_predictions=out,
                               probabilities=Provider())
    assert read_predictions(out).shape[0] == sum(len(v[0]) for v in VAL.values())
    from_file = evaluate_split(work, split="val", predictions_file=out)
    assert from_file["macro_f1"] == pytest.approx(in_memory["macro_f1"], abs=1e-12)
    assert from_file["per_class_f1"] == pytest.approx(in_memory["per_class_f1"])
    assert from_file["lines_ignored"] == 5  # clip_b's unannotated frames


def test_scoring_a_file_names_what_is_wrong(work: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "p.txt"
    evaluate_split(work, split="val", smooth="none", write_predictions=out,
                   probabilities=Provider())
    lines = out.read_text().splitlines()
    (tmp_path / "missing.txt").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    with pytest.raises(AbawError, match=r"no prediction for clip_a/00005.jpg"):
        evaluate_split(work, split="val", predictions_file=tmp_path / "missing.txt")
    (tmp_path / "other.txt").write_text("\n".join(lines + ["zzz/00001.jpg,0"]) + "\n")
    with pytest.raises(AbawError, match=r"other.txt:\d+: video 'zzz' is not in split 'val'"):
        evaluate_split(work, split="val", predictions_file=tmp_path / "other.txt")


def test_test_split_cannot_be_scored(work: Workspace) -> None:
    with pytest.raises(AbawError, match="no labelled frames"):
        evaluate_split(work, split="test", probabilities=Provider())


def test_provider_with_wrong_shape_is_an_error(work: Workspace) -> None:
    def short(run_dir: Path, store: FaceStore, split: str) -> np.ndarray:
        return np.zeros((3, 8), dtype=np.float32)

    with pytest.raises(AbawError, match="expected"):
        evaluate_split(work, split="val", smooth="none", probabilities=short)


def _expected_labels(work: Workspace, spec: str) -> dict[tuple[str, int], int]:
    """Independent expectation: smoothed store predictions, then the example's frames."""
    index = FaceStore(work.store_dir("test")).index
    probs = smooth(fill_missing(_synthetic_probs(index, "test"), index["video"]),
                   index["video"], spec)
    labels = dict(zip(zip(index["video"], index["frame"], strict=True), probs.argmax(1),
                      strict=True))
    expected = {}
    for name, (n_store, n_example) in TEST.items():
        for frame in range(1, n_example + 1):
            expected[(name, frame)] = int(labels[(name, min(frame, n_store))])
    return expected


def test_submission_follows_the_example_and_recorded_smoothing(
        work: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate_split(work, split="val", smooth="auto", probabilities=Provider())
    spec = json.loads((work.runs_dir / "r1" / "smoothing.json").read_text())["spec"]
    monkeypatch.chdir(tmp_path)
    result = make_submission(work, probabilities=Provider())
    path = Path(result["path"])
    assert path == (work.root / "submissions" / "expr_submission_1.txt").resolve()
    assert result["smoothing"] == spec
    assert check_submission(path, _example(work))["frames"] == sum(n for _, n in TEST.values())
    table = read_predictions(path)
    expected = _expected_labels(work, spec)
    got = dict(zip(zip(table["video"], table["frame"], strict=True), table["label"],
                   strict=True))
    assert got == expected
    # Left and right subjects of one video keep their own expressions.
    assert set(table.loc[table["video"] == "t_left", "label"]) == {4}
    assert set(table.loc[table["video"] == "t_right", "label"]) == {5}
    assert result["frames_filled"] == 4
    assert result["frames_filled_from_edge"] == 5 and result["frames_dropped_beyond_example"] == 6
    differing = {d["video"]: d for d in result["videos_differing_from_example"]}
    assert set(differing) == {"t_long", "t_short"}
    assert differing["t_long"]["dropped"] == 6 and differing["t_short"]["filled"] == 5

    before = path.read_bytes()
    second = make_submission(work, smooth="none", probabilities=Provider())
    assert Path(second["path"]).name == "expr_submission_2.txt"
    assert path.read_bytes() == before  # the first submission is never overwritten
    with pytest.raises(AbawError, match="already exists"):
        make_submission(work, out=path, probabilities=Provider())


def test_submit_without_recorded_choice(work: Workspace, tmp_path: Path) -> None:
    result = make_submission(work, out=tmp_path / "s.txt", probabilities=Provider())
    assert result["smoothing"] == "none"
    with pytest.raises(AbawError, match="evaluate --split val"):
        make_submission(work, out=tmp_path / "t.txt", smooth="auto", probabilities=Provider())


def test_check_file_uses_the_example(work: Workspace, tmp_path: Path) -> None:
    made = make_submission(work, out=tmp_path / "ok.txt", probabilities=Provider())
    summary = check_file(made["path"], work)
    assert summary["frames"] == made["frames"] and summary["example"] == str(_example(work))
    lines = Path(made["path"]).read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(AbawError, match=r"bad.txt:\d+: file ends"):
        check_file(bad, work)


def test_example_falls_back_to_the_test_store(work: Workspace, tmp_path: Path) -> None:
    work.source_file.unlink()
    result = make_submission(work, out=tmp_path / "s.txt", probabilities=Provider())
    assert "test face store" in result["example"]
    assert result["frames"] == sum(n for n, _ in TEST.values())


def test_auto_on_another_split_uses_the_choice_made_on_val(work: Workspace) -> None:
    _write_store(work.store_dir("train"), VAL)
    provider = Provider()
    result = evaluate_split(work, split="train", smooth="auto", probabilities=provider)
    recorded = json.loads((work.runs_dir / "r1" / "smoothing.json").read_text())
    assert recorded["chosen_on"] == "val" and result["smoothing"] == recorded["spec"]
    assert not result["smoothing_chosen_on_this_split"]
    assert provider.calls == ["train", "val"]
    again = evaluate_split(work, split="train", smooth="auto", probabilities=provider)
    assert again["smoothing"] == recorded["spec"] and provider.calls == ["train", "val", "train"]
