"""DDP on CPU: two gloo processes train together, share one threshold state, one writer."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train import make_workspace, read_metrics, tiny_config, use_fake_unlabeled

from abaw_kit.train.checkpoint import load_checkpoint
from abaw_kit.train.run import train
from abaw_kit.workspace import Workspace


def _rank_main(rank: int, root: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        use_fake_unlabeled()
        # no warm-up and a low floor: the thresholds move every step, fed by both ranks' batches
        cfg = tiny_config("ssl.params.warmup_steps=0", "ssl.params.min_threshold=0.0",
                          "train.steps=4", ssl="dtm")
        summary = train(Workspace(Path(root)), cfg, run_name="ddp", progress=False)
        Path(root, f"rank{rank}.json").write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_share_threshold_state_and_one_writer(tmp_path: Path) -> None:
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
    _, state = load_checkpoint(root / "runs" / "ddp" / "checkpoints")
    assert len(state["rng"]) == 2  # every rank's RNG, for an exact resume
