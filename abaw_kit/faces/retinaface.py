"""The RetinaFace detector backend: weights (file or download), batched inference, NMS.

Preprocessing follows the released model's training: RGB, the longest side resized to
``max_size``, ImageNet mean/std normalisation; a score threshold of 0.7 and NMS at IoU 0.4 are
that package's defaults too. Inputs are not padded to a square: the network is fully
convolutional and the prior boxes are generated for the resized frame's own size.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from abaw_kit.errors import AbawError
from abaw_kit.faces.detector import Detections, check_images
from abaw_kit.faces.retinaface_net import (
    RetinaFaceNet,
    decode_boxes,
    decode_landmarks,
    prior_boxes,
)

WEIGHTS_URL = ("https://github.com/ternaus/retinaface/releases/download/0.01/"
               "retinaface_resnet50_2020-07-20-f168fae3c.zip")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel / Lightning checkpoints


def _read_state_dict_file(path: Path) -> Any:
    """torch (.pth/.pt, also torch's own zip format), a one-file .zip as released, safetensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) == 1:  # the release zips one torch file, like torch.hub's legacy zips
                payload = io.BytesIO(archive.read(members[0]))
                return torch.load(payload, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint dict and strip wrapper prefixes; AbawError if it holds no tensors."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(value, torch.Tensor) for value in obj.values()):
        raise AbawError(f"{source} is not a state dict of tensors (expected RetinaFace weights)")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        state[name] = value
    return state


def load_retinaface_weights(weights: str | Path) -> dict[str, torch.Tensor]:
    """Read a RetinaFace state dict from a file; AbawError naming the file on any problem."""
    path = Path(weights)
    if not path.is_file():
        raise AbawError(f"RetinaFace weights file not found: {path}")
    try:
        obj = _read_state_dict_file(path)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError) as exc:
        raise AbawError(f"cannot read RetinaFace weights {path}: {exc}".splitlines()[0]) from exc
    return _as_state_dict(obj, str(path))


def download_retinaface_weights(url: str = WEIGHTS_URL) -> dict[str, torch.Tensor]:
    """The released weights through torch.hub's cache (downloaded once, then read offline)."""
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                 weights_only=True)
    except OSError as exc:  # urllib's URLError/HTTPError and socket errors are OSErrors
        raise AbawError(f"could not download RetinaFace weights from {url} ({exc}); pass "
                        f"--detector-weights PATH (the .zip/.pth from {url}) or use "
                        "--detector cascade") from exc
    except (RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise AbawError(f"cannot read the RetinaFace weights cached in {cache} ({exc}); delete "
                        "the file to download it again".splitlines()[0]) from exc
    return _as_state_dict(obj, url)


def load_into(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that explains a mismatch; BatchNorm step counters may be absent."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise AbawError(
            f"{source} does not hold RetinaFace-ResNet50 weights: {len(missing)} keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise AbawError(f"{source}: {key} has shape {tuple(value.shape)}, RetinaFace-ResNet50 "
                            f"expects {tuple(expected[key].shape)}")
    net.load_state_dict(state, strict=False)


class RetinaFaceDetector:
    """Batched RetinaFace-ResNet50 on ``device`` ("auto": cuda when available); boxes and
    landmarks in input-image pixels."""

    name = "retinaface"

    def __init__(self, *, weights: str | Path | None = None, device: str = "cpu",
                 max_size: int = 640, score_threshold: float = 0.7, nms_threshold: float = 0.4,
                 pre_nms_top_k: int = 5000, max_faces: int = 50) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.max_size = max_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.max_faces = max_faces
        source = str(weights) if weights is not None else WEIGHTS_URL
        state = (load_retinaface_weights(weights) if weights is not None
                 else download_retinaface_weights())
        self.net = RetinaFaceNet()
        load_into(self.net, state, source)
        self.net.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def _priors_for(self, height: int, width: int) -> torch.Tensor:
        """Priors per input size, a few kept: a video has one size, image folders have many."""
        key = (height, width)
        if key not in self._priors:
            if len(self._priors) >= 8:
                del self._priors[next(iter(self._priors))]
            self._priors[key] = prior_boxes(height, width).to(self.device)
        return self._priors[key]

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B,H,W,3] -> normalised [B,3,h,w] with max(h,w) == max_size."""
        height, width = images.shape[1:3]
        scale = self.max_size / max(height, width)
        batch = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float()
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size != (height, width):
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False,
                                  antialias=scale < 1)
        return (batch - self._mean) / self._std

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, marks: torch.Tensor,
                image_hw: tuple[int, int]) -> Detections:
        keep = torch.nonzero(scores > self.score_threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True)[: self.pre_nms_top_k]]
        boxes, scores, marks = boxes[keep], scores[keep], marks[keep]
        keep = nms(boxes, scores, self.nms_threshold)[: self.max_faces]
        boxes, scores, marks = boxes[keep], scores[keep], marks[keep]
        height, width = image_hw
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Detections(boxes[valid].cpu().numpy(), scores[valid].cpu().numpy(),
                          marks[valid].cpu().numpy())

    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> list[Detections]:
        images = check_images(images)
        batch = self._prepare(np.ascontiguousarray(images))
        offsets, logits, mark_offsets = self.net(batch)
        priors = self._priors_for(*batch.shape[-2:])
        if priors.shape[0] != offsets.shape[1]:
            raise RuntimeError(f"{priors.shape[0]} priors for {offsets.shape[1]} predictions")
        # priors are relative to the resized frame, which is the whole original frame
        image_hw = (images.shape[1], images.shape[2])
        to_pixels = torch.tensor(image_hw[::-1], device=self.device, dtype=torch.float32)
        boxes = decode_boxes(offsets, priors) * to_pixels.repeat(2)
        marks = decode_landmarks(mark_offsets, priors) * to_pixels
        scores = logits.softmax(dim=-1)[..., 1]
        return [self._select(boxes[i], scores[i], marks[i], image_hw) for i in range(len(images))]


def hub_cache_path(url: str = WEIGHTS_URL) -> Path:
    """Where torch.hub keeps the downloaded weights (for messages and docs)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
