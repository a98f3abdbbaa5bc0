"""Kill-and-resume: a run stopped mid-way and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import (
    build_store,
    make_workspace,
    read_metrics,
    tiny_config,
    use_fake_unlabeled,
)

from abaw_kit.errors import AbawError
from abaw_kit.run_dir import RunDir
from abaw_kit.train.checkpoint import load_checkpoint
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    use_fake_unlabeled(monkeypatch)
    return make_workspace(tmp_path / "work")


def final_state(work: Workspace, run: str) -> tuple[dict, dict]:
    loaded = load_checkpoint(RunDir(work.runs_dir / run).checkpoints)
    assert loaded is not None
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize(("ssl", "workers", "extra"), [
    ("dtm", 0, ()), ("flexmatch", 1, ()),
    # mean teacher, supervised warm-up + ramp, negative learning and distribution alignment
    # resume exactly too
    ("dtm", 0, ("ssl.teacher=ema", "ssl.unsup_start=2", "ssl.unsup_ramp=2",
                "ssl.negative_weight=0.5", "ssl.unsup_balance=1", "ssl.dist_align=labelled",
                "ssl.dist_align_momentum=0.5")),
    # the weak views forwarded apart without a graph, one labelled worker beside the pool's
    ("dtm", 2, ("ssl.weak_no_grad=true", "data.labelled_workers=1")),
    # views made in the step from the workers' faces and drawn parameters
    ("dtm", 1, ("data.views=device",))])
def test_killed_and_resumed_run_matches_the_uninterrupted_run(work: Workspace, ssl: str,
                                                              workers: int,
                                                              extra: tuple[str, ...]) -> None:
    # dropout makes the torch RNG matter; steps 5 and 6 replay after the checkpoint at 4
    cfg = tiny_config(f"data.num_workers={workers}", "model.drop_rate=0.3", *extra, ssl=ssl)
    train(work, cfg, run_name="whole", progress=False)
    stopped = train(work, cfg, run_name="split", progress=False, stop_after=5)
    assert not stopped["completed"] and stopped["steps"] == 5
    assert final_state(work, "split")[1]["step"] == 4  # step 5 was never checkpointed
    resumed = train(work, None, run_name="split", resume=True, progress=False)
    assert resumed["completed"] and resumed["steps"] == 6

    whole_weights, whole_state = final_state(work, "whole")
    split_weights, split_state = final_state(work, "split")
    assert whole_weights.keys() == split_weights.keys()
    for key, tensor in whole_weights.items():
        assert torch.equal(tensor, split_weights[key]), key  # model and EMA, exactly
    for key, tensor in whole_state["threshold"].items():
        assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(split_state["threshold"][key]))
    assert whole_state["alignment"].keys() == split_state["alignment"].keys()
    for key, tensor in whole_state["alignment"].items():
        assert torch.equal(tensor, split_state["alignment"][key])
    if "ssl.dist_align=labelled" in extra:
        assert whole_state["alignment"]  # the running mean is in the checkpoint
    whole_rows, split_rows = read_metrics(work.runs_dir / "whole"), read_metrics(
        work.runs_dir / "split")
    assert [r["step"] for r in split_rows] == [r["step"] for r in whole_rows]  # no duplicates
    assert [r["loss"] for r in split_rows] == [r["loss"] for r in whole_rows]
    assert resumed["best_val_f1"] == pytest.approx(
        max(float(r["val_f1"]) for r in whole_rows if r["val_f1"]))


def test_resume_with_another_config_is_refused(work: Workspace) -> None:
    cfg = tiny_config(ssl="none")
    train(work, cfg, run_name="r", progress=False, stop_after=3)
    changed = tiny_config("optim.lr=0.1", ssl="none")
    with pytest.raises(AbawError, match=r"config differs.*optim.lr"):
        train(work, changed, run_name="r", resume=True, progress=False)
    longer = tiny_config("train.steps=8", ssl="none")  # more steps is allowed
    assert train(work, longer, run_name="r", resume=True, progress=False)["steps"] == 8


@pytest.mark.parametrize("victim", ["step-00000002.state.pt", "step-00000002.safetensors",
                                    "last.json"])
def test_corrupt_checkpoint_on_resume_is_a_clear_error(work: Workspace, victim: str) -> None:
    train(work, tiny_config(ssl="none"), run_name="c", progress=False, stop_after=3)
    path = RunDir(work.runs_dir / "c").checkpoints / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(AbawError, match="corrupt"):
        train(work, None, run_name="c", resume=True, progress=False)


def test_resume_after_the_training_data_changed_is_refused(work: Workspace) -> None:
    train(work, tiny_config(ssl="none"), run_name="d", progress=False, stop_after=3)
    build_store(work.store_dir("train"), {"a": 60, "b": 50, "c": 40, "d": 30}, seed=0)
    with pytest.raises(AbawError, match="cannot resume d exactly: the training data"):
        train(work, None, run_name="d", resume=True, progress=False)
