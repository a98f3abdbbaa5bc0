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
