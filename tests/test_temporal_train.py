"""`abaw train-temporal` and the temporal model's probabilities (issue 12, parts 2-3): a model
folder in the run, exact resume, per-video stitching without leakage, evaluation and
submission through the same chain as the frame model, and the bad inputs the issue lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import build_store, make_workspace, read_metrics, tiny_config
from typer.testing import CliRunner

import abaw_kit.temporal.predict as temporal_predict
from abaw_kit.cli import app
from abaw_kit.config import load_config
from abaw_kit.data.store import FaceStore
from abaw_kit.embed import EmbeddingStore, embed_run
from abaw_kit.errors import AbawError
from abaw_kit.evaluate import evaluate_split, make_submission
from abaw_kit.run_dir import RunDir
from abaw_kit.temporal.data import SplitWindows, WindowOrder
from abaw_kit.temporal.predict import temporal_split_probabilities
from abaw_kit.temporal.train import resolve_temporal_config, train_temporal
from abaw_kit.train.checkpoint import read_weights, save_best
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

TINY_TEMPORAL = ["temporal.window=16", "temporal.stride=4", "temporal.width=16",
                 "temporal.depth=1", "temporal.heads=2", "temporal.batch_size=4",
                 "temporal.steps=6", "temporal.eval_every=3", "temporal.log_every=2",
                 "temporal.ckpt_every=3", "temporal.warmup_steps=1"]


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cheapest frame run (4 steps), embedded once; a test file build_store test layout:
    train videos of 60, 50 and 40 frames, one val video of 50, ~10 % frames without a face."""
    work = make_workspace(tmp_path_factory.mktemp("temporal") / "work")
    build_store(work.store_dir("test"), {"t1": 30, "t2": 45}, seed=2)
    train(work, tiny_config("train.steps=4", "eval.every=2", ssl="none"), run_name="run",
          progress=False)
    embed_run(work, "run", device="cpu")
    return work.root


@pytest.fixture
def work(embedded_root: Path, tmp_path: Path) -> Workspace:
    return Workspace(Path(shutil.copytree(embedded_root, tmp_path / "work")))


def temporal_config(work: Workspace, *overrides: str):  # noqa: ANN201 - TrainConfig
    return resolve_temporal_config(work.runs_dir / "run", None, [*TINY_TEMPORAL, *overrides])


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return read_weights(path)[0]


def test_trains_into_the_run_and_evaluate_and_submit_use_it(work: Workspace) -> None:
    notes: list[str] = []
    summary = train_temporal(work, temporal_config(work), run="run", progress=False,
                             log=notes.append)
    folder = work.runs_dir / "run" / "temporal"  # the layout users rely on, spelled out
    assert summary["completed"] and summary["steps"] == 6 and summary["window"] == 16
    assert (folder / "checkpoints" / "best.safetensors").is_file()
    assert [int(r["step"]) for r in read_metrics(folder)] == [2, 3, 4, 6]
    assert load_config(folder / "config.yaml").temporal.window == 16
    assert load_config(work.runs_dir / "run" / "config.yaml").temporal.window == 128  # untouched
    assert (folder / "plots" / "val_f1.png").is_file()

    val = evaluate_split(work, "val", run="run", smooth="auto", device="cpu")
    assert val["model"] == "temporal"  # auto: the run has a temporal model
    assert Path(val["report_file"]).parent == folder and (folder / "smoothing.json").is_file()
    assert not (work.runs_dir / "run" / "smoothing.json").exists()  # the frame model's own
    frame = evaluate_split(work, "val", run="run", smooth="none", model="frame", device="cpu")
    assert frame["model"] == "frame" and Path(frame["report_file"]).parent == work.runs_dir / "run"
    result = make_submission(work, run="run", out=work.root / "sub.txt", device="cpu")
    assert result["model"] == "temporal" and result["smoothing"] == val["smoothing"]
    assert result["frames"] == len(FaceStore(work.store_dir("test")).index)


