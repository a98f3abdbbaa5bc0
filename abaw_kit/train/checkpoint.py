"""Checkpoints of a run: weights as safetensors, the rest of the training state as a torch file
that loads with ``weights_only=True``.

Inside ``checkpoints/`` of a run or of its temporal model (the folder and the names of
``last.json`` and ``best.safetensors``: abaw_kit.run_dir)::

    step-00001000.safetensors   model.* and ema.* weights (+ metadata: step, backbone, mean/std)
    step-00001000.state.pt      step, optimiser, scheduler, scaler, threshold, sampler, RNGs
    last.json                   {"step", "weights", "state"}: the newest complete pair
    best.safetensors            the weights with the best validation macro-F1 (metadata: val_f1)

Why a pointer file: the pair is written first (each file atomically), ``last.json`` last, and
only then are older pairs removed, so a kill at any moment leaves a complete, consistent
checkpoint to resume from.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from abaw_kit.errors import AbawError
from abaw_kit.run_dir import BEST, POINTER
from abaw_kit.workspace import atomic_path, atomic_write_json

FORMAT = "abaw-kit-checkpoint-1"
_STEP_FILE = re.compile(r"^step-(\d+)\.(safetensors|state\.pt)$")


def pack_weights(model: nn.Module, ema_model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.*`` (the trained weights) and ``ema.*`` (what is evaluated), as CPU tensors."""
    packed = {f"model.{k}": v for k, v in model.state_dict().items()}
    packed.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in packed.items()}


def split_weights(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                             dict[str, torch.Tensor]]:
    """(model state dict, EMA state dict) from ``pack_weights`` output."""
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
    return model, ema


