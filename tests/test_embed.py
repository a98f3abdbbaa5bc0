"""`abaw embed` (issue 12, part 1): per-video float16 embeddings in the run, resumable, checked
against the run on reading, and read back without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import build_store, make_workspace, tiny_config
from typer.testing import CliRunner

import abaw_kit.infer as infer
from abaw_kit.cli import app
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.embed import RECORD, EmbeddingStore, embed_run, read_record
from abaw_kit.errors import AbawError
from abaw_kit.infer import load_run_model
from abaw_kit.run_dir import RunDir
from abaw_kit.train.checkpoint import read_weights, save_best
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace, atomic_write_json

DIM = 256  # test_byobnet's pooled features


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_infer's cheapest run (4 steps, validation at 2 and 4), trained once."""
    work = make_workspace(tmp_path_factory.mktemp("embed") / "work")
    train(work, tiny_config("train.steps=4", "eval.every=2", ssl="none"), run_name="run",
          progress=False)
    return work.root


@pytest.fixture
def work(trained_root: Path, tmp_path: Path) -> Workspace:
    """A private copy of the trained workspace: each test may change it."""
    return Workspace(Path(shutil.copytree(trained_root, tmp_path / "work")))


def files_of(work: Workspace, split: str) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of a split's embedding files."""
    folder = RunDir(work.runs_dir / "run").embeddings(split)
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.npy")}


def pooled(run_dir: Path, faces: np.ndarray) -> np.ndarray:
    """The run's pooled features computed directly, in float32."""
    loaded = load_run_model(run_dir, device="cpu")
    with torch.inference_mode():
        x = loaded.normalize(torch.from_numpy(faces))
        feats = loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True)
    return feats.float().numpy()


def test_one_float16_file_per_video_equal_to_the_pooled_features(
        work: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "OUTPUT_CHUNK_ROWS", 20)  # chunks and batches cross videos
    result = embed_run(work, "run", device="cpu", batch_size=16)
    assert set(result["splits"]) == {"train", "val"} and result["dim"] == DIM
    run_dir = work.runs_dir / "run"
    for split in ("train", "val"):
        store = FaceStore(work.store_dir(split))
        folder = RunDir(run_dir).embeddings(split)
        videos = list(store.index["video"].unique())
        assert sorted(p.stem for p in folder.glob("*.npy")) == sorted(videos)
        report = result["splits"][split]
        assert report["videos_embedded"] == len(videos) and report["videos_skipped_done"] == 0
        assert report["frames_embedded"] == int(store.index["has_face"].sum())
        record = read_record(folder)
        assert record is not None and record["complete"] and record["dim"] == DIM
        assert record["run"] == "run" and record["backbone"] == "test_byobnet"
        assert record["checkpoint"] == "best.safetensors"
        assert record["store_index_sha256"] == store.index_sha256()
        for video in videos:
            rows = store.index.index[(store.index["video"] == video)
                                     & store.index["has_face"]].to_numpy()
            emb = np.load(folder / f"{video}.npy", mmap_mode="r")
            assert emb.dtype == np.float16 and emb.shape == (len(rows), DIM)
            np.testing.assert_allclose(emb.astype(np.float32),
                                       pooled(run_dir, store.faces(rows)), atol=1e-2)


def test_a_rerun_skips_done_videos_and_a_killed_one_resumes(work: Workspace) -> None:
    embed_run(work, "run", ["train"], device="cpu")
    before = files_of(work, "train")
    folder = RunDir(work.runs_dir / "run").embeddings("train")
    record_mtime = (folder / RECORD).stat().st_mtime_ns
    again = embed_run(work, "run", ["train"], device="cpu")["splits"]["train"]
    assert again["videos_skipped_done"] == 3 and again["frames_embedded"] == 0
    assert again["rewritten"] is None and files_of(work, "train") == before
    assert (folder / RECORD).stat().st_mtime_ns == record_mtime  # nothing rewritten
    # a kill after video a: b's file missing, c's a leftover temporary, record incomplete
    (folder / "b.npy").unlink()
    (folder / "c.npy").rename(folder / ".c.npy.tmp123.npy")
    atomic_write_json(folder / RECORD, {**read_record(folder), "complete": False})
    with pytest.raises(AbawError, match="incomplete"):
        EmbeddingStore.open(work, "train", "run")
    resumed = embed_run(work, "run", ["train"], device="cpu")["splits"]["train"]
    assert resumed["videos_embedded"] == 2 and resumed["videos_skipped_done"] == 1
    after = files_of(work, "train")
    assert after["a.npy"] == before["a.npy"] and set(after) == {"a.npy", "b.npy", "c.npy"}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert len(EmbeddingStore.open(work, "train", "run")) == 3
    forced = embed_run(work, "run", ["train"], device="cpu", force=True)["splits"]["train"]
    assert forced["videos_embedded"] == 3 and forced["rewritten"] == "--force"
    assert files_of(work, "train")["a.npy"] != before["a.npy"]


def test_another_checkpoint_is_refused_by_the_reader_and_rewritten_by_embed(
        work: Workspace) -> None:
    run_dir = RunDir(work.runs_dir / "run")
    embed_run(work, "run", ["val"], device="cpu")
    old = np.array(EmbeddingStore.open(work, "val", "run").video("v").embeddings)
    old_sha = read_record(run_dir.embeddings("val"))["checkpoint_sha256"]
    tensors, meta = read_weights(run_dir.best)
    torch.manual_seed(0)
    changed = {k: v + 0.05 * torch.randn_like(v) if k.startswith("ema.") and v.is_floating_point()
               else v for k, v in tensors.items()}
    save_best(run_dir.checkpoints, changed, meta)  # e.g. a resumed run found a new best
    with pytest.raises(AbawError) as refused:
        EmbeddingStore.open(work, "val", "run")
    message = str(refused.value)
    assert f"checkpoint sha256 '{old_sha[:12]}' (embeddings) vs" in message
    assert "\n" not in message and "run `abaw embed --run run`" in message
    assert "backbone" not in message and "dim" not in message  # only what differs
    redone = embed_run(work, "run", ["val"], device="cpu")["splits"]["val"]
    assert redone["videos_embedded"] == 1 and "checkpoint sha256" in redone["rewritten"]
    new = EmbeddingStore.open(work, "val", "run").video("v").embeddings
    assert not np.allclose(new, old, atol=1e-2)


