"""GPU-server behaviour checked on CPU with made-up GPUs: precision, rank -> GPU mapping, CUDA
RNG of the own device only, determinism settings, durable atomic writes, chunked inference."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import build_store
from torch import nn

import abaw_kit.infer as infer
import abaw_kit.train.distributed as distributed
import abaw_kit.workspace as workspace
from abaw_kit.config import TrainConfig, resolve_config
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.train import checkpoint as ckpt
from abaw_kit.train.gpu import (
    amp_dtype,
    determinism,
    device_amp_dtype,
    model_memory_format,
    precision_note,
    use_channels_last,
)
from abaw_kit.train.model import Normalizer
from abaw_kit.train.run import _seed_everything

CUDA0 = torch.device("cuda", 0)  # a device object only: nothing runs on it

# -- train.amp: auto --------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "device", "capability", "expected"), [
    ("auto", "cuda", (9, 0), torch.bfloat16),  # H100
    ("auto", "cuda", (8, 0), torch.bfloat16),  # A100
    ("auto", "cuda", (8, 6), torch.bfloat16),  # RTX 30xx
    ("auto", "cuda", (7, 5), torch.float16),  # T4: reports bf16, emulates it
    ("auto", "cuda", (7, 0), torch.float16),  # V100
    ("auto", "cuda", None, torch.float16),
    ("auto", "cpu", None, None),
    ("bf16", "cuda", (7, 0), torch.bfloat16),  # an explicit choice is honoured
    ("fp16", "cuda", (9, 0), torch.float16),
    ("none", "cuda", (9, 0), None),
    ("bf16", "cpu", None, None),
])
def test_amp_resolves_per_compute_capability(choice: str, device: str,
                                             capability: tuple[int, int] | None,
                                             expected: torch.dtype | None) -> None:
    assert amp_dtype(choice, device, capability) == expected


def test_amp_auto_is_the_default_and_unknown_choices_are_refused() -> None:
    assert TrainConfig().train.amp == "auto"
    assert resolve_config(None, ["train.amp=fp16"]).train.amp == "fp16"
    with pytest.raises(AbawError, match="train.amp"):
        resolve_config(None, ["train.amp=tf32"])
    with pytest.raises(AbawError, match="expected one of auto"):
        amp_dtype("tf32", "cuda", (9, 0))


def test_device_amp_asks_the_device_for_its_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return (7, 5)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert device_amp_dtype("auto", CUDA0) == torch.float16
    assert asked == [CUDA0]
    assert device_amp_dtype("auto", torch.device("cpu")) is None and asked == [CUDA0]


def test_channels_last_is_a_cuda_only_choice() -> None:
    assert use_channels_last(True, CUDA0) and not use_channels_last(False, CUDA0)
    assert not use_channels_last(True, torch.device("cpu"))
    assert model_memory_format(True) == torch.channels_last
    assert model_memory_format(False) == torch.preserve_format


def test_precision_notes_name_the_choice_and_warn_about_emulated_bf16() -> None:
    assert precision_note("auto", "cpu", None) is None  # the default stays quiet on CPU
    assert "CUDA-only" in precision_note("bf16", "cpu", None)
    assert "bf16 autocast on compute capability 8.0" in precision_note("auto", "cuda", (8, 0))
    assert "fp16 with loss scaling" in precision_note("auto", "cuda", (7, 0))
    slow = precision_note("bf16", "cuda", (7, 5))
    assert "emulates" in slow and "auto picks fp16" in slow


# -- rank -> GPU ------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "local_rank", "count", "world", "expected"), [
    (None, 3, 8, 8, 3),  # every GPU of the node visible: rank k on GPU k
    (None, 3, 1, 4, 0),  # the scheduler shows each task its own GPU only
    (None, 5, 4, 8, 1),
    (None, 0, 2, 1, 0),
    (1, 0, 2, 1, 1),  # one process may name any GPU
    (0, 2, 1, 4, 0),  # under torchrun cuda:0 is fine when it is each rank's only GPU
])
def test_cuda_index_maps_local_rank_modulo_visible_gpus(requested: int | None, local_rank: int,
                                                        count: int, world: int,
                                                        expected: int) -> None:
    assert distributed.cuda_index(requested, local_rank, count, world) == expected


def test_an_explicit_gpu_under_torchrun_is_one_clear_line() -> None:
    with pytest.raises(AbawError) as err:
        distributed.cuda_index(0, 1, 8, 2)
    message = str(err.value)
    assert "\n" not in message and "every rank on GPU 0" in message and "--device cuda" in message
    with pytest.raises(AbawError, match="only 2 CUDA device"):
        distributed.cuda_index(2, 0, 2, 1)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> list[torch.device]:
    """CUDA 'visible' with ``count`` devices; returns the devices set_device was called with."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_rank_device_under_torchrun_uses_the_modulo(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = fake_gpus(monkeypatch, 1)
    assert distributed._rank_device("auto", 3, 4) == CUDA0
    assert distributed._rank_device("cuda:0", 3, 4) == CUDA0
    assert chosen == [CUDA0, CUDA0]
    fake_gpus(monkeypatch, 4)
    assert distributed._rank_device("cuda", 6, 8) == torch.device("cuda", 2)
    with pytest.raises(AbawError, match="every rank on GPU 0"):
        distributed._rank_device("cuda:0", 1, 8)
    assert distributed.resolve_device("cuda:3") == torch.device("cuda", 3)  # single process


# -- CUDA RNG of the own device ---------------------------------------------------------------


