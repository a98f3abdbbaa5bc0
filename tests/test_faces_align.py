"""5-point alignment: a face warped by a known similarity comes back onto the ArcFace template."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import SimilarityTransform, warp

from abaw_kit.faces.align import ARCFACE_TEMPLATE_112, align_face, template

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
