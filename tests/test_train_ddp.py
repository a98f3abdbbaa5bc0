"""DDP on CPU: two gloo processes train together, share one threshold state, one writer, and
validate the same (saved) EMA weights."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train import make_workspace, read_metrics, tiny_config, use_fake_unlabeled

import abaw_kit.train.run as run_module
from abaw_kit.errors import AbawError
from abaw_kit.train.checkpoint import load_checkpoint, split_weights
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _record_validated_weights(validated: list[str]) -> None:
    """Note a digest of the weights every validation of this rank predicts with."""
    predict = run_module.predict_rows

    def recording(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        validated.append(state_digest(model.state_dict()))
        return predict(model, *args, **kwargs)

    run_module.predict_rows = recording


def _rank_main(rank: int, root: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        use_fake_unlabeled()
        validated: list[str] = []
        _record_validated_weights(validated)
        # no warm-up and a low floor: the thresholds move every step, fed by both ranks' batches
        cfg = tiny_config("ssl.params.warmup_steps=0", "ssl.params.min_threshold=0.0",
                          "train.steps=4", ssl="dtm")
        summary = train(Workspace(Path(root)), cfg, run_name="ddp", progress=False)
        Path(root, f"rank{rank}.json").write_text(json.dumps({**summary,
                                                              "validated": validated}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_share_threshold_state_validation_and_one_writer(
        tmp_path: Path) -> None:
    root = tmp_path / "work"
    make_workspace(root)
    mp.spawn(_rank_main, args=(str(root), _free_port()), nprocs=2, join=True)
    first, second = (json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["world_size"] == second["world_size"] == 2
    assert first["class_thresholds"] == second["class_thresholds"]
    assert len(set(first["class_thresholds"])) > 1  # the state really moved
    rows = read_metrics(root / "runs" / "ddp")
    assert [int(r["step"]) for r in rows] == [2, 3, 4]  # one writer: no duplicated rows
    assert (root / "runs" / "ddp" / "config.yaml").read_text().count("backbone:") == 1
    tensors, state = load_checkpoint(root / "runs" / "ddp" / "checkpoints")
    assert len(state["rng"]) == 2  # every rank's RNG, for an exact resume
    # each rank's BatchNorm statistics come from its own batches, yet both shards were
    # predicted with rank 0's EMA: the weights saved at the last step (validated at 3 and 4)
    assert len(first["validated"]) == len(second["validated"]) == 2
    assert first["validated"] == second["validated"]
    assert first["validated"][-1] == state_digest(split_weights(tensors)[1])
    for key in ("best_val_f1", "best_step", "last_val_f1"):  # the same decisions everywhere
        assert first[key] == second[key] is not None, key


def _resume_on_two(rank: int, root: str, port: int, reshard: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        use_fake_unlabeled()
        try:
            summary = train(Workspace(Path(root)), None, run_name="grow", resume=True,
                            progress=False, reshard=reshard)
            outcome = {"steps": summary["steps"], "world_size": summary["world_size"]}
        except AbawError as exc:
            outcome = {"error": str(exc)}
        Path(root, f"resume{int(reshard)}-rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_run_from_one_process_goes_on_with_two_only_with_reshard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "work"
    make_workspace(root)
    use_fake_unlabeled(monkeypatch)  # this process only: the spawned ranks patch their own
    train(Workspace(root), tiny_config(), run_name="grow", progress=False, stop_after=5)
    mp.spawn(_resume_on_two, args=(str(root), _free_port(), False), nprocs=2, join=True)
    refused = json.loads((root / "resume0-rank0.json").read_text())
    assert "trained on 1 process(es), this is 2; add --reshard" in refused["error"]
    mp.spawn(_resume_on_two, args=(str(root), _free_port(), True), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((root / f"resume1-rank{rank}.json").read_text()) == {
            "steps": 6, "world_size": 2}
    _, state = load_checkpoint(root / "runs" / "grow" / "checkpoints")
    assert state["sampler"]["segments"] == [[0, 1], [4, 2]]  # from step 4 on two processes
    assert len(state["rng"]) == 2  # the next resume on two is exact again
    log = (root / "runs" / "grow" / "train.log").read_text()
    assert "on 2 process(es) instead of 1 (--reshard, not exact)" in log
