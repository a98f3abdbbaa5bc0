"""The RetinaFace detector backends: released weights (file or download), batched inference, NMS.

Two released networks, each preprocessed as its weights were trained (checked on real faces in
tests/test_faces_real.py):

- ``retinaface-mobilenet`` (the default): biubug6's MobileNet-0.25 (MIT): BGR input, the means
  104/117/123 subtracted, no std scaling;
- ``retinaface``: ternaus' ResNet-50: RGB, ImageNet mean/std normalisation.

Both: the longest side resized to ``max_size`` (boxes scaled back), a score threshold of 0.7 and
NMS at IoU 0.4. Inputs are not padded to a square: the network is fully convolutional and the
prior boxes are generated for the resized frame's own size.

``build_retinaface`` (the registry's factory) reads ``--detector-weights`` or downloads the
released file; ``RetinaFaceDetector`` itself is given the weights and downloads nothing.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from abaw_kit.errors import AbawError
from abaw_kit.faces.base import Detections, check_images
from abaw_kit.faces.retinaface_net import (
    RetinaFaceNet,
    decode_boxes,
    decode_landmarks,
    prior_boxes,
)
from abaw_kit.train.distributed import resolve_device
from abaw_kit.weights_io import read_weights_file, unwrap_checkpoint

_WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel / Lightning checkpoints
_MAX_FLOAT_PIXELS = 4 * 1920 * 1080  # frames converted to float at once before the resize
DEFAULT_MAX_SIZE = 640


@dataclass(frozen=True)
class ReleasedWeights:
    """One released RetinaFace network: where its weights live and how its input was made."""

    detector: str  # the --detector name
    title: str
    backbone: str  # a key of retinaface_net.ARCHITECTURES
    url: str
    cache_name: str  # file name in torch.hub's cache
    sha256_prefix: str | None  # checked on download; part of cache_name, as torch.hub wants
    bgr: bool
    mean: tuple[float, float, float]  # per input channel, 0..255 scale, in the input's order
    std: tuple[float, float, float]


MOBILENET = ReleasedWeights(
    detector="retinaface-mobilenet", title="RetinaFace-MobileNet0.25",
    backbone="mobilenet0.25",
    url=("https://github.com/biubug6/Face-Detector-1MB-with-landmark/raw/master/weights/"
         "mobilenet0.25_Final.pth"),
    cache_name="retinaface_mobilenet0.25_biubug6-ed6fa7d4.pth", sha256_prefix="ed6fa7d4",
    bgr=True, mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0))
RESNET50 = ReleasedWeights(
    detector="retinaface", title="RetinaFace-ResNet50", backbone="resnet50",
    url=("https://github.com/ternaus/retinaface/releases/download/0.01/"
         "retinaface_resnet50_2020-07-20-f168fae3c.zip"),
    cache_name="retinaface_resnet50_2020-07-20-f168fae3c.zip", sha256_prefix=None,
    bgr=False, mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255))
RELEASES: dict[str, ReleasedWeights] = {r.backbone: r for r in (MOBILENET, RESNET50)}


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint dict and strip wrapper prefixes; AbawError if it holds no tensors."""
    obj = unwrap_checkpoint(obj, ("state_dict",))
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
    """Read a RetinaFace state dict from a file (torch, one-file .zip, safetensors); AbawError
    naming the file on any problem."""
    path = Path(weights)
    if not path.is_file():
        raise AbawError(f"RetinaFace weights file not found: {path}")
    try:
        obj = read_weights_file(path)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError) as exc:
        raise AbawError(f"cannot read RetinaFace weights {path}: {exc}".splitlines()[0]) from exc
    return _as_state_dict(obj, str(path))


def hub_cache_path(release: ReleasedWeights) -> Path:
    """Where torch.hub keeps the downloaded weights (for messages and docs)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / release.cache_name


def download_retinaface_weights(release: ReleasedWeights) -> dict[str, torch.Tensor]:
    """The released weights through torch.hub's cache (downloaded once and hash-checked, then
    read offline)."""
    try:
        obj = torch.hub.load_state_dict_from_url(
            release.url, map_location="cpu", progress=False, weights_only=True,
            file_name=release.cache_name, check_hash=release.sha256_prefix is not None)
    except OSError as exc:  # urllib's URLError/HTTPError and socket errors are OSErrors
        raise AbawError(
            f"could not download {release.title} weights from {release.url} ({exc}); pass "
            f"--detector-weights PATH (that file), or put it at {hub_cache_path(release)}, or "
            "use --detector cascade".splitlines()[0]) from exc
    except (RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError) as exc:
        if "invalid hash value" in str(exc):  # torch.hub removed the download
            raise AbawError(f"the file downloaded from {release.url} is not the released "
                            f"{release.title} (sha256 does not start with "
                            f"{release.sha256_prefix}); nothing was cached") from exc
        raise AbawError(f"cannot read the {release.title} weights cached in "
                        f"{hub_cache_path(release)} ({exc}); delete the file to download it "
                        "again".splitlines()[0]) from exc
    return _as_state_dict(obj, release.url)


def _expected_keys(backbone: str) -> set[str]:
    return {k for k in RetinaFaceNet(backbone).state_dict()
            if not k.endswith("num_batches_tracked")}


def load_into(net: RetinaFaceNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that explains a mismatch (naming the variant the weights fit, if any);
    BatchNorm step counters may be absent."""
    release = RELEASES[net.backbone]
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        given = {k for k in state if not k.endswith("num_batches_tracked")}
        for other in RELEASES.values():
            if other is not release and given == _expected_keys(other.backbone):
                raise AbawError(f"{source} holds {other.title} weights, not {release.title}: "
                                f"use --detector {other.detector}")
        first = (f"key {unexpected[0]!r} is not part of it" if unexpected
                 else f"key {missing[0]!r} is missing")
        raise AbawError(
            f"{source} does not hold {release.title} weights: {first} ({len(missing)} keys "
            f"missing, {len(unexpected)} unexpected); supported: "
            + ", ".join(f"{r.title} (--detector {r.detector})" for r in RELEASES.values()))
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise AbawError(f"{source}: {key} has shape {tuple(value.shape)}, {release.title} "
                            f"expects {tuple(expected[key].shape)}")
    net.load_state_dict(state, strict=False)


