"""Single process or torchrun DDP behind one small object, so the loop never branches on it.

``torchrun --nproc_per_node N -m abaw_kit train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
process group uses nccl on CUDA and gloo on CPU. Only rank 0 writes files (``is_main``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from abaw_kit.errors import AbawError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:<local rank> when CUDA is visible, else cpu; explicit names checked."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AbawError(f"--device '{name}': expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AbawError(f"--device {name}: no CUDA device is visible; use --device cpu")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise AbawError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise AbawError(f"--device '{name}': expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class DistContext:
    """Rank, world size and device of this process, plus the few collectives the loop needs."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors of all ranks along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def all_true(self, flag: torch.Tensor) -> bool:
        """True when ``flag`` holds on every rank (one tiny all-reduce)."""
        value = flag.detach().to(self.device, torch.int32).reshape(1)
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Tear down the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (or one the caller already made), else single."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, _rank_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, resolve_device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _rank_device(device, local)
    dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), chosen, owns_group=True)


def _rank_device(device: str, local_rank: int) -> torch.device:
    chosen = resolve_device(device, local_rank)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank if device in ("auto", "cuda") else chosen.index)
        torch.cuda.set_device(chosen)
    return chosen
