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
from torch import nn

from abaw_kit.errors import AbawError


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto`` -> cuda when CUDA is visible, else cpu; ``cuda`` -> this rank's GPU (see
    ``cuda_index``); explicit names checked."""
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
        index = cuda_index(device.index, local_rank, torch.cuda.device_count(), world_size)
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise AbawError(f"--device '{name}': expected auto, cpu, cuda or cuda:N")
    return device


def cuda_index(requested: int | None, local_rank: int, device_count: int,
               world_size: int = 1) -> int:
    """The GPU index a process uses: ``local_rank % device_count`` unless one was named.

    The modulo makes both layouts work: all of a node's GPUs visible to every rank (rank k on
    GPU k), and a scheduler that shows each task only its own GPU (every rank on its cuda:0).
    Under torchrun a named ``cuda:N`` would put every rank on GPU N, so it is refused unless
    each rank sees a single GPU (then cuda:0 is that GPU); CUDA_VISIBLE_DEVICES picks GPUs.
    """
    if device_count < 1:
        raise AbawError("--device cuda: no CUDA device is visible; use --device cpu")
    if requested is None:
        return local_rank % device_count
    if requested >= device_count:
        raise AbawError(f"--device cuda:{requested}: only {device_count} CUDA device(s) are "
                        "visible")
    if world_size > 1 and device_count > 1:
        raise AbawError(f"--device cuda:{requested} under torchrun ({world_size} processes) "
                        f"would put every rank on GPU {requested}; use --device cuda (rank k "
                        f"takes GPU k % {device_count}) and CUDA_VISIBLE_DEVICES to pick GPUs")
    return requested


@dataclass
class DistContext:
    """Rank, world size and device of this process, plus the few collectives the loop needs."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False
    local_rank: int = 0

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

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers with rank 0's (in place)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in module.state_dict(keep_vars=False).values():
                dist.broadcast(tensor, src=0)

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
        return DistContext(rank, world, _rank_device(device, local, world), owns_group=False,
                           local_rank=local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, resolve_device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _rank_device(device, local, world)
    dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), chosen, owns_group=True,
                       local_rank=local)


def _rank_device(device: str, local_rank: int, world_size: int) -> torch.device:
    chosen = resolve_device(device, local_rank, world_size)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen
