"""Face detection (RetinaFace or an offline cascade), tracking of the annotated subject, and
5-point alignment to the 112x112 ArcFace crop used by Aff-Wild2's cropped_aligned faces."""

from abaw_kit.faces.align import ARCFACE_TEMPLATE_112, align_face
from abaw_kit.faces.detector import (
    Detections,
    FaceDetector,
    detector_names,
    make_detector,
    register_detector,
)
from abaw_kit.faces.extract import ExtractResult, SubjectFaces, extract_video_faces

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "Detections",
    "ExtractResult",
    "FaceDetector",
    "SubjectFaces",
    "align_face",
    "detector_names",
    "extract_video_faces",
    "make_detector",
    "register_detector",
]
