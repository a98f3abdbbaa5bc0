"""Training runs end to end on a tiny generated face store (and the builders the other
test_train*/test_infer files share)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import abaw_kit.train.data as train_data
from abaw_kit.config import TrainConfig, load_config, resolve_config
from abaw_kit.data.store import FaceStore, FaceStoreWriter
from abaw_kit.errors import AbawError
from abaw_kit.run_dir import ModelDir, RunDir
from abaw_kit.train.checkpoint import load_checkpoint
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace

# ------------------------------------------------------------------------------------------
# Builders shared by the training and inference tests


def class_faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faces whose colour and bright band encode the class, with noise: learnable, tiny."""
    faces = rng.normal(0, 20, (len(labels), 112, 112, 3)).astype(np.float32)
    for i, label in enumerate(np.maximum(labels, 0)):
        faces[i, :, :, label % 3] += 60 + 20 * label
        faces[i, label * 12:label * 12 + 20] += 170
    return np.clip(faces, 0, 255).astype(np.uint8)


def build_store(split_dir: Path, videos: dict[str, int], seed: int = 0) -> None:
    """A face store with random labels (-1..7) and ~10% frames without a face."""
    rng = np.random.default_rng(seed)
    writer = FaceStoreWriter(split_dir)
    for name, count in videos.items():
        labels = rng.integers(-1, 8, count)
        has_face = rng.random(count) > 0.1
        writer.write_video(name, np.arange(1, count + 1), labels, has_face,
                           class_faces(labels[has_face], rng))
    writer.finalize(list(videos), {"split": split_dir.name})


class FakeUnlabeledIndex:
    """Stands in for abaw_kit.unlabeled.index.UnlabeledIndex (same reading API)."""

    def __init__(self, count: int = 40, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.images = class_faces(rng.integers(0, 8, count), rng)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int, size: int = 112) -> np.ndarray:
        return self.images[i]


def make_workspace(root: Path) -> Workspace:
    work = Workspace(root)
    build_store(work.store_dir("train"), {"a": 60, "b": 50, "c": 40}, seed=0)
    build_store(work.store_dir("val"), {"v": 50}, seed=1)
    return work


def use_fake_unlabeled(monkeypatch: pytest.MonkeyPatch | None = None, count: int = 40) -> None:
    """Route the trainer's unlabelled index to a FakeUnlabeledIndex."""
    def fake(work: Workspace) -> FakeUnlabeledIndex:
        return FakeUnlabeledIndex(count)

    if monkeypatch is None:
        train_data.open_unlabelled_index = fake
    else:
        monkeypatch.setattr(train_data, "open_unlabelled_index", fake)


TINY = ["model.backbone=test_byobnet", "model.pretrained=none", "data.input_size=32",
        "data.batch_size=8", "data.num_workers=0", "ssl.uratio=2", "train.steps=6",
        "train.log_every=2", "train.ckpt_every=2", "eval.every=3", "eval.num_workers=0",
        "optim.warmup_steps=2", "train.device=cpu"]


def tiny_config(*overrides: str, ssl: str = "dtm") -> TrainConfig:
    return resolve_config(None, [*TINY, *overrides], {"ssl": ssl})


def read_metrics(model_dir: Path | ModelDir) -> list[dict[str, str]]:
    """The metrics.csv rows of a run, or of its temporal model."""
    with ModelDir(model_dir).metrics.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    use_fake_unlabeled(monkeypatch)
    return make_workspace(tmp_path / "work")


def test_supervised_run_writes_a_complete_run_folder(work: Workspace) -> None:
    summary = train(work, tiny_config(ssl="none"), run_name="sup", progress=False)
    run_dir = work.runs_dir / "sup"
    assert summary["completed"] and summary["steps"] == 6 and summary["ssl"] == "none"
    assert (work.runs_dir / "LATEST").read_text().strip() == "sup"
    assert load_config(run_dir / "config.yaml") == tiny_config(ssl="none")
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]  # log_every 2, eval at 3 and the end
    assert rows[1]["val_f1"] and rows[-1]["val_f1"] and not rows[0]["val_f1"]
    assert all(float(r["sup_loss"]) > 0 for r in rows)
    assert summary["best_val_f1"] == max(float(r["val_f1"]) for r in rows if r["val_f1"])
    names = {p.name for p in (run_dir / "plots").iterdir()}
    assert {"losses.png", "val_f1.png"} <= names and "thresholds.png" not in names
    weights = load_file(summary["checkpoint_best"])
    assert any(k.startswith("ema.") for k in weights) and any(k.startswith("model.") for k in
                                                              weights)


def test_dtm_run_checkpoints_load_with_weights_only(work: Workspace) -> None:
    summary = train(work, tiny_config(), run_name="dtm", progress=False)
    ckpt_dir = work.runs_dir / "dtm" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "best.safetensors", "last.json", "step-00000006.safetensors", "step-00000006.state.pt"]
    state = torch.load(ckpt_dir / "step-00000006.state.pt", weights_only=True)
    assert state["step"] == 6 and {"optimizer", "scheduler", "threshold", "rng"} <= set(state)
    assert state["sampler"]["next_batch"] == 6  # the loaders restart at this batch
    assert set(state["threshold"]) == {"time_p", "p_model", "label_hist", "pseudo_hist", "step"}
    assert int(state["threshold"]["step"]) == 6  # one threshold update per step
    tensors, _ = load_checkpoint(ckpt_dir)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert summary["unlabelled_images"] == 40 + summary_unlabelled_store_frames(work)
    rows = read_metrics(work.runs_dir / "dtm")
    assert all(r["thr_Fear"] and r["mask_ratio"] for r in rows)
    assert {"thresholds.png", "mask_ratio.png", "ssl_overview.png"} <= {p.name for p in
                                                    (work.runs_dir / "dtm" / "plots").iterdir()}


