"""5-point alignment: a face warped by a known similarity comes back onto the ArcFace template."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import SimilarityTransform, warp

from abaw_kit.faces.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    estimate_similarity,
    template,
)

DOT_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def canonical_face(size: int = 112) -> np.ndarray:
    """A grey image with one coloured dot (radius 3) on each template point."""
    image = np.full((size, size, 3), 60, np.uint8)
    rows, cols = np.mgrid[:size, :size]
    for (x, y), colour in zip(template(size), DOT_COLOURS, strict=True):
        image[(cols - x) ** 2 + (rows - y) ** 2 <= 9] = colour
    return image


def dot_centres(image: np.ndarray) -> np.ndarray:
    """Centre of mass (x, y) of each coloured dot, found by its exact colour (+-60)."""
    centres = []
    for colour in DOT_COLOURS:
        mask = np.all(np.abs(image.astype(int) - colour) < 60, axis=-1)
        row, col = ndimage.center_of_mass(mask)
        centres.append((col, row))
    return np.array(centres)


def test_template_values() -> None:
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
    np.testing.assert_allclose(ARCFACE_TEMPLATE_112[4], [70.7299, 92.2041])
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE_112 * 2)


@pytest.mark.parametrize(("scale", "degrees"), [(2.5, 20.0), (0.8, -35.0)])
def test_known_similarity_is_undone(scale: float, degrees: float) -> None:
    face = canonical_face()
    placed = SimilarityTransform(scale=scale, rotation=np.deg2rad(degrees),
                                 translation=(90.0, 40.0))
    # render the face into a 320x320 scene at that pose
    scene = warp(face, placed.inverse, output_shape=(320, 320), order=1, preserve_range=True,
                 cval=60).astype(np.uint8)
    landmarks_in_scene = placed(ARCFACE_TEMPLATE_112)
    aligned = align_face(scene, landmarks_in_scene)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    np.testing.assert_allclose(dot_centres(aligned), ARCFACE_TEMPLATE_112, atol=0.75)


def test_other_output_size_scales_the_template() -> None:
    face = canonical_face(224)
    aligned = align_face(face, template(224), size=224)
    np.testing.assert_allclose(dot_centres(aligned), template(224), atol=0.5)


def test_degenerate_landmarks_raise() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        align_face(canonical_face(), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        align_face(canonical_face(), np.full((5, 2), np.nan))


def test_warping_only_the_covered_region_gives_the_whole_frame_result() -> None:
    """Faces in the middle, cut by the frame's edges, tiny, huge, rotated, or off the frame."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    for _ in range(60):
        centre, side, angle = rng.uniform(-30, 190, 2), rng.uniform(3, 150), rng.uniform(-1, 1)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (ARCFACE_TEMPLATE_112 - 56) / 112 * side @ rotation.T + centre
        output_to_input = estimate_similarity(template(112), points)
        whole = warp(image, output_to_input, output_shape=(112, 112), order=1, mode="constant",
                     cval=0, preserve_range=True)
        expected = np.clip(np.rint(whole), 0, 255).astype(np.uint8)
        difference = np.abs(align_face(image, points).astype(int) - expected)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float rounding only