def test_embeddings_of_another_run_backbone_or_store_are_refused_naming_both(
        work: Workspace, tmp_path: Path) -> None:
    embed_run(work, "run", ["val"], device="cpu")
    copy = work.runs_dir / "copy"
    shutil.copytree(work.runs_dir / "run", copy)
    with pytest.raises(AbawError, match=r"run 'run' \(embeddings\) vs 'copy' \(now\)"):
        EmbeddingStore.open(work, "val", "copy")
    config = RunDir(work.runs_dir / "run").config
    config.write_text(config.read_text().replace("test_byobnet", "resnet18"))
    with pytest.raises(AbawError, match=r"backbone 'test_byobnet' \(embeddings\) vs 'resnet18'"):
        EmbeddingStore.open(work, "val", "run")
    shutil.copy(RunDir(copy).config, config)
    build_store(tmp_path / "faces" / "val", {"v": 50}, seed=9)  # same video, other frames
    with pytest.raises(AbawError, match="face-store index sha256"):
        EmbeddingStore(work.runs_dir / "run", FaceStore(tmp_path / "faces" / "val"))


def test_missing_or_damaged_embeddings_are_one_line_errors(work: Workspace) -> None:
    with pytest.raises(AbawError) as missing:
        EmbeddingStore.open(work, "val", "run")
    assert "\n" not in str(missing.value)
    assert "no embeddings of split 'val' for run 'run'" in str(missing.value)
    assert str(missing.value).endswith("run `abaw embed --run run` first")
    embed_run(work, "run", ["val"], device="cpu")
    path = RunDir(work.runs_dir / "run").embeddings("val") / "v.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(AbawError, match=r"v\.npy \(video v\) has \d+ bytes, expected"):
        EmbeddingStore.open(work, "val", "run")


def test_videos_without_a_face_get_empty_files_and_the_reader_aligns_frames(
        work: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    writer = FaceStoreWriter(work.store_dir("test"))
    plan = {"p": np.zeros(12, bool), "q": rng.random(30) > 0.3, "r": np.zeros(5, bool)}
    for name, has_face in plan.items():
        faces = rng.integers(0, 256, (int(has_face.sum()), 112, 112, 3), dtype=np.uint8)
        writer.write_video(name, np.arange(1, len(has_face) + 1), np.full(len(has_face), -1),
                           has_face, faces)
    writer.finalize(list(plan), {"split": "test"})
    embed_run(work, "run", ["test"], device="cpu", batch_size=4)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reader loaded the model")

    monkeypatch.setattr(infer, "load_run_model", no_model)
    store = EmbeddingStore.open(work, "test", "run")
    assert store.videos == ["p", "q", "r"] and store.dim == DIM
    for item in store:
        assert item.has_face.tolist() == plan[item.video].tolist()
        assert item.frames.tolist() == list(range(1, len(plan[item.video]) + 1))
        assert (item.labels == -1).all()
        assert item.embeddings.shape == (int(plan[item.video].sum()), DIM)
    faces = FaceStore(work.store_dir("test"))
    rows = faces.rows(labelled=None)
    np.testing.assert_allclose(store.video("q").embeddings.astype(np.float32),
                               pooled(work.runs_dir / "run", faces.faces(rows)), atol=1e-2)


def test_the_reader_never_imports_torch(work: Workspace) -> None:
    embed_run(work, "run", ["val"], device="cpu")
    code = (
        "import sys\n"
        "from abaw_kit.embed import EmbeddingStore\n"
        "from abaw_kit.workspace import Workspace\n"
        f"store = EmbeddingStore.open(Workspace.resolve({str(work.root)!r}), 'val', 'run')\n"
        "item = store.video('v')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(store.dim, item.embeddings.shape[0], int(item.has_face.sum()),"
        " type(item.embeddings).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    dim, rows, faces, kind = proc.stdout.split()
    assert int(dim) == DIM and rows == faces and kind == "memmap"


def test_cli_json_and_one_line_errors(work: Workspace, tmp_path: Path) -> None:
    args = ["embed", "--work", str(work.root), "--run", "run", "--split", "val",
            "--device", "cpu", "--batch-size", "32", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, (first.output, first.exception)
    result = json.loads(first.stdout)
    val = result["splits"]["val"]
    assert result["run"] == "run" and result["dim"] == DIM and result["backbone"] == "test_byobnet"
    assert val["videos"] == 1 and val["frames_embedded"] == val["frames_with_face"] > 0
    second = json.loads(CliRunner().invoke(app, args).stdout)["splits"]["val"]
    assert second["videos_skipped_done"] == 1 and second["frames_embedded"] == 0
    table = CliRunner().invoke(app, args[:-1])
    assert table.exit_code == 0 and "skipped as done" in table.stdout
    for bad, expected in (([*args[:5], "--split", "nope"], "unknown split 'nope'"),
                          (["embed", "--work", str(tmp_path / "empty")], "run `abaw train`")):
        out = CliRunner().invoke(app, bad)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.exit_code == 2 and len(lines) == 1 and expected in lines[0], out.stderr
