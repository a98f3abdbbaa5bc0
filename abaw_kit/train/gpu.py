"""GPU-dependent choices as pure functions of what the hardware reports (compute capability,
environment), so CPU tests can check them against made-up GPUs: mixed precision, memory format
and determinism.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from abaw_kit.errors import AbawError

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
BF16_TENSOR_CORES = (8, 0)
"""Ampere and newer. Volta (7.0) and Turing (7.5) report bf16 support but emulate it, slowly."""
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the two values cuBLAS is deterministic with


def amp_dtype(choice: str, device_type: str,
              capability: tuple[int, int] | None) -> torch.dtype | None:
    """Autocast dtype of ``train.amp`` (None = float32).

    ``auto``: bf16 from compute capability 8.0 (fp32's range, so no loss scaling); fp16 with
    the GradScaler below it, where bf16 is emulated; float32 on CPU (autocast is CUDA-only
    here). An explicit ``bf16``/``fp16`` is honoured on any GPU.
    """
    if choice not in AMP_CHOICES:
        raise AbawError(f"train.amp '{choice}': expected one of {', '.join(AMP_CHOICES)}")
    if device_type != "cuda" or choice == "none":
        return None
    if choice == "auto":
        fast_bf16 = capability is not None and tuple(capability) >= BF16_TENSOR_CORES
        return torch.bfloat16 if fast_bf16 else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def autocast(amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """CUDA autocast to ``amp_dtype`` (``device_amp_dtype``'s choice), or nothing for float32."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for anything else."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def device_amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """``amp_dtype`` for a real device."""
    return amp_dtype(choice, device.type, device_capability(device))


def use_channels_last(wanted: bool, device: torch.device) -> bool:
    """``train.channels_last`` on a real device: honoured on CUDA only (CPU runs contiguous)."""
    return wanted and device.type == "cuda"


def model_memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format to move a model's weights to (``preserve_format`` = as they are)."""
    return torch.channels_last if channels_last else torch.preserve_format


def precision_note(choice: str, device_type: str,
                   capability: tuple[int, int] | None) -> str | None:
    """One log line on the precision a run uses, or a warning about a slow or ignored choice."""
    dtype = amp_dtype(choice, device_type, capability)
    if device_type != "cuda":
        if choice in ("bf16", "fp16"):
            return f"CPU: train.amp {choice} and channels-last are CUDA-only; running float32"
        return None
    where = f"compute capability {capability[0]}.{capability[1]}" if capability else "this GPU"
    if dtype is None:
        return f"precision: float32 on {where} (train.amp none)"
    if dtype == torch.bfloat16 and capability is not None and \
            tuple(capability) < BF16_TENSOR_CORES:
        return (f"train.amp bf16 on {where}: this GPU has no bf16 tensor cores and emulates "
                "it, far slower than fp16; train.amp auto picks fp16 here")
    name = "bf16" if dtype == torch.bfloat16 else "fp16 with loss scaling"
    return f"precision: {name} autocast on {where} (train.amp {choice})"


def determinism(deterministic: bool, device_type: str, env: Mapping[str, str]
                ) -> tuple[dict[str, str], str | None]:
    """(environment variables to set, one-line notice) for ``train.deterministic`` on a device.

    cuBLAS repeats bit for bit only with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``), read
    when its handle is made: set before the process's first matrix product. A value the user
    set is kept. The notice names what stays nondeterministic.
    """
    if not deterministic or device_type != "cuda":
        return {}, None
    updates: dict[str, str] = {}
    current = env.get("CUBLAS_WORKSPACE_CONFIG")
    if current is None:
        updates["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
        current = CUBLAS_DETERMINISTIC[0]
    cublas = (f"CUBLAS_WORKSPACE_CONFIG={current}" if current in CUBLAS_DETERMINISTIC else
              f"CUBLAS_WORKSPACE_CONFIG={current} is not one of "
              f"{' / '.join(CUBLAS_DETERMINISTIC)}, so matrix products are NOT deterministic")
    notice = (f"train.deterministic: {cublas}, cuDNN autotuning off, deterministic torch "
              "kernels (index_add_, scatter_add_, cumsum take slower ones); ops that have none "
              "(weighted bincount, histc, resize or adaptive-pool backward) only warn and stay "
              "nondeterministic; runs repeat on the same GPU model, driver and process count")
    return updates, notice