@pytest.mark.parametrize("centre_over", ["window", "video"])
def test_probabilities_cover_each_face_frame_once_and_never_cross_videos(
        work: Workspace, monkeypatch: pytest.MonkeyPatch, centre_over: str) -> None:
    train_temporal(work, temporal_config(work, f"temporal.centre_over={centre_over}"),
                   run="run", progress=False, log=lambda m: None)
    run_dir = work.runs_dir / "run"
    store = FaceStore(work.store_dir("train"))
    probs = temporal_split_probabilities(run_dir, store, "train", device="cpu")
    has_face = store.index["has_face"].to_numpy(bool)
    assert probs.shape == (len(store.index), 8)
    assert np.isnan(probs[~has_face]).all()  # masked, not invented: filled later by evaluate
    assert np.allclose(probs[has_face].sum(axis=1), 1.0, atol=1e-5)
    with monkeypatch.context() as patch:  # cached: the model is not even loaded
        patch.setattr(temporal_predict, "load_temporal_model", None)
        np.testing.assert_array_equal(
            temporal_split_probabilities(run_dir, store, "train", device="cpu"), probs)
    # change every embedding of video "a": only "a"'s probabilities may move
    shutil.rmtree(RunDir(run_dir).temporal.cache)
    path = RunDir(run_dir).embeddings("train") / "a.npy"
    original = np.load(path)
    np.save(path, (original[::-1] * 3).astype(np.float16))
    changed = temporal_split_probabilities(run_dir, store, "train", device="cpu")
    in_a = (store.index["video"] == "a").to_numpy()
    assert not np.allclose(changed[in_a & has_face], probs[in_a & has_face])
    np.testing.assert_array_equal(changed[~in_a], probs[~in_a])


def test_resume_continues_exactly(work: Workspace, tmp_path: Path) -> None:
    straight = Workspace(Path(shutil.copytree(work.root, tmp_path / "straight")))
    train_temporal(straight, temporal_config(straight), run="run", progress=False,
                   log=lambda m: None)
    train_temporal(work, temporal_config(work), run="run", progress=False, stop_after=4,
                   log=lambda m: None)  # killed after step 4: the step-3 checkpoint is kept
    resumed = resolve_temporal_config(work.runs_dir / "run", None, [], resume=True)
    summary = train_temporal(work, resumed, run="run", resume=True, progress=False,
                             log=lambda m: None)
    assert summary["completed"] and summary["steps"] == 6
    last = "step-00000006.safetensors"
    a = weights_of(RunDir(straight.runs_dir / "run").temporal.checkpoints / last)
    b = weights_of(RunDir(work.runs_dir / "run").temporal.checkpoints / last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(r["step"]) for r in read_metrics(RunDir(work.runs_dir / "run").temporal)]
    assert steps == [2, 3, 4, 6]  # the rows after the checkpoint were written again, once


def test_window_order_is_a_function_of_seed_step_and_rank() -> None:
    one = WindowOrder(10, 4, seed=3, max_shift=5)
    again = WindowOrder(10, 4, seed=3, max_shift=5)
    assert all(np.array_equal(one.batch(k)[0], again.batch(k)[0]) for k in (7, 0, 2))
    epoch = np.concatenate([one.batch(k)[0] for k in range(5)])[:20]
    assert sorted(epoch[:10]) == list(range(10)) == sorted(epoch[10:])  # each window once
    ranks = [WindowOrder(10, 2, seed=3, max_shift=5, rank=r, world_size=2) for r in (0, 1)]
    assert not set(ranks[0].batch(0)[0]) & set(ranks[1].batch(0)[0])
    assert (one.batch(1)[1] < 5).all()


def test_windows_read_the_memory_mapped_files(work: Workspace) -> None:
    embeddings = EmbeddingStore.open(work, "train", "run")
    windows = SplitWindows(embeddings, 16, 4, labelled_only=True)
    assert all(isinstance(v.embeddings, np.memmap) for v in windows.videos)
    batch = windows.gather([0, len(windows) - 1])
    assert batch.x.shape == (2, 16, embeddings.dim) and batch.x.dtype == np.float32
    assert not batch.x[~batch.mask].any() and (batch.labels[~batch.mask] == -1).all()
    assert batch.centre is None  # centre_over: window, the model takes the window's own mean


