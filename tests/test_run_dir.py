"""RunDir names the files of a run folder; the names are what users and scripts rely on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from abaw_kit.errors import AbawError
from abaw_kit.run_dir import ModelDir, RunDir


def test_a_run_and_its_temporal_model_have_the_same_layout(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    for model, root in ((run, tmp_path / "r"), (run.temporal, tmp_path / "r" / "temporal")):
        assert isinstance(model, ModelDir) and model.path == root
        assert model.config == root / "config.yaml"
        assert model.metrics == root / "metrics.csv"
        assert model.log == root / "train.log"
        assert model.checkpoints == root / "checkpoints"
        assert model.best == root / "checkpoints" / "best.safetensors"
        assert model.pointer == root / "checkpoints" / "last.json"
        assert model.plots == root / "plots"
        assert model.cache == root / "cache"
        assert model.smoothing == root / "smoothing.json"
        assert model.eval_report("val") == root / "eval_val.json"
    assert run.embeddings("train") == tmp_path / "r" / "embeddings" / "train"
    assert not isinstance(run.temporal, RunDir)  # no embeddings or temporal model of its own


def test_it_is_a_path_like_and_checks_split_names(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert os.fspath(run) == str(run) == str(tmp_path / "r") and run.name == "r"
    assert RunDir(run) == run and Path(run) == run.path
    with pytest.raises(AbawError, match="unknown split"):
        run.embeddings("../x")
    with pytest.raises(AbawError, match="unknown split"):
        run.eval_report("x/y")


def test_weights_and_config_checks(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.has_weights() and not run.temporal.has_weights()
    with pytest.raises(AbawError, match="is not a training run"):
        run.require_config()
    run.temporal.checkpoints.mkdir(parents=True)
    run.temporal.pointer.write_text("{}")
    assert run.temporal.has_weights() and not run.has_weights()
    run.config.write_text("")
    assert run.require_config() == run.config
