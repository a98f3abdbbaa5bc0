"""The detector registry/factory and the offline cascade backend on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from abaw_kit.errors import AbawError
from abaw_kit.faces import Detections, FaceDetector, align_face, make_detector
from abaw_kit.faces import detector as detector_module
from abaw_kit.faces.cascade import RELATIVE_LANDMARKS, landmarks_from_boxes, suppress_nested
from abaw_kit.faces.detector import box_iou, detector_names, register_detector

# The astronaut's face in skimage.data.astronaut() (512x512), measured by eye: eyes at about
# (209, 97) and (252, 96), mouth centre at about (232, 141).
ASTRONAUT_EYES = np.array([[209.0, 97.0], [252.0, 96.0]])
ASTRONAUT_MOUTH = np.array([232.0, 141.0])


@pytest.fixture(scope="module")
def cascade() -> FaceDetector:
    return make_detector("cascade")


def test_unknown_name_lists_names_and_closest_match() -> None:
    with pytest.raises(AbawError, match=r"unknown face detector 'retinafce'.*cascade.*"
                                        r"did you mean 'retinaface'"):
        make_detector("retinafce")
    assert {"cascade", "retinaface"} <= set(detector_names())


def test_cascade_refuses_weights() -> None:
    with pytest.raises(AbawError, match="cascade detector has no weights"):
        make_detector("cascade", weights="x.pth")


def test_registered_factory_gets_params_without_nones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detector_module, "_REGISTRY", dict(detector_module._REGISTRY))
    seen: dict = {}

    class Fixed:
        name = "fixed"

        def detect(self, images: np.ndarray) -> list[Detections]:
            return [Detections.empty() for _ in images]

    def factory(**kwargs: object) -> Fixed:
        seen.update(kwargs)
        return Fixed()

    register_detector("test-fixed", factory)
    detector = make_detector("test-fixed", device="cuda:1", max_size=None, threshold=0.5)
    assert isinstance(detector, FaceDetector)
    assert seen == {"weights": None, "device": "cuda:1", "threshold": 0.5}
    with pytest.warns(UserWarning, match="registered twice"):
        register_detector("test-fixed", factory)


def test_detections_validate_shapes() -> None:
    found = Detections(np.zeros((2, 4)), np.ones(2), np.zeros((2, 10)))
    assert len(found) == 2 and found.landmarks.shape == (2, 5, 2)
    assert found.boxes.dtype == np.float32
    with pytest.raises(ValueError, match="same faces"):
        Detections(np.zeros((2, 4)), np.ones(3), np.zeros((2, 5, 2)))


def test_box_iou() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10],
                                                      [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]])


def test_cascade_finds_the_astronaut_with_plausible_landmarks(cascade: FaceDetector) -> None:
    image = data.astronaut()
    found = cascade.detect(image[None])[0]
    assert len(found) == 1  # the cascade's duplicate boxes are suppressed
    x1, y1, x2, y2 = found.boxes[0]
    assert x1 < ASTRONAUT_EYES[0, 0] and x2 > ASTRONAUT_EYES[1, 0]
    assert y1 < ASTRONAUT_EYES[:, 1].min() and y2 > ASTRONAUT_MOUTH[1]
    marks = found.landmarks[0]
    width = x2 - x1
    assert np.all(np.linalg.norm(marks[:2] - ASTRONAUT_EYES, axis=1) < 0.12 * width)
    mouth = marks[3:].mean(axis=0)
    assert np.linalg.norm(mouth - ASTRONAUT_MOUTH) < 0.12 * width
    crop = align_face(image, marks)
    assert crop.shape == (112, 112, 3)


def test_cascade_batch_sizes_and_no_face(cascade: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    frame = np.zeros((360, 640, 3), np.uint8)  # a 640x360 frame with a half-size astronaut
    frame[50:306, 200:456] = data.astronaut()[::2, ::2]
    noise = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    flat = np.full((360, 640, 3), 128, np.uint8)
    results = cascade.detect(np.stack([frame, noise, flat]))
    assert [type(r) for r in results] == [Detections] * 3
    assert len(results[0]) == 1 and len(results[2]) == 0
    x1, y1, x2, y2 = results[0].boxes[0]
    assert 200 + 105 < (x1 + x2) / 2 < 200 + 125 and 50 + 45 < (y1 + y2) / 2 < 50 + 65
    assert len(cascade.detect(frame)) == 1  # one [H,W,3] image is a batch of one


def test_cascade_landmark_geometry() -> None:
    # eyes level, left of right, mouth below eyes, all inside the box
    assert RELATIVE_LANDMARKS[0, 0] < RELATIVE_LANDMARKS[1, 0]
    assert RELATIVE_LANDMARKS[3, 1] > RELATIVE_LANDMARKS[0, 1]
    assert np.all((RELATIVE_LANDMARKS > 0) & (RELATIVE_LANDMARKS < 1))
    marks = landmarks_from_boxes(np.array([[100, 50, 200, 150]]))
    np.testing.assert_allclose(marks[0], 100 + RELATIVE_LANDMARKS * 100 - [0, 50], atol=1e-4)


def test_suppress_nested_keeps_largest() -> None:
    boxes = np.array([[10, 10, 50, 50], [0, 0, 100, 100], [200, 0, 240, 40]], np.float32)
    kept = suppress_nested(boxes)
    np.testing.assert_array_equal(kept, [[0, 0, 100, 100], [200, 0, 240, 40]])
