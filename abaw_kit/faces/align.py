"""5-point similarity alignment to the ArcFace 112x112 crop used by Aff-Wild2's cropped_aligned."""

from __future__ import annotations

import numpy as np
from skimage.transform import SimilarityTransform, warp

# Where the eyes, nose tip and mouth corners land in a 112x112 ArcFace crop (insightface's
# reference points; "left" is the image's left). Other sizes scale it by size / 112.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template(size: int = 112) -> np.ndarray:
    """The 5-point template for a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> SimilarityTransform:
    """Least-squares similarity mapping ``src`` points onto ``dst``; ValueError if degenerate."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("landmarks must be finite")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(transform)
    else:  # older scikit-image
        transform = SimilarityTransform()
        ok = transform.estimate(src, dst)
    if not ok or not np.all(np.isfinite(transform.params)):
        raise ValueError("landmarks are degenerate (a similarity transform cannot be estimated)")
    return transform


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face whose 5 landmarks are ``landmarks5`` (image pixels, x,y) to the template.

    Returns uint8 [size,size,3]; pixels outside the image are black, as in the ArcFace crops.
    Only the part of the image the crop covers is warped (the same pixels as warping the whole
    frame, which would first convert all of it to float64: 4x slower on a 640x360 frame).
    """
    # warp() wants the map from output pixels to input pixels: template -> image landmarks.
    output_to_input = estimate_similarity(template(size), landmarks5)
    corners = output_to_input(np.array([[0, 0], [size, 0], [0, size], [size, size]], float))
    height, width = image.shape[:2]
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - 2, 0, width))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - 2, 0, height))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 3, x0, width))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 3, y0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies outside the frame
        return np.zeros((size, size, 3), np.uint8)
    to_region = SimilarityTransform(translation=(-x0, -y0))
    warped = warp(image[y0:y1, x0:x1], output_to_input + to_region, output_shape=(size, size),
                  order=1, mode="constant", cval=0, preserve_range=True)
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)