def test_capture_rng_saves_only_the_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def get_state(device: torch.device) -> torch.Tensor:
        asked.append(device)
        return torch.full((16,), 7, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", _must_not_be_called)
    state = ckpt.capture_rng(torch.device("cuda", 1))
    assert asked == [torch.device("cuda", 1)] and torch.equal(state["cuda"], get_state(CUDA0))
    assert "cuda" not in ckpt.capture_rng(torch.device("cpu"))


def _must_not_be_called(*args: object) -> None:
    raise AssertionError("every device's RNG state is touched")


def test_restore_rng_sets_the_own_device_from_new_and_old_checkpoints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    restored: list[tuple[int, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", _must_not_be_called)
    base = ckpt.capture_rng(torch.device("cpu"))
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    ckpt.restore_rng({**base, "cuda": states[2]}, CUDA0, local_rank=5)  # current format
    # an old checkpoint (all 4 devices' states) resumed where each task sees one GPU
    ckpt.restore_rng({**base, "cuda": states}, CUDA0, local_rank=3)
    ckpt.restore_rng({**base, "cuda": states[:2]}, CUDA0, local_rank=3)  # fewer than ranks
    ckpt.restore_rng(base, CUDA0, local_rank=0)  # saved on CPU: nothing to restore
    ckpt.restore_rng({**base, "cuda": states}, torch.device("cpu"))  # resumed on CPU
    assert restored == [(2, CUDA0), (3, CUDA0), (0, CUDA0)]


def test_own_cuda_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    state = {"rng": [{"cuda": torch.arange(8, dtype=torch.uint8)}]}
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert torch.equal(ckpt.own_cuda_state(loaded["rng"][0]["cuda"], 0, 0), torch.arange(8))
    assert ckpt.own_cuda_state(None, 0, 0) is None and ckpt.own_cuda_state([], 0, 0) is None


# -- train.deterministic ----------------------------------------------------------------------


def test_determinism_sets_cublas_workspace_only_when_unset() -> None:
    env, notice = determinism(True, "cuda", {})
    assert env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert notice is not None and "\n" not in notice and "bincount" in notice
    assert determinism(True, "cuda", {"CUBLAS_WORKSPACE_CONFIG": ":16:8"})[0] == {}
    env, notice = determinism(True, "cuda", {"CUBLAS_WORKSPACE_CONFIG": ":1:1"})
    assert env == {} and "NOT deterministic" in notice
    assert determinism(False, "cuda", {}) == ({}, None)
    assert determinism(True, "cpu", {}) == ({}, None)


@pytest.fixture
def torch_flags():
    """Put the global determinism and cuDNN switches back after a test changed them."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


def test_seed_everything_makes_a_cuda_run_deterministic(monkeypatch: pytest.MonkeyPatch,
                                                        torch_flags: None) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so the undo removes what is set below
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    notice = _seed_everything(0, True, CUDA0)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and "cuDNN" in notice
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert _seed_everything(0, False, CUDA0) is None
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic


# -- durable atomic writes --------------------------------------------------------------------


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, fail_dirs: int | None = None) -> list[str]:
    events: list[str] = []
    real_replace = os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        if kind == "file":
            assert os.fstat(fd).st_size > 0  # the data is written before the fsync
        events.append(kind)
        if kind == "dir" and fail_dirs is not None:
            raise OSError(fail_dirs, os.strerror(fail_dirs))

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(os.name != "posix", reason="folder fsync is POSIX only")
def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_fsyncs(monkeypatch)
    workspace.atomic_write_text(tmp_path / "a.json", "{}")
    assert events == ["file", "replace", "dir"]
    assert (tmp_path / "a.json").read_text() == "{}"
    events.clear()
    with pytest.raises(RuntimeError), workspace.atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert events == [] and not (tmp_path / "b.bin").exists()


def test_a_folder_that_cannot_be_fsynced_does_not_fail_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record_fsyncs(monkeypatch, fail_dirs=errno.EINVAL)
    workspace.atomic_write_bytes(tmp_path / "c.bin", b"data")
    assert (tmp_path / "c.bin").read_bytes() == b"data"


# -- inference --------------------------------------------------------------------------------


def test_default_inference_batch_is_larger_on_gpu() -> None:
    cpu = torch.device("cpu")
    assert infer.default_batch_size(cpu) == infer.default_batch_size(cpu, 224) == 256
    assert infer.default_batch_size(CUDA0) == 1024
    assert infer.default_batch_size(CUDA0, 224) == 256
    assert infer.default_batch_size(CUDA0, 1024) == 128


def test_predict_rows_copies_to_the_host_once_per_chunk(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    build_store(tmp_path / "faces" / "val", {"v": 30}, seed=3)
    store = FaceStore(tmp_path / "faces" / "val")
    rows = store.rows(labelled=None, with_face=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8))
    normalize = Normalizer([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"))
    expected = infer.predict_rows(model, normalize, store, rows, batch_size=len(rows),
                                  num_workers=0)
    copies: list[int] = []
    real_copy = infer._copy_out

    def copy_out(out: np.ndarray, start: int, pending: list[torch.Tensor]) -> int:
        copies.append(sum(len(p) for p in pending))
        return real_copy(out, start, pending)

    monkeypatch.setattr(infer, "_copy_out", copy_out)
    monkeypatch.setattr(infer, "OUTPUT_CHUNK_ROWS", 8)
    probs = infer.predict_rows(model, normalize, store, rows, batch_size=3, num_workers=0)
    # batches of 3 are copied when 8 or more wait: 9 rows per copy, the rest at the end
    assert sum(copies) == len(rows) and len(copies) == -(-len(rows) // 9) > 2
    assert set(copies[:-1]) == {9} and 0 < copies[-1] <= 9
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert model.training  # the caller's mode is restored
