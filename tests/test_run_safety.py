"""Run folders are never escaped, restarted over or half-created; machine faults are one line."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from fake_release import build_fake_release
from test_train import make_workspace, tiny_config, use_fake_unlabeled
from typer.testing import CliRunner

from abaw_kit import workspace as workspace_mod
from abaw_kit.cli import app
from abaw_kit.errors import AbawError
from abaw_kit.run_dir import RunDir
from abaw_kit.train.checkpoint import load_checkpoint
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace, atomic_write_text


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    use_fake_unlabeled(monkeypatch)
    return make_workspace(tmp_path / "work")


def cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, list(args))
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


def checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(RunDir(run_dir).checkpoints.iterdir())}


# --- run names and splits are names, not paths ----------------------------------------------

@pytest.mark.parametrize("name", ["../victim", "/elsewhere/runs/v", "a/b", "..", ".hidden",
                                  "x" * 129, "a\nb"])
def test_a_run_name_that_is_a_path_is_refused(work: Workspace, name: str) -> None:
    with pytest.raises(AbawError, match="not a plain name"):
        work.run_dir(name)


def test_resume_cannot_reach_a_run_of_another_workspace(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_unlabeled(monkeypatch)
    victim = make_workspace(tmp_path / "victim")
    train(victim, tiny_config(ssl="none"), run_name="v", progress=False)
    before = checkpoint_files(victim.runs_dir / "v")
    work = make_workspace(tmp_path / "work")
    escape = os.path.relpath(victim.runs_dir / "v", work.runs_dir)
    with pytest.raises(AbawError, match="not a plain name"):
        train(work, None, run_name=escape, resume=True, progress=False)
    assert checkpoint_files(victim.runs_dir / "v") == before
    assert not (work.runs_dir / "LATEST").exists()


def test_evaluate_with_an_absolute_run_path_is_one_line_and_writes_nothing(
        tmp_path: Path, work: Workspace) -> None:
    elsewhere = tmp_path / "elsewhere" / "runs" / "v"
    elsewhere.mkdir(parents=True)
    code, lines = cli("evaluate", "--work", str(work.root), "--run", str(elsewhere))
    assert code == 2 and len(lines) == 1 and "not a plain name" in lines[0]
    assert list(elsewhere.iterdir()) == []


def test_an_unknown_split_is_refused_before_it_becomes_a_folder(work: Workspace) -> None:
    code, lines = cli("evaluate", "--work", str(work.root), "--split", "../../etc")
    assert code == 2 and len(lines) == 1 and "unknown split '../../etc'" in lines[0]


def test_a_latest_pointer_naming_a_path_is_refused(work: Workspace) -> None:
    work.runs_dir.mkdir(parents=True, exist_ok=True)
    (work.runs_dir / "LATEST").write_text("../../elsewhere\n")
    with pytest.raises(AbawError, match="LATEST holds '../../elsewhere', which is not a run"):
        work.run_dir()


# --- resume never restarts a run over its own results --------------------------------------

@pytest.mark.slow
def test_resume_without_the_pointer_continues_from_the_newest_checkpoint(work: Workspace) -> None:
    cfg = tiny_config(ssl="dtm")
    train(work, cfg, run_name="whole", progress=False)
    train(work, cfg, run_name="split", progress=False, stop_after=5)
    RunDir(work.runs_dir / "split").pointer.unlink()
    resumed = train(work, None, run_name="split", resume=True, progress=False)
    assert resumed["completed"]
    log = RunDir(work.runs_dir / "split").log.read_text()
    assert "was missing: resuming from the newest complete checkpoint (step 4)" in log
    whole = load_checkpoint(RunDir(work.runs_dir / "whole").checkpoints)
    split = load_checkpoint(RunDir(work.runs_dir / "split").checkpoints)
    assert whole is not None and split is not None
    for key, tensor in whole[0].items():  # bit-identical: it continued, it did not restart
        assert torch.equal(tensor, split[0][key]), key


def test_resume_of_a_finished_run_without_the_pointer_keeps_its_checkpoint(
        work: Workspace) -> None:
    train(work, tiny_config(ssl="none"), run_name="done", progress=False)
    pointer = RunDir(work.runs_dir / "done").pointer
    pointer.unlink()
    final = checkpoint_files(work.runs_dir / "done")
    summary = train(work, None, run_name="done", resume=True, progress=False)
    assert summary["completed"] and summary["steps"] == 6
    assert {k: v for k, v in checkpoint_files(work.runs_dir / "done").items()
            if k != pointer.name} == final


def test_checkpoint_files_that_do_not_load_without_a_pointer_are_an_error(
        work: Workspace) -> None:
    train(work, tiny_config(ssl="none"), run_name="r", progress=False, stop_after=3)
    run_dir = RunDir(work.runs_dir / "r")
    run_dir.pointer.unlink()
    state = run_dir.checkpoints / "step-00000002.state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(AbawError, match="no complete pair loads.*refusing to restart"):
        train(work, None, run_name="r", resume=True, progress=False)
    assert state.stat().st_size == 100  # nothing was deleted or rewritten


def test_a_checkpoint_state_without_rng_is_a_clear_error(work: Workspace) -> None:
    train(work, tiny_config(ssl="none"), run_name="r", progress=False, stop_after=3)
    path = RunDir(work.runs_dir / "r").checkpoints / "step-00000002.state.pt"
    state = torch.load(path, weights_only=True)
    del state["rng"]
    torch.save(state, path)
    with pytest.raises(AbawError, match=r"step-00000002.state.pt lacks rng"):
        train(work, None, run_name="r", resume=True, progress=False)


def test_resume_with_fewer_steps_than_done_keeps_the_saved_config(work: Workspace) -> None:
    train(work, tiny_config(ssl="none"), run_name="r", progress=False, stop_after=5)
    config = RunDir(work.runs_dir / "r").config.read_bytes()
    shorter = tiny_config("train.steps=2", ssl="none")
    with pytest.raises(AbawError, match="trained 4 steps already.*--steps 4 or more"):
        train(work, shorter, run_name="r", resume=True, progress=False)
    assert RunDir(work.runs_dir / "r").config.read_bytes() == config


def test_a_failed_start_leaves_no_run_folder_behind(tmp_path: Path, work: Workspace) -> None:
    bad = tmp_path / "not-weights.pt"
    bad.write_bytes(b"this is no checkpoint")
    with pytest.raises(AbawError):
        train(work, tiny_config(f"model.pretrained={bad}", ssl="none"), run_name="first",
              progress=False)
    assert not (work.runs_dir / "first").exists()
    summary = train(work, tiny_config("train.steps=2", ssl="none"), run_name="first",
                    progress=False)  # the same name works on the next try
    assert summary["completed"]


# --- files follow the umask; machine faults are one line -------------------------------------

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode


def test_disk_full_during_prepare_is_one_line_and_a_rerun_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_fake_release(tmp_path / "release")
    real_replace, calls = os.replace, []

    def replace_until_full(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(workspace_mod.os, "replace", replace_until_full)
    args = ("prepare", "--data-root", str(root), "--work", str(tmp_path / "work"), "--json")
    code, lines = cli(*args)
    assert code == 2 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and "rerun" in lines[0]
    assert not any(p.name.startswith(".") for p in (tmp_path / "work").rglob("*"))
    monkeypatch.setattr(workspace_mod.os, "replace", real_replace)
    assert cli(*args)[0] == 0


def test_a_library_error_on_a_full_disk_is_reported_as_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workspace_mod, "_disk_full", lambda folder: True)
    with pytest.raises(OSError, match="No space left") as caught, \
            workspace_mod.atomic_path(tmp_path / "ckpt.pt") as tmp:
        raise RuntimeError(f"PytorchStreamWriter failed writing file {tmp}")
    assert caught.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())


def test_an_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, lines = cli("prepare", "--data-root", str(build_fake_release(tmp_path / "r")),
                      "--work", str(tmp_path / "file" / "work"))
    assert code == 2 and len(lines) == 1 and str(tmp_path / "file") in lines[0]


def test_prepare_refuses_an_unknown_split_before_writing_anything(tmp_path: Path) -> None:
    code, lines = cli("prepare", "--split", "../x", "--work", str(tmp_path / "work"))
    assert code == 2 and len(lines) == 1 and "unknown split '../x'" in lines[0]
    assert not (tmp_path / "work").exists()
