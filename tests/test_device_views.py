"""``data.views: device``: the views made in the training step from the workers' faces and
drawn parameters match the PIL path (the same draws, within a stated tolerance per operation),
and a spec the device cannot run is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndimage
import torch
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP

from abaw_kit.config import resolve_config
from abaw_kit.errors import AbawError
from abaw_kit.train import device_views as dv
from abaw_kit.train.data import UnlabelledBatches, UnlabelledPool, Views

# The weak view: roi_align's area average against PIL's antialiased bilinear box resize.
WEAK_MEAN_TOL, WEAK_MAX_TOL = 0.5, 5
NO_ARGUMENT = ("AutoContrast", "Equalize", "Invert")
# (operation, arguments as timm's level functions give them, max mean |diff|, max p99 |diff|)
# in grey levels. Colour operations differ only in PIL's integer rounding; geometric ones
# resample bilinearly on both sides, but PIL treats the border pixels its own way.
CASES = [
    ("AutoContrast", [0.0], 0.05, 0.0), ("Equalize", [0.0], 0.05, 0.0),
    ("Invert", [0.0], 0.0, 0.0), ("Posterize", [1, 2, 4, 8], 0.0, 0.0),
    ("Solarize", [30, 128, 256], 0.0, 0.0), ("SolarizeAdd", [50, 110], 0.0, 0.0),
    ("Color", [0.1, 1.9], 0.6, 1.0), ("Contrast", [0.2, 1.8], 0.6, 1.0),
    ("Brightness", [0.3, 1.7], 0.6, 1.0), ("Sharpness", [0.1, 1.9], 0.6, 1.0),
    ("Desaturate", [0.6], 0.6, 1.0), ("TranslateX", [7.0], 0.0, 0.0),
    ("Rotate", [-27.0, 13.0], 0.8, 4.0), ("ShearX", [-0.3, 0.2], 0.8, 2.0),
    ("ShearY", [0.27], 0.8, 2.0), ("TranslateXRel", [0.4, -0.2], 0.8, 2.0),
    ("TranslateYRel", [-0.41], 0.8, 2.0),
]


def faces(count: int = 6, size: int = 112) -> np.ndarray:
    """Smooth random images with the contrast of a face crop (not flat, not pure noise)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = ndimage.gaussian_filter(rng.uniform(0, 255, (size, size, 3)), (3, 3, 0))
        out.append((image - image.min()) / np.ptp(image) * 200 + 20)
    return np.stack(out).astype(np.uint8)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def diff(ours: torch.Tensor, reference: np.ndarray) -> np.ndarray:
    return np.abs(ours.permute(0, 2, 3, 1).numpy() - reference.astype(np.float32))


@pytest.mark.parametrize(("name", "arguments", "mean_tol", "p99_tol"), CASES)
def test_each_operation_matches_timms_pil_operation(name: str, arguments: list[float],
                                                    mean_tol: float, p99_tol: float) -> None:
    images = faces()
    for argument in arguments:
        args = () if name in NO_ARGUMENT else (argument,)
        reference = np.stack([np.asarray(NAME_TO_OP[name](
            Image.fromarray(face), *args, fillcolor=(128, 128, 128),
            resample=Image.Resampling.BILINEAR)) for face in images])
        ours = dv.OPERATIONS[name](nchw(images), torch.full((len(images),), float(argument)))
        error = diff(ours.round().clamp(0, 255), reference)
        assert error.mean() <= mean_tol and np.percentile(error, 99) <= p99_tol, \
            (name, argument, error.mean(), np.percentile(error, 99))


@pytest.mark.parametrize("size", [64, 112, 160])
def test_weak_view_matches_pils_box_resize_and_flip(size: int) -> None:
    images = faces()
    views = Views(resolve_config(None, [f"data.input_size={size}", "data.crop_scale=[0.3,1]",
                                        "data.views=device"]).data)
    rng = np.random.default_rng(4)
    stacked, crops = views.faces_and_weak_params(list(images), np.random.default_rng(4))
    reference = np.stack([np.asarray(views.weak(face, rng)) for face in images])
    assert crops.flips.any() and not crops.flips.all()  # both kinds in the batch
    error = diff(dv.weak_views(stacked, crops, size), reference)
    assert error.mean() <= WEAK_MEAN_TOL and error.max() <= WEAK_MAX_TOL, (error.mean(),
                                                                           error.max())


class Faces:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


def test_unlabelled_batch_on_the_device_equals_the_worker_batch() -> None:
    """Same seed, same batch: the same images, crops, flips and RandAugment draws; the pixels
    differ only as the operations do (and where timm drew bicubic for a geometric op)."""
    images = faces(16)
    pool = UnlabelledPool({"faces": Faces(images)})
    on_worker = UnlabelledBatches(pool, Views(resolve_config(None, ["data.input_size=64"]).data),
                                  seed=5)
    on_device = UnlabelledBatches(pool, Views(resolve_config(
        None, ["data.input_size=64", "data.views=device"]).data), seed=5)
    item = (3, np.arange(16))
    weak, strong, used, broken = on_worker[item]
    stacked, crops, augment, used_d, broken_d = on_device[item]
    assert torch.equal(used, used_d) and torch.equal(broken, broken_d)
    assert stacked.shape == (16, 112, 112, 3) and stacked.dtype == torch.uint8
    assert (augment.ops >= 0).sum() >= 8  # about half of 2 x 16 layers are applied
    weak_d, strong_d = dv.unlabelled_views(stacked, crops, augment, torch.device("cpu"), 64)
    assert weak_d.shape == weak.shape and weak_d.dtype == torch.uint8
    weak_error = (weak_d.float() - weak.float()).abs()
    assert weak_error.mean() <= WEAK_MEAN_TOL and weak_error.max() <= WEAK_MAX_TOL
    # per image: a diverged draw would differ by tens of grey levels on every image
    strong_error = (strong_d.float() - strong.float()).abs().mean(dim=(1, 2, 3))
    assert strong_error.median() <= 1.0 and strong_error.max() <= 6.0, strong_error


def test_a_randaugment_spec_without_a_batched_version_is_refused() -> None:
    with pytest.raises(AbawError, match=r"data.randaugment 'rand-m9-n2-t3a': GaussianBlur "
                                        r"has no batched version"):
        Views(resolve_config(None, ["data.randaugment=rand-m9-n2-t3a",
                                    "data.views=device"]).data)
    Views(resolve_config(None, ["data.randaugment=rand-m9-n2-t3a"]).data)  # PIL path: fine