def release_for(backbone: str) -> ReleasedWeights:
    if backbone not in RELEASES:
        raise AbawError(f"unknown RetinaFace backbone {backbone!r}: choose one of "
                        f"{', '.join(RELEASES)}")
    return RELEASES[backbone]


def check_max_size(max_size: int) -> None:
    if max_size < 32:
        raise AbawError(f"the detection size must be >= 32 pixels, got {max_size}")


def build_retinaface(*, backbone: str, weights: str | Path | None = None, device: str = "cpu",
                     **params: Any) -> RetinaFaceDetector:
    """The registry's factory: ``weights`` (a file) or the released weights, downloaded once
    into torch.hub's cache; options are checked before anything is read or downloaded."""
    release = release_for(backbone)
    check_max_size(params.get("max_size", DEFAULT_MAX_SIZE))
    device = str(resolve_device(device))
    if weights is None:
        return RetinaFaceDetector(weights=download_retinaface_weights(release),
                                  source=release.url, device=device, backbone=backbone, **params)
    return RetinaFaceDetector(weights=weights, device=device, backbone=backbone, **params)


class RetinaFaceDetector:
    """Batched RetinaFace (``backbone`` "mobilenet0.25" or "resnet50") on ``device`` (resolved
    as the trainer does: "auto" is cuda when available); boxes and landmarks in input-image
    pixels.

    ``weights``: a file (``load_retinaface_weights``) or a state dict already read, named by
    ``source`` in messages; nothing is downloaded here (``build_retinaface`` does that).
    """

    def __init__(self, *, weights: str | Path | Mapping[str, torch.Tensor],
                 source: str | None = None, device: str = "cpu", backbone: str = "resnet50",
                 max_size: int = DEFAULT_MAX_SIZE, score_threshold: float = 0.7,
                 nms_threshold: float = 0.4, pre_nms_top_k: int = 5000,
                 max_faces: int = 50) -> None:
        self.release = release_for(backbone)
        check_max_size(max_size)
        self.name = self.release.detector
        self.device = resolve_device(device)
        self.max_size = max_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.max_faces = max_faces
        if isinstance(weights, Mapping):
            state, source = dict(weights), source or "the given state dict"
        else:
            state, source = load_retinaface_weights(weights), source or str(weights)
        self.net = RetinaFaceNet(backbone)
        load_into(self.net, state, source)
        # channels-last: 2.7x faster on a 2-core CPU for this depthwise network (13 vs 35 ms
        # per 640x360 frame, benchmarks/bench_prepare_video.py); the outputs are the same
        self.net.eval().to(self.device, memory_format=torch.channels_last)
        self._mean = torch.tensor(self.release.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.release.std, device=self.device).view(1, 3, 1, 1)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def _priors_for(self, height: int, width: int) -> torch.Tensor:
        """Priors per input size, a few kept: a video has one size, image folders have many."""
        key = (height, width)
        if key not in self._priors:
            if len(self._priors) >= 8:
                del self._priors[next(iter(self._priors))]
            self._priors[key] = prior_boxes(height, width, self.release.backbone).to(self.device)
        return self._priors[key]

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB [B,H,W,3] -> the network's input [B,3,h,w] with max(h,w) == max_size.

        Frames become float a few at a time, so a batch of 4K frames costs the memory of a few
        float frames plus the small resized batch.
        """
        height, width = images.shape[1:3]
        scale = self.max_size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        per_chunk = max(1, _MAX_FLOAT_PIXELS // (height * width))
        resized = []
        for start in range(0, len(images), per_chunk):
            frames = np.require(images[start:start + per_chunk], requirements=["C", "W"])
            chunk = torch.from_numpy(frames).to(self.device)
            if self.release.bgr:
                chunk = chunk.flip(-1)  # on uint8: a quarter of the bytes of the float batch
            # [B,H,W,3] viewed as [B,3,H,W] is channels-last already: the cast keeps the strides
            chunk = chunk.permute(0, 3, 1, 2).float()
            if size != (height, width):
                chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False,
                                      antialias=scale < 1)
            resized.append(chunk)
        batch = torch.cat(resized).contiguous(memory_format=torch.channels_last)
        return batch.sub_(self._mean).div_(self._std)

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
        batch = self._prepare(images)
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