def save_checkpoint(ckpt_dir: Path, step: int, weights: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write the pair for ``step``, then point ``last.json`` at it, then drop older pairs."""
    stem = f"step-{step:08d}"
    weights_path = ckpt_dir / f"{stem}.safetensors"
    _write_weights(weights_path, weights, {**meta, "step": step})
    with atomic_path(ckpt_dir / f"{stem}.state.pt", suffix=".pt") as tmp:
        torch.save({**state, "step": step}, tmp)
    atomic_write_json(ckpt_dir / POINTER, {"step": step, "weights": weights_path.name,
                                           "state": f"{stem}.state.pt"})
    for old in ckpt_dir.iterdir():
        match = _STEP_FILE.match(old.name)
        if match and int(match.group(1)) != step:
            old.unlink(missing_ok=True)
    return weights_path


def save_best(ckpt_dir: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    path = ckpt_dir / BEST
    _write_weights(path, weights, meta)
    return path


def _write_weights(path: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(weights, str(tmp), metadata=metadata)


def read_pointer(ckpt_dir: Path) -> dict[str, Any] | None:
    """The ``last.json`` record, None when the run has no checkpoint yet."""
    path = ckpt_dir / POINTER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record = {"step": int(record["step"]), "weights": str(record["weights"]),
                  "state": str(record["state"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AbawError(f"checkpoint pointer {path} is corrupt ({type(exc).__name__}); "
                        "delete the run folder to start over, or train a new run") from None
    for key in ("weights", "state"):
        if Path(record[key]).name != record[key]:
            raise AbawError(f"checkpoint pointer {path}: '{record[key]}' is not a file name "
                            "inside the checkpoint folder")
    return record


def weights_file(ckpt_dir: Path, which: str) -> Path:
    """``best`` or ``last`` weights of a run (clear error when missing)."""
    if which == "best":
        path = ckpt_dir / BEST
        if not path.is_file():
            raise AbawError(f"no best checkpoint in {ckpt_dir} (no validation has run yet); "
                            "use the last checkpoint instead")
        return path
    if which != "last":
        raise AbawError(f"checkpoint '{which}': expected best or last")
    record = read_pointer(ckpt_dir)
    if record is None:  # pointer lost: the newest complete pair, as load_checkpoint does
        pairs = _step_pairs(ckpt_dir)
        if not pairs:
            raise AbawError(f"no checkpoint in {ckpt_dir} yet; train longer than "
                            "train.ckpt_every steps or let the run finish")
        record = pairs[0]
    return ckpt_dir / record["weights"]


def usable_weights(ckpt_dir: Path, which: str = "best") -> tuple[Path, str]:
    """(path, ``best`` or ``last``): ``weights_file``, except that ``best`` falls back to the
    last weights when no validation has run, as loading a model for inference does."""
    if which == "best" and not (ckpt_dir / BEST).is_file():
        which = "last"
    return weights_file(ckpt_dir, which), which


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of a checkpoint's safetensors file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw_meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise AbawError(f"checkpoint {path} is corrupt or incomplete ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); delete it or train a new run") from None
    if raw_meta.get("format") != FORMAT:
        raise AbawError(f"{path} is not an abaw-kit checkpoint (format "
                        f"{raw_meta.get('format')!r}); use --pretrained to start from it")
    meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    return tensors, meta


def load_checkpoint(ckpt_dir: Path, required: tuple[str, ...] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(weights, training state) of the last checkpoint, None when the run has none at all.

    ``required``: the state keys an exact resume needs (default: the frame trainer's).

    Without ``last.json`` (deleted, or lost with a disk) the newest complete pair of step files
    is used: a resume must never restart a run from step 0 over its own checkpoints. Files
    that exist but do not load are an error, not a fresh start.
    """
    required = REQUIRED_STATE if required is None else required
    record = read_pointer(ckpt_dir)
    if record is not None:
        return _load_pair(ckpt_dir, record, required)
    pairs = _step_pairs(ckpt_dir)
    if not pairs:
        if (ckpt_dir / BEST).is_file():
            raise AbawError(f"{ckpt_dir} has {BEST} but no step checkpoint and no {POINTER}; "
                            "refusing to train this run again from step 0 over its results; "
                            "start a new run (another --run name)")
        return None
    problems = []
    for record in pairs:  # newest first; an older pair survives when a kill hit the cleanup
        try:
            return _load_pair(ckpt_dir, record, required)
        except AbawError as exc:
            problems.append(str(exc))
    raise AbawError(f"{ckpt_dir} has checkpoint files but no {POINTER} and no complete pair "
                    f"loads ({problems[0]}); refusing to restart the run from step 0; delete "
                    "the run folder to start over")


def last_step(ckpt_dir: Path) -> int | None:
    """The step a resume would continue from (pointer, else newest pair), read cheaply."""
    record = read_pointer(ckpt_dir)
    if record is None:
        pairs = _step_pairs(ckpt_dir)
        record = pairs[0] if pairs else None
    return None if record is None else int(record["step"])


def _step_pairs(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Pointer-like records of every step whose weights and state files both exist, newest
    first."""
    found: dict[int, set[str]] = {}
    if ckpt_dir.is_dir():
        for path in ckpt_dir.iterdir():
            match = _STEP_FILE.match(path.name)
            if match and path.is_file():
                found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return [{"step": step, "weights": f"step-{step:08d}.safetensors",
             "state": f"step-{step:08d}.state.pt"}
            for step in sorted(found, reverse=True) if found[step] == {"safetensors", "state.pt"}]


REQUIRED_STATE = ("step", "optimizer", "scheduler", "threshold", "sampler", "rng")


def _load_pair(ckpt_dir: Path, record: dict[str, Any], required: tuple[str, ...]
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = read_weights(ckpt_dir / record["weights"])
    state_path = ckpt_dir / record["state"]
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated/garbled files raise many error types
        raise AbawError(f"checkpoint {state_path} is corrupt or incomplete "
                        f"({type(exc).__name__}); delete the run folder to start over, or "
                        "train a new run") from None
    if not isinstance(state, dict) or state.get("step") != record["step"] or \
            meta.get("step") != record["step"]:
        raise AbawError(f"checkpoint files in {ckpt_dir} disagree on the step (pointer "
                        f"{record['step']}, weights {meta.get('step')}); the folder was edited")
    missing = [key for key in required if key not in state]
    if missing:
        raise AbawError(f"checkpoint {state_path} lacks {', '.join(missing)} (not written by "
                        "this version of abaw-kit, or edited); it cannot be resumed exactly; "
                        "start a new run")
    if not isinstance(state["rng"], list) or not state["rng"]:
        raise AbawError(f"checkpoint {state_path}: 'rng' holds no per-process generator states")
    return tensors, state


# ---------------------------------------------------------------------------------------------
# Random number generator states (plain types and tensors: weights_only-safe)


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch generator states, plus the CUDA one of this process's own
    ``device``: a rank resumed where fewer GPUs are visible has no other device to restore."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": [int(np_state["has_gauss"]), float(np_state["gauss"])],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None,
                local_rank: int = 0) -> None:
    """Undo ``capture_rng``; the CUDA state goes to ``device`` only (see ``own_cuda_state``)."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32),
                         state["numpy_pos"], has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda":
        cuda = own_cuda_state(state.get("cuda"), local_rank, device.index or 0)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def own_cuda_state(saved: Any, local_rank: int, device_index: int) -> torch.Tensor | None:
    """This process's CUDA generator state from a checkpoint's ``cuda`` entry.

    Current checkpoints hold one state (the saving process's device). Older ones hold a list
    of every visible device's state; their process used GPU ``local_rank``, so that entry is
    taken (else the one of this device, wrapped): restoring them all by index raised
    IndexError on a resume with fewer visible GPUs.
    """
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, list | tuple) and saved:
        if local_rank < len(saved):
            return saved[local_rank]
        return saved[device_index % len(saved)]
    return None
