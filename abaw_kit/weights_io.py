"""The one reader of weights files, for ``--pretrained`` (train/model.py) and
``--detector-weights`` (faces/retinaface.py).

A ``.safetensors`` file, a torch file read with ``weights_only=True`` (unpickling runs no code),
or a ``.zip`` holding one torch file (as RetinaFace-ResNet50 is released, like torch.hub's legacy
zips; torch's own zip format holds several members and is read by ``torch.load``). Each caller
then applies its own rules (which wrapper keys, which key prefixes) and its own messages.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Keys under which training checkpoints keep their weights, preferred first."""


def read_weights_file(path: Path) -> Any:
    """What the file holds (usually a dict of tensors); raises what the readers raise."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) == 1:
                payload = io.BytesIO(archive.read(members[0]))
                return torch.load(payload, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_checkpoint(obj: Any, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> Any:
    """The mapping under the first of ``keys`` that ``obj`` holds one under, else ``obj``."""
    if isinstance(obj, Mapping):
        for key in keys:
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj
