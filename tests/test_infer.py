"""Inference from a run: frame probabilities per split, NaN where no face, cached per checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_workspace, tiny_config

import abaw_kit.infer as infer
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.infer import (
    load_run_model,
    macro_f1_of,
    predict_faces,
    split_probabilities,
    validation_rows,
)
from abaw_kit.run_dir import RunDir
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path, dict]:
    work = make_workspace(tmp_path_factory.mktemp("infer") / "work")
    summary = train(work, tiny_config("train.steps=4", "eval.every=2", ssl="none"),
                    run_name="run", progress=False)
    return work, work.runs_dir / "run", summary


def test_split_probabilities_shape_nan_rows_and_cache(trained, monkeypatch) -> None:
    work, run_dir, _ = trained
    store = FaceStore(work.store_dir("val"))
    probs = split_probabilities(run_dir, store, "val", device="cpu", batch_size=16)
    has_face = store.index["has_face"].to_numpy(bool)
    assert probs.shape == (len(store.index), 8) and probs.dtype == np.float32
    assert np.isnan(probs[~has_face]).all() and (~has_face).any()
    assert np.allclose(probs[has_face].sum(axis=1), 1.0, atol=1e-5)
    assert (run_dir / "cache" / "probs_val.npy").is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran although the cache matches")

    monkeypatch.setattr(infer, "predict_rows", must_not_run)
    again = split_probabilities(run_dir, store, "val", device="cpu", batch_size=64)
    np.testing.assert_array_equal(again, probs)


def test_a_cached_split_does_not_load_the_model(trained, monkeypatch) -> None:
    """Re-scoring with another smoothing reads the cache; only a miss loads the model."""
    work, run_dir, _ = trained
    store = FaceStore(work.store_dir("val"))
    probs = split_probabilities(run_dir, store, "val", device="cpu")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the cache matches")

    monkeypatch.setattr(infer, "load_run_model", must_not_load)
    np.testing.assert_array_equal(split_probabilities(run_dir, store, "val", device="cpu"),
                                  probs)
    with pytest.raises(AssertionError, match="was loaded"):  # another checkpoint: a miss
        split_probabilities(run_dir, store, "val", device="cpu", which="last")


def test_cache_misses_when_the_store_changes(trained, tmp_path: Path) -> None:
    work, run_dir, _ = trained
    from test_train import build_store

    other_dir = tmp_path / "faces" / "val"
    build_store(other_dir, {"w": 30}, seed=5)
    other = FaceStore(other_dir)
    probs = split_probabilities(run_dir, other, "val", device="cpu")
    assert probs.shape == (30, 8)
    rows = other.rows(labelled=None)
    direct = predict_faces(load_run_model(run_dir, device="cpu"), other.faces(rows))
    np.testing.assert_allclose(probs[rows], direct, atol=1e-6)


def test_loaded_model_reproduces_the_validation_f1_of_training(trained) -> None:
    work, run_dir, summary = trained
    loaded = load_run_model(run_dir, device="cpu", which="best")
    assert loaded.which == "best" and loaded.step == summary["best_step"]
    assert not loaded.model.training
    store = FaceStore(work.store_dir("val"))
    rows = validation_rows(store)
    probs = predict_faces(loaded, store.faces(rows), batch_size=7)
    assert macro_f1_of(store, rows, probs) == pytest.approx(summary["best_val_f1"])


def test_last_checkpoint_and_errors(trained, tmp_path: Path) -> None:
    _, run_dir, _ = trained
    last = load_run_model(run_dir, device="cpu", which="last")
    assert last.step == 4 and last.checkpoint.name == "step-00000004.safetensors"
    with pytest.raises(AbawError, match="not a training run"):
        load_run_model(tmp_path, device="cpu")
    with pytest.raises(AbawError, match="expected best or last"):
        load_run_model(run_dir, device="cpu", which="first")


def test_pretrained_path_initialises_a_new_model_from_a_run(trained, tmp_path: Path) -> None:
    """--pretrained <checkpoint> takes the EMA weights; a head of another shape is dropped."""
    from abaw_kit.config import ModelConfig
    from abaw_kit.train.model import create_model

    _, run_dir, _ = trained
    source = RunDir(run_dir).best
    cfg = ModelConfig(backbone="test_byobnet", pretrained=str(source))
    model, report = create_model(cfg)
    reference = load_run_model(run_dir, device="cpu").model.state_dict()
    assert report is not None and report.loaded == len(reference)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    other, report = create_model(cfg, num_classes=3)
    assert report.dropped_shape and all("head" in k or "fc" in k for k in report.dropped_shape)
    with pytest.raises(AbawError, match="file not found"):
        create_model(ModelConfig(backbone="test_byobnet", pretrained=str(tmp_path / "x.pt")))