def test_video_centre_is_the_mean_of_the_whole_videos_faces(work: Workspace) -> None:
    windows = SplitWindows(EmbeddingStore.open(work, "train", "run"), 16, 4, video_centre=True)
    batch = windows.gather(np.arange(len(windows)))
    for i, video in enumerate(windows.plan.videos):
        faces = windows.videos[int(video)].embeddings.astype(np.float64)
        np.testing.assert_allclose(batch.centre[i], faces.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert len({tuple(c) for c in batch.centre}) == len(windows.videos)  # one per video


# -- bad input -------------------------------------------------------------------------------


def test_a_run_without_embeddings_says_to_run_abaw_embed(work: Workspace) -> None:
    shutil.rmtree(work.runs_dir / "run" / "embeddings")
    with pytest.raises(AbawError, match="run `abaw embed --run run`"):
        train_temporal(work, temporal_config(work), run="run", progress=False)
    assert not RunDir(work.runs_dir / "run").temporal.path.exists()  # nothing written


def test_embeddings_of_another_checkpoint_are_refused_naming_both(work: Workspace) -> None:
    train_temporal(work, temporal_config(work), run="run", progress=False, log=lambda m: None)
    run_dir = RunDir(work.runs_dir / "run")
    tensors, meta = read_weights(run_dir.best)
    save_best(run_dir.checkpoints, {k: v + 0.01 if v.is_floating_point() else v
                                    for k, v in tensors.items()}, meta)
    embed_run(work, "run", device="cpu")  # the frame model changed: embeddings redone
    with pytest.raises(AbawError, match=r"trained on embeddings of best\.safetensors sha256 "
                                        r"\w{12} .* but the val embeddings are of "
                                        r"best\.safetensors sha256 \w{12}"):
        evaluate_split(work, "val", run="run", smooth="none", device="cpu")


def test_a_window_longer_than_every_video_is_clipped_with_a_note(work: Workspace) -> None:
    notes: list[str] = []
    summary = train_temporal(work, temporal_config(work, "temporal.window=500",
                                                   "temporal.stride=100"),
                             run="run", progress=False, log=notes.append)
    assert summary["window"] == 60  # the longest train video
    assert any("temporal.window 500 is longer than every train video: clipped to 60" in n
               for n in notes)
    probs = temporal_split_probabilities(work.runs_dir / "run", FaceStore(work.store_dir("test")),
                                         "test", device="cpu")
    assert np.isfinite(probs[FaceStore(work.store_dir("test")).index["has_face"]]).all()


def test_a_split_whose_videos_all_lack_faces(work: Workspace, tmp_path: Path) -> None:
    faceless = Workspace(tmp_path / "faceless")
    build_store(faceless.store_dir("train"), {"a": 20}, seed=0)
    index = FaceStore(faceless.store_dir("train")).index
    assert index["has_face"].any()  # build_store leaves ~10 % without: make a store of none
    from abaw_kit.data.store import FaceStoreWriter

    shutil.rmtree(faceless.store_dir("val"), ignore_errors=True)
    writer = FaceStoreWriter(faceless.store_dir("val"))
    writer.write_video("v", np.arange(1, 11), np.zeros(10, np.int64), np.zeros(10, bool),
                       np.zeros((0, 112, 112, 3), np.uint8))
    writer.finalize(["v"], {"split": "val"})
    shutil.rmtree(work.store_dir("val"))
    shutil.copytree(faceless.store_dir("val"), work.store_dir("val"))
    embed_run(work, "run", ["val"], device="cpu")
    notes: list[str] = []
    summary = train_temporal(work, temporal_config(work), run="run", progress=False,
                             log=notes.append)
    assert summary["best_val_f1"] is None and any("no validation" in n for n in notes)
    probs = temporal_split_probabilities(work.runs_dir / "run", FaceStore(work.store_dir("val")),
                                         "val", device="cpu")
    assert np.isnan(probs).all()


def test_cli_guards_the_model_and_the_frame_runs_keys(work: Workspace) -> None:
    runner = CliRunner()
    base = ["train-temporal", "--run", "run", "--work", str(work.root), "--json"]
    sets = [arg for key in TINY_TEMPORAL for arg in ("--set", key)]
    assert runner.invoke(app, [*base, *sets]).exit_code == 0
    again = runner.invoke(app, [*base, *sets])
    assert again.exit_code == 2 and "already has a temporal model" in again.output
    frame_key = runner.invoke(app, [*base, "--force", "--set", "optim.lr=0.1"])
    assert frame_key.exit_code == 2 and "optim.lr" in frame_key.output
    changed = runner.invoke(app, [*base, "--resume", "--set", "temporal.width=32"])
    assert changed.exit_code == 2 and "temporal.width" in changed.output
    longer = runner.invoke(app, [*base, "--resume", "--steps", "8"])
    assert longer.exit_code == 0, longer.output
    assert [int(r["step"]) for r in read_metrics(RunDir(work.runs_dir / "run").temporal)][-1] \
        == 8


def _ddp_rank(rank: int, root: str, port: int) -> None:
    import json
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        work = Workspace(Path(root))
        summary = train_temporal(work, temporal_config(work), run="run", progress=False,
                                 log=lambda m: None)
        Path(root, f"rank{rank}.json").write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


def test_two_cpu_processes_train_one_model_with_one_writer(work: Workspace) -> None:
    import json

    import torch.multiprocessing as mp
    from test_train_ddp import _free_port

    from abaw_kit.train.checkpoint import load_checkpoint

    mp.spawn(_ddp_rank, args=(str(work.root), _free_port()), nprocs=2, join=True)
    first, second = (json.loads((work.root / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["world_size"] == 2 and first["best_val_f1"] == second["best_val_f1"]
    folder = RunDir(work.runs_dir / "run").temporal
    assert [int(r["step"]) for r in read_metrics(folder)] == [2, 3, 4, 6]  # one writer
    loaded = load_checkpoint(folder.checkpoints, ("step", "rng", "data"))
    assert loaded is not None and len(loaded[1]["rng"]) == 2
    assert loaded[1]["data"]["world_size"] == 2


def test_residual_model_starts_at_the_frame_models_prediction(work: Workspace) -> None:
    from abaw_kit.infer import load_run_model, predict_rows
    from abaw_kit.temporal.models import build_temporal_model
    from abaw_kit.temporal.train import frame_classifier

    run_dir = work.runs_dir / "run"
    cfg = temporal_config(work, "temporal.residual=true")
    embeddings = EmbeddingStore.open(work, "val", "run")
    windows = SplitWindows(embeddings, 16, 16)
    model = build_temporal_model(cfg.temporal, embeddings.dim, 16).eval()
    model.set_frame_head(*frame_classifier(run_dir, embeddings.record["checkpoint"]))
    batch = windows.gather([0])
    with torch.no_grad():
        start = model(torch.from_numpy(batch.x), torch.from_numpy(batch.mask)).softmax(-1)[0]
    video = windows.videos[0]
    rows = video.rows[:16][batch.mask[0]]
    loaded = load_run_model(run_dir, device="cpu")
    frame = predict_rows(loaded.model, loaded.normalize, FaceStore(work.store_dir("val")), rows)
    np.testing.assert_allclose(start[torch.from_numpy(batch.mask[0])].numpy(), frame, atol=2e-3)
    summary = train_temporal(work, cfg, run="run", progress=False, log=lambda m: None)
    assert summary["completed"]
    probs = temporal_split_probabilities(run_dir, FaceStore(work.store_dir("val")), "val",
                                         device="cpu")  # loads the saved head, no frame model
    assert np.isfinite(probs[FaceStore(work.store_dir("val")).index["has_face"]]).all()