def summary_unlabelled_store_frames(work: Workspace) -> int:
    from abaw_kit.data.store import FaceStore

    return len(FaceStore(work.store_dir("train")).rows(labelled=False))


def test_flexmatch_with_few_labels_and_workers(work: Workspace) -> None:
    cfg = tiny_config("data.labelled_fraction=0.5", "data.num_workers=1",
                      "data.use_unlabelled_index=false", "train.steps=3", ssl="flexmatch")
    summary = train(work, cfg, run_name="flex", progress=False)
    assert summary["completed"]
    # every class present in train keeps at least one labelled frame; the rest became unlabelled
    assert 0 < summary["labelled_frames"] < 2 * summary["unlabelled_images"]
    assert len(summary["class_thresholds"]) == 8


def test_few_label_run_reports_pseudo_label_accuracy_on_withheld_labels(
        work: Workspace) -> None:
    cfg = tiny_config("data.labelled_fraction=0.3", ssl="fixmatch")
    data = train_data.build_training_data(work, cfg)
    store = FaceStore(work.store_dir("train"))
    pool = data.unlabelled.pool
    leftovers = pool.span(train_data.LEFTOVERS)
    assert leftovers.stop == len(pool) and leftovers.stop - leftovers.start > 0
    rows = pool.sources[train_data.LEFTOVERS].rows
    assert (data.hidden_labels[leftovers] == store.index["label"].to_numpy()[rows]).all()
    assert (data.hidden_labels[:leftovers.start] == -1).all()  # index images: no truth
    # a cutoff below 1/8 accepts every pseudo-label, so the log reports their accuracy
    train(work, tiny_config("data.labelled_fraction=0.3", "ssl.params.p_cutoff=0.01",
                            ssl="fixmatch"), run_name="few", progress=False)
    accuracy = [float(r["pseudo_acc"]) for r in read_metrics(work.runs_dir / "few")]
    assert all(0.0 <= a <= 1.0 for a in accuracy)


def test_full_label_run_has_no_pseudo_label_accuracy(work: Workspace) -> None:
    data = train_data.build_training_data(work, tiny_config(ssl="fixmatch"))
    assert data.hidden_labels is None


def test_missing_unlabelled_index_is_a_clear_error(tmp_path: Path) -> None:
    work = make_workspace(tmp_path / "work")
    with pytest.raises(AbawError, match=r"no unlabelled data: run `abaw ingest SOURCE` first, "
                                        r"or use --ssl none"):
        train(work, tiny_config(), run_name="x", progress=False)
    assert not (work.runs_dir / "x").exists()  # nothing to clean up before the rerun


def test_empty_unlabelled_index_is_a_clear_error(work: Workspace,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_unlabeled(monkeypatch, count=0)
    with pytest.raises(AbawError, match="no unlabelled data.*empty"):
        train(work, tiny_config(), run_name="x", progress=False)


def test_unknown_backbone_fails_before_creating_the_run(work: Workspace) -> None:
    with pytest.raises(AbawError, match="unknown backbone 'resnet5O'.*resnet50"):
        train(work, tiny_config("model.backbone=resnet5O"), run_name="bad", progress=False)
    assert not (work.runs_dir / "bad").exists()


def test_existing_run_name_needs_resume(work: Workspace) -> None:
    train(work, tiny_config("train.steps=2", ssl="none"), run_name="r", progress=False)
    with pytest.raises(AbawError, match="already exists.*--resume"):
        train(work, tiny_config("train.steps=2", ssl="none"), run_name="r", progress=False)


@pytest.mark.parametrize("ssl", ["none", "dtm"])
def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(work: Workspace,
                                                                   ssl: str) -> None:
    # NaN/inf is noted on the device each step and raised before the next log row,
    # validation or checkpoint: never one written from a diverged step
    cfg = tiny_config("optim.lr=1e30", "optim.warmup_steps=0", "optim.clip_grad=0",
                      "train.steps=40", "train.ckpt_every=1", "eval.every=0", ssl=ssl)
    with pytest.raises(AbawError, match=r"diverged at step \d+.*last good checkpoint"):
        train(work, cfg, run_name="nan", progress=False)
    tensors, state = load_checkpoint(RunDir(work.runs_dir / "nan").checkpoints)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert 1 <= state["step"] < 40


def test_timm_download_failure_offline_says_to_pass_a_path(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    from abaw_kit.config import ModelConfig
    from abaw_kit.train.model import create_model

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AbawError, match=r"timm's pretrained weights.*--pretrained PATH"):
        create_model(ModelConfig(backbone="test_byobnet", pretrained="timm"))
